"""Shared defaults of every config: `glore_jax/defaults.py` (inside the package, so configs
work from any directory and from an installed copy). Run every stage with the defaults:

  python -m glore_jax.main --config=configs/base.py --workdir=DIR
"""

from glore_jax.defaults import get_config  # noqa: F401
