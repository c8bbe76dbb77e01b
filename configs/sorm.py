"""SORM: K rollouts from every step prefix of every sample (labels), then SORM training.

python -m glore_jax.main --config=configs/sorm.py --workdir=DIR --config.sorm.num_rollouts=8
"""

from glore_jax.defaults import get_config as base


def get_config():
  c = base()
  c.stages = "label,train_sorm"
  return c
