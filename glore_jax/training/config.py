"""`TrainConfig`, the trainer's settings, and which of them a resumed run may change."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from glore_jax.errors import StaleOutputError


@dataclasses.dataclass
class TrainConfig:
  loss: Literal["lm", "value"] = "lm"
  value_targets: Literal["hard", "soft"] = "hard"  # what make_batches puts in value_target
  train_backbone: bool = True  # value loss only: False trains the value head alone
  learning_rate: float = 1e-4
  min_learning_rate_ratio: float = 0.1  # cosine decays to learning_rate * this
  warmup_steps: int = 0
  total_steps: int = 1000
  weight_decay: float = 0.0
  adam_b1: float = 0.9
  adam_b2: float = 0.95
  adam_eps: float = 1e-8
  grad_clip: float | None = 1.0  # global norm; None or 0 disables
  grad_accum: int = 1  # micro-batches per step; a batch's rows must divide by it
  compute_dtype: str | None = None  # e.g. 'bfloat16' over fp32 params; None keeps the model's
  remat: bool | None = None  # None keeps the model's setting
  eval_every: int = 0  # steps; 0 evaluates only at the end (when eval_batches are given)
  checkpoint_every: int = 0  # steps; 0 checkpoints only at the end
  keep_last: int = 3
  best_metric: str | None = None  # default 'eval/lm_loss' or 'eval/value_loss' (lower is better)
  log_every: int = 10
  seed: int = 0
  shuffle: bool = True  # new batch order every epoch when the batches are a sequence
  export_hf: bool = False  # write <workdir>/hf with save_hf when training completes
  progress: bool = True
  async_checkpoint: bool = True

  def __post_init__(self):
    if self.loss not in ("lm", "value"):
      raise ValueError(f"TrainConfig.loss={self.loss!r}; choose 'lm' or 'value'")
    if self.value_targets not in ("hard", "soft"):
      raise ValueError(f"TrainConfig.value_targets={self.value_targets!r}; choose 'hard' or 'soft'")
    if self.total_steps < 1 or self.grad_accum < 1:
      raise ValueError("TrainConfig.total_steps and grad_accum must be >= 1")
    # a negative clip norm would scale the update by a negative factor: gradient ascent
    if self.grad_clip is not None and not self.grad_clip >= 0:
      raise ValueError(f"TrainConfig.grad_clip={self.grad_clip}: expected >= 0 (0 or None: off)")
    if not self.weight_decay >= 0 or not self.learning_rate > 0:
      raise ValueError(
        f"TrainConfig: weight_decay={self.weight_decay} must be >= 0 and "
        f"learning_rate={self.learning_rate} > 0"
      )

  @property
  def metric_name(self) -> str:
    """The eval metric that picks the best checkpoint (lower is better)."""
    return self.best_metric or ("eval/lm_loss" if self.loss == "lm" else "eval/value_loss")


# Fields that may change between a run and its resumption without changing the result.
RESUME_FREE = frozenset(
  {
    "eval_every",
    "checkpoint_every",
    "keep_last",
    "log_every",
    "export_hf",
    "progress",
    "async_checkpoint",
    "best_metric",
  }
)


def check_resume_config(saved: Mapping, config: TrainConfig, where: str) -> None:
  """Refuses to resume a checkpoint written under a config that differs in a field that changes
  the result (anything outside `RESUME_FREE`).

  Args:
    saved: the `config` dict stored in the checkpoint's metadata.
    config: the config of the run that resumes.
    where: the checkpoint's path, for the message.

  Raises:
    StaleOutputError: naming each changed field, old -> new.
  """
  current = dataclasses.asdict(config)
  changed = {
    k: (saved[k], v)
    for k, v in current.items()
    if k in saved and k not in RESUME_FREE and saved[k] != v
  }
  if changed:
    # refused, not warned: a model half-trained under one config and finished under another
    # matches neither
    raise StaleOutputError(
      f"cannot resume {where} with a different training config ("
      + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
      + "); restore the old values, or delete the checkpoints to start over"
    )
