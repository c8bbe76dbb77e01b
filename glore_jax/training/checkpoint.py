"""Orbax checkpoints of the train state: keep the last N and the best by an eval metric.

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. Orbax writes each step into a temporary
folder and renames it only when complete, so an interrupted save leaves no broken "latest":
`latest_step()` only sees finalised steps, and leftovers are cleaned up on the next start.
The directory may be local or on an object store (`gs://bucket/run/checkpoints`: etils.epath,
which orbax reads and writes natively).
`state` is the pytree (trainable params, optimizer state, step, RNG key); `meta` is JSON with
the data position, the config and the metrics at that step.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from glore_jax import integrity
from glore_jax.errors import CorruptOutputError

log = logging.getLogger(__name__)


def is_local_path(path: epath.PathLike) -> bool:
  """False for gs://, s3:// and other URIs that only etils.epath (and orbax) can open."""
  return "://" not in os.fspath(path)


class Checkpoints:
  """A training run's checkpoints (orbax): the state tree plus a JSON meta dict per step, the
  last `keep_last` kept plus the `keep_best` best by an eval metric.

  Args:
    directory: the checkpoints folder, local or an object store (gs://).
    keep_last: how many of the newest checkpoints to keep.
    best_metric: the metric (a key of `save`'s `metrics`) that ranks checkpoints; None keeps
      only the newest.
    best_mode: 'min' (lower is better) or 'max'.
    keep_best: how many of the best to keep.
    async_save: write in the background (`wait` blocks until written).
  """

  def __init__(
    self,
    directory: epath.PathLike,
    *,
    keep_last: int = 3,
    best_metric: str | None = None,
    best_mode: str = "min",
    keep_best: int = 1,
    async_save: bool = True,
  ):
    directory = epath.Path(directory)
    # orbax wants an absolute local path; a gs:// path is absolute already (and must stay a URI)
    self.directory = directory.absolute() if is_local_path(directory) else directory
    self.best_metric = best_metric
    keep = [policies.LatestN(n=max(keep_last, 1))]
    if best_metric:
      sign = -1.0 if best_mode == "min" else 1.0
      keep.append(
        policies.BestN(
          get_metric_fn=lambda m: sign * float(m[best_metric]),
          n=keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy(keep),
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=True,
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "meta")
    )

  def latest_step(self) -> int | None:
    """The newest checkpoint's step, or None."""
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The best checkpoint's step by `best_metric`, or None (no metric, or none measured)."""
    return self.manager.best_step() if self.best_metric else None

  def path(self, step: int | None) -> str:
    """The folder of `step`'s checkpoint, or a phrase saying there is none (for messages)."""
    return "none (no checkpoint written yet)" if step is None else str(self.directory / str(step))

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
    """Writes `state` and `meta` (with the state's checksums added) as checkpoint `step`.

    Args:
      step: the checkpoint's step.
      state: a pytree of arrays.
      meta: JSON-serialisable metadata (data position, config, eval).
      metrics: the eval metrics that rank it by `best_metric` (None: not ranked).
    """
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      metrics = None
    # orbax checksums only its shard index, not the array data: verified in `restore`
    meta = {**meta, "checksums": integrity.tree_checksums(state)}
    self.manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      metrics=metrics,
    )

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores `step` into the shapes, dtypes and shardings of `abstract_state`; a damaged
    checkpoint (unreadable, a checksum that differs, NaN/Inf) raises CorruptOutputError.

    Args:
      step: the checkpoint to restore.
      abstract_state: a pytree of arrays or ShapeDtypeStructs like the saved state.

    Returns:
      The restored state and its meta dict.
    """
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      abstract_state,
    )
    where = self.path(step)
    try:
      out = self.manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise CorruptOutputError(
        f"checkpoint {where} cannot be read ({type(e).__name__}: {first}); "
        f"delete it to resume from the checkpoint before it"
      ) from e
    integrity.verify_checkpoint(out["state"], (out["meta"] or {}).get("checksums"), where)
    return out["state"], out["meta"]

  def wait(self) -> None:
    """Blocks until the background saves are written."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the saves and releases the manager."""
    self.manager.close()
