"""The local refiner: (question, draft with [BAD] before the first wrong step) -> the rest."""

from glore_jax.defaults import get_config as base


def get_config():
  c = base()
  c.stages = "refine_data,train_local"
  return c
