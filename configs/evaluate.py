"""Evaluation: greedy drafts, SORM "where", global + local refinements, ORM reranking; the
answer table and the step-level ORM vs SORM table."""

from glore_jax.defaults import get_config as base


def get_config():
  c = base()
  c.stages = "evaluate"
  return c
