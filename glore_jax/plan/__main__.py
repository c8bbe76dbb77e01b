"""`python -m glore_jax.plan`: see `glore_jax.plan.cli`."""

import sys

from glore_jax.plan.cli import main

sys.exit(main())
