"""Stage `policy`: SFT of the student (synthetic task from scratch by default; set
model.checkpoint and data.source=gsm8k for Llama-2 on GSM8K)."""

from glore_jax.defaults import get_config as base


def get_config():
  c = base()
  c.stages = "policy"
  return c
