"""Optional experiment trackers fed by the trainer's metrics hook. Weights & Biases:
`pip install "glore-jax[wandb]"`, then `--config.tracking.wandb=True` (project, entity and group
under config.tracking). One W&B run per process of the pipeline; each training stage logs its
metrics under its own prefix (`policy/train/loss`) against its own step axis."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  import ml_collections

Hook = Callable[[int, Mapping[str, float]], None]
_RUN: dict[str, Any] = {}  # the process's W&B module and run, started on first use


class TrackingError(RuntimeError):
  """A tracker is asked for but cannot run."""


def _settings(config):
  return getattr(config, "tracking", None)


def _wandb_installed() -> bool:
  return importlib.util.find_spec("wandb") is not None


def check(config: ml_collections.ConfigDict) -> None:
  """Fails before any compute when a configured tracker is not installed.

  Args:
    config: the run's config (its `tracking` section may be absent).
  """
  t = _settings(config)
  if t is not None and t.wandb and not _wandb_installed():
    raise TrackingError(
      'config.tracking.wandb=True needs Weights & Biases: pip install "glore-jax[wandb]"'
    )


def metrics_hook(config: ml_collections.ConfigDict, stage: str) -> Hook | None:
  """The trainer's `metrics_hook` for `stage`, or None when no tracker is configured.

  Args:
    config: the run's config.
    stage: the stage name, used as the metrics' prefix (policy, orm, sorm, refiner_global, ...).
  """
  t = _settings(config)
  if t is None or not t.wandb:
    return None
  check(config)
  if "wandb" not in _RUN:
    import wandb

    _RUN["wandb"] = wandb
    _RUN["run"] = wandb.init(
      project=t.wandb_project,
      entity=t.wandb_entity or None,
      group=t.wandb_group or None,
      config=config.to_dict(),
    )
  wandb, run = _RUN["wandb"], _RUN["run"]
  run.define_metric(f"{stage}/step")
  run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")

  def hook(step: int, values: Mapping[str, float]) -> None:
    record = {f"{stage}/{k}": v for k, v in values.items() if isinstance(v, (int, float))}
    run.log({f"{stage}/step": step, **record})

  del wandb
  return hook
