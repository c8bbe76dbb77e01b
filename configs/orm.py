"""ORM: the value head trained on sample outcomes at every step."""

from glore_jax.defaults import get_config as base


def get_config():
  c = base()
  c.stages = "train_orm"
  return c
