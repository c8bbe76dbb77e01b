"""Stage outputs in the work directory: are they finished, current and intact?

Every output carries its stage's fingerprint (`glore_jax.fingerprint`):

* sharded stages (sample, label, refine_data): `<stage>/manifest.json` (`glore_jax.workdir`);
* model stages: `<stage root>/fingerprint.json` (e.g. `policy/fingerprint.json`), written when
  the stage starts, so it also covers the half-trained checkpoints under `<root>/train`;
* evaluate: `evaluate/fingerprint.json`, written when it starts.

`start(ctx, stage)` runs first in every stage: a finished, current output is skipped; an
output of another configuration stops the run (exit 3) naming the changed keys, unless
`--config.recompute` names the stage, which discards it. `require(ctx, output, stage)` checks
an input the same way before the stage reads it.
"""

from __future__ import annotations

import logging

from etils import epath

from glore_jax import fingerprint as fp
from glore_jax import workdir as wd
from glore_jax.errors import StaleOutputError
from glore_jax.stages.layout import INPUT_KEYS, LAYOUT, PRODUCER, Context, MissingInputError
from glore_jax.stages.sync import barrier

log = logging.getLogger("glore_jax.stages")

OUTPUT = {stage: output for output, stage in PRODUCER.items()}  # stage -> LAYOUT key
SHARDED = ("sample", "label", "refine_data")
MODELS = ("policy", "train_orm", "train_sorm", "train_global", "train_local")
RECORD = "fingerprint.json"


def root(ctx: Context, stage: str) -> epath.Path:
  """The folder holding everything `stage` writes (a model stage: the model and its `train/`).

  Args:
    ctx: the run's context.
    stage: a stage name (a value of PRODUCER), e.g. 'train_orm'.
  """
  path = ctx.path(OUTPUT[stage])
  return path.parent if stage in MODELS else path


def _record_path(ctx: Context, stage: str) -> epath.Path:
  return root(ctx, stage) / (wd.MANIFEST if stage in SHARDED else RECORD)


def stored(ctx: Context, stage: str) -> dict | None:
  """The stored {'fingerprint', 'config'} of `stage`'s output, or None when there is none.

  Args:
    ctx: the run's context.
    stage: a stage name (a value of PRODUCER), e.g. 'train_orm'.
  """
  path = _record_path(ctx, stage)
  if not path.exists():
    return None
  data = wd.read_json(path)
  return {"fingerprint": data.get("fingerprint"), "config": data.get("config")}


def finished(ctx: Context, stage: str) -> bool:
  """Whether the output is complete (whatever its fingerprint).

  Args:
    ctx: the run's context.
    stage: a stage name (a value of PRODUCER), e.g. 'train_orm'.
  """
  if stage in SHARDED:
    return wd.stage_done(ctx.path(OUTPUT[stage]))
  if stage in MODELS:
    return (ctx.path(OUTPUT[stage]) / "config.json").exists()
  out = ctx.path("evaluate")
  return (out / "results.json").exists() and (out / "candidates.json").exists()


def _has_content(ctx: Context, stage: str) -> bool:
  path = root(ctx, stage)
  return path.exists() and any(not p.name.startswith(".") for p in path.iterdir())


def _stale_reason(ctx: Context, stage: str) -> tuple[str, list[str]] | None:
  """None when `stage`'s output (if any) matches the config; else (why, changed keys)."""
  try:
    have = stored(ctx, stage)
  except wd.CorruptFileError as e:
    return f"its fingerprint file is damaged ({e})", []
  want = fp.record(ctx.config, stage)
  if have is None:
    if _has_content(ctx, stage):
      return "it has no fingerprint (written by an older glore-jax or by hand)", []
    return None
  if have["fingerprint"] == wd.fingerprint(want):
    return None
  changed = fp.changed_keys(have["config"], want)
  return "it was computed with another configuration", changed


def _stale_message(
  ctx: Context, stage: str, why: str, changed: list[str], needed_by: str | None = None
) -> str:
  affected = [
    s for s in fp.downstream(stage) if s == stage or root(ctx, s).exists() or s in _run_stages(ctx)
  ]
  keys = (
    f"; changed: {', '.join(changed[:8])}" + (" ..." if len(changed) > 8 else "") if changed else ""
  )
  who = (
    f"stage {needed_by!r} needs the output of stage {stage!r}"
    if needed_by
    else f"the output of stage {stage!r}"
  )
  return (
    f"{who} ({root(ctx, stage)}), but {why}{keys}. Stages affected: "
    f"{', '.join(affected)}. To recompute them add --config.recompute="
    f"{','.join(affected)} (and run them: --config.stages={','.join(affected)}), or use a "
    "new --workdir"
  )


def _run_stages(ctx: Context) -> list[str]:
  from glore_jax.config_check import stage_list

  return stage_list(ctx.config)


