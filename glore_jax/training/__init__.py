"""One trainer for SFT (policy, global and local refiners) and value-head (ORM, SORM) training.

Batches are plain numpy dicts (format in `batch.py`); `train` runs the jitted, sharded, resumable
loop (`trainer.py`), built from `config.py` (TrainConfig), `steps.py` (the jitted step and the
train state), `feed.py` (batches to devices), `evaluate.py`, `hooks.py` (every-N-steps log, eval,
checkpoint), `throughput.py`, `checkpoint.py` and `run_log.py`; `losses.py` holds the loss
functions and eval metrics.
"""

from glore_jax.training.batch import (
  SFTExample,
  ValueExample,
  bucket_length,
  collate_lm,
  collate_value,
  make_batches,
  padding_fraction,
)
from glore_jax.training.losses import auroc, lm_loss, value_loss
from glore_jax.training.trainer import (
  TrainConfig,
  TrainingDivergedError,
  TrainState,
  evaluate,
  make_optimizer,
  train,
)

__all__ = [
  "SFTExample",
  "TrainConfig",
  "TrainState",
  "TrainingDivergedError",
  "ValueExample",
  "auroc",
  "bucket_length",
  "collate_lm",
  "collate_value",
  "evaluate",
  "lm_loss",
  "make_batches",
  "make_optimizer",
  "padding_fraction",
  "train",
  "value_loss",
]
