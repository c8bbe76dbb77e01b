"""The embedded default: every stage, in order, on the synthetic task with a tiny Llama trained
from scratch on this CPU (about 10 minutes on 2 cores).

  python -m glore_jax.main --config=configs/demo.py --workdir=/tmp/glore-demo
"""

from glore_jax.defaults import get_config as base


def get_config():
  c = base()
  return c
