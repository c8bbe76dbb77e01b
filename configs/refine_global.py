"""The global refiner: (question, draft) -> a new solution; pairs built from the rollouts."""

from glore_jax.defaults import get_config as base


def get_config():
  c = base()
  c.stages = "refine_data,train_global"
  return c