def _discard(ctx: Context, stage: str) -> None:
  path = root(ctx, stage)
  barrier(f"stale-{stage}")  # every process has seen the stale output before it goes
  if ctx.is_leader and path.exists():
    print(f"[{stage}] discarding {path}: computed under another config, or damaged", flush=True)
    path.rmtree()
  barrier(f"discard-{stage}")


def remove_orphans(ctx: Context, stage: str) -> None:
  """Partial model folders a killed save left behind (`.model.partial-*`).

  Args:
    ctx: the run's context.
    stage: a stage name (a value of PRODUCER), e.g. 'train_orm'.
  """
  if stage not in MODELS or not ctx.is_leader:
    return
  path = root(ctx, stage)
  if not path.exists():
    return
  for orphan in path.glob(".*.partial-*"):
    log.info("removing %s, left by an interrupted save", orphan)
    orphan.rmtree()


def start(ctx: Context, stage: str) -> bool:
  """Call first in every stage. True: the output is finished and current (skip the stage).
  False: compute it (a stale output named in --config.recompute has been discarded, and the
  fingerprint of a model stage or evaluate is written). Raises StaleOutputError otherwise.

  Args:
    ctx: the run's context.
    stage: the stage's name, e.g. 'policy'.
  """
  reason = _stale_reason(ctx, stage)
  if reason is not None:
    if _nothing_computed(ctx, stage):
      # e.g. a run that failed before its first shard: nothing to lose, nothing to reuse
      log.info("stage %s: replacing an output of another config with no finished work", stage)
    elif stage not in fp.recompute_list(ctx.config):
      raise StaleOutputError(_stale_message(ctx, stage, *reason))
    _discard(ctx, stage)
  remove_orphans(ctx, stage)
  if finished(ctx, stage):
    return stage not in SHARDED or _repair_shards(ctx, stage)
  if stage not in SHARDED and ctx.is_leader:
    write_record(ctx, stage)
  return False


def write_record(ctx: Context, stage: str) -> None:
  """Writes the fingerprint of a model stage or evaluate for the current config.

  Args:
    ctx: the run's context.
    stage: a stage name (a value of PRODUCER), e.g. 'train_orm'.
  """
  if stage in SHARDED:
    raise ValueError(f"stage {stage!r} keeps its fingerprint in its manifest (workdir.py)")
  record = fp.record(ctx.config, stage)
  root(ctx, stage).mkdir(parents=True, exist_ok=True)
  wd.write_json_atomic(
    _record_path(ctx, stage),
    {"stage": stage, "fingerprint": wd.fingerprint(record), "config": record},
  )


def _nothing_computed(ctx: Context, stage: str) -> bool:
  """Whether `stage`'s folder holds no finished piece of work (shard, checkpoint, model)."""
  path = ctx.path(OUTPUT[stage])
  if stage in SHARDED:
    return not path.exists() or not list(path.glob("shard-*.jsonl"))
  if stage in MODELS:
    checkpoints = root(ctx, stage) / "train" / "checkpoints"
    return not (path / "config.json").exists() and not (
      checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())
    )
  return not (path / "results.json").exists()


def _repair_shards(ctx: Context, stage: str) -> bool:
  """True when every shard of a finished sharded stage matches its checksum; else the damaged
  shards are deleted (to be recomputed by this run) and False."""
  path = ctx.path(OUTPUT[stage])
  bad = wd.damaged_shards(path)
  barrier(f"check-{stage}")  # every process has looked before any shard is deleted
  if not bad:
    return True
  if ctx.is_leader:
    for name, why in bad:
      print(f"[{stage}] {path / name}: {why}; recomputing it", flush=True)
      (path / name).unlink(missing_ok=True)
    wd.mark_undone(path)
  barrier(f"repair-{stage}")
  return False


def require(ctx: Context, output: str, needed_by: str) -> epath.Path:
  """The folder of `output` (a LAYOUT key) once it is finished and current; else an error
  naming the stage to run or recompute (exit 3). A folder given in config.inputs is taken as
  it is, once it has a config.json.

  Args:
    ctx: the run's context.
    output: a LAYOUT key, e.g. 'policy'.
    needed_by: the stage that needs it (named in the error).

  Raises:
    MissingInputError: `output` is missing, unfinished or stale.
  """
  path = ctx.path(output)
  if ctx.given(output):  # a folder given in config.inputs is the user's: an HF folder, no more
    if not (path / "config.json").exists():
      raise MissingInputError(
        f"stage {needed_by!r}: config.inputs.{INPUT_KEYS[output]}={path} "
        "has no config.json (expected an HF model folder)"
      )
    return path
  stage = PRODUCER[output]
  if not finished(ctx, stage):
    raise MissingInputError(
      f"stage {needed_by!r} needs the output of stage {stage!r} ({path}), which is "
      f"missing or unfinished: run it first, e.g. --config.stages={stage},{needed_by}"
    )
  reason = _stale_reason(ctx, stage)
  if reason is not None:
    raise StaleOutputError(_stale_message(ctx, stage, *reason, needed_by=needed_by))
  return path


__all__ = ["LAYOUT", "finished", "remove_orphans", "require", "root", "start", "stored"]
