"""Stage `sample`: N policy samples per training question, graded (ORM data)."""

from glore_jax.defaults import get_config as base


def get_config():
  c = base()
  c.stages = "sample"
  return c
