"""Evaluation: greedy drafts, SORM "where", global + local refinements, ORM reranking; the
answer table and the step-level ORM vs SORM table.

On given checkpoints (HF folders, local or gs://), instead of the work directory's own:

  python -m glore_jax.main --config=configs/evaluate.py --workdir=DIR \\
      --config.inputs.orm=ORM --config.inputs.sorm=SORM \\
      --config.inputs.refiner_global=GLOBAL --config.inputs.refiner_local=LOCAL \\
      [--config.inputs.policy=POLICY]
"""

from glore_jax.defaults import get_config as base


def get_config():
  c = base()
  c.stages = "evaluate"
  return c
