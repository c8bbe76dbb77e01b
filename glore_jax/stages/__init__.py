"""The GLoRe pipeline, one module per stage; each stage is a function of (config, workdir)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import jax
from etils import epath

from glore_jax.config_check import stage_list
from glore_jax.stages.common import Context
from glore_jax.stages.layout import MissingInputError

if TYPE_CHECKING:
  import ml_collections

log = logging.getLogger("glore_jax.stages")


def _runner(stage: str):
  # Imported lazily: a stage's heavy imports load only when it runs.
  if stage == "policy":
    from glore_jax.stages import policy

    return policy.run
  if stage == "sample":
    from glore_jax.stages import sample

    return sample.run
  if stage == "label":
    from glore_jax.stages import label

    return label.run
  if stage in ("train_orm", "train_sorm"):
    from glore_jax.stages import train_reward

    return lambda ctx: train_reward.run(ctx, stage.removeprefix("train_"))
  if stage == "refine_data":
    from glore_jax.stages import refine_data

    return refine_data.run
  if stage in ("train_global", "train_local"):
    from glore_jax.stages import train_refiner

    return lambda ctx: train_refiner.run(ctx, stage.removeprefix("train_"))
  if stage == "evaluate":
    from glore_jax.stages import evaluate

    return evaluate.run
  raise ValueError(f"unknown stage {stage!r}")


def make_context(config: ml_collections.ConfigDict, workdir: str) -> Context:
  """The run's `Context`: starts the distributed runtime, builds the mesh, creates `workdir`.

  A new work directory gets its run_config.json before any compute (process 0 writes it).

  Args:
    config: the validated run config (`glore_jax.defaults` plus the user's config file).
    workdir: the run's work directory (local path or gs:// URI); created when missing.

  Returns:
    The context every stage takes (config, work directory, global mesh).
  """
  from glore_jax.distributed import initialize
  from glore_jax.model import make_mesh

  initialize(config.distributed)
  mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  ctx = Context(config=config, workdir=path, mesh=mesh)
  from glore_jax.provenance import RUN_CONFIG, write_run_config

  if ctx.is_leader and not (path / RUN_CONFIG).exists():
    write_run_config(config, path)  # a new work directory says what it is before any compute
  return ctx


# Stages whose generation each process runs alone, on its own shards of the items (sample,
# label) or on its own copy of the models (evaluate): with several processes they run on
# `local_mesh`, since on the global mesh a process cannot address the others' devices and the
# per-process loops (different shards, different lengths) would deadlock at the collectives.
LOCAL_STAGES = ("sample", "label", "evaluate")


def stage_context(ctx: Context, stage: str) -> Context:
  """The context `stage` runs in: `ctx` itself, or with several processes and a stage of
  LOCAL_STAGES, `ctx` on this process's own devices (`glore_jax.distributed.local_mesh`).

  Args:
    ctx: the run's context (global mesh).
    stage: the stage's name, e.g. 'sample'.
  """
  if stage in LOCAL_STAGES and jax.process_count() > 1:
    from glore_jax.distributed import local_mesh

    return dataclasses.replace(ctx, mesh=local_mesh(ctx.mesh))
  return ctx


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> Context:
  """Runs the stages `config` selects, in order, in `workdir`; finished, current stages skip.

  The run_config.json record is rewritten only after every stage succeeded.

  Args:
    config: the validated run config.
    workdir: the run's work directory (local path or gs:// URI).

  Returns:
    The run's context.

  Raises:
    MissingInputError: a stage needs an output that is missing or stale (exit 3).
    StaleOutputError: a finished output was computed under another config and is not named
      in `config.recompute`.
  """
  ctx = make_context(config, workdir)
  log.info(
    "devices: %d x %s, %d process(es); mesh %s; workdir %s",
    jax.device_count(),
    jax.devices()[0].device_kind,
    jax.process_count(),
    dict(ctx.mesh.shape),
    workdir,
  )
  for stage in stage_list(config):
    _runner(stage)(stage_context(ctx, stage))
  if ctx.is_leader:  # after success only: a run refused as stale leaves the record as it was
    from glore_jax.provenance import write_run_config

    write_run_config(config, ctx.workdir)
  return ctx


__all__ = [
  "LOCAL_STAGES",
  "Context",
  "MissingInputError",
  "make_context",
  "run_stages",
  "stage_context",
]
