"""Stage outputs as resumable shards (`glore_jax.workdir`), shared by this host's processes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from tqdm.auto import tqdm

from glore_jax import fingerprint as fp
from glore_jax import workdir as wd
from glore_jax.stages import outputs
from glore_jax.stages.common import Context
from glore_jax.stages.sync import barrier


def run(
  ctx: Context,
  name: str,
  items: Sequence[Any],
  work: Callable[[Sequence[Any]], list],
  *,
  shard_size: int,
) -> list[dict]:
  """Runs `work` on this process's unfinished shards of `items`, then returns every record of
  the stage (all processes' shards, in item order). A rerun skips finished shards; the
  manifest carries the stage's fingerprint (`glore_jax.fingerprint`).

  Args:
    ctx: the run's context.
    name: the stage's name (its folder under the work directory).
    items: the stage's inputs, split into shards in order.
    work: computes the records of one shard's items.
    shard_size: items per shard.
  """
  stage = wd.ShardedStage(
    ctx.path(name),
    name,
    config=fp.record(ctx.config, name),
    num_items=len(items),
    shard_size=shard_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  pending = stage.pending_shards()
  if len(pending) < len(stage.my_shards):
    print(
      f"[{name}] resuming: {len(stage.my_shards) - len(pending)} of {len(stage.my_shards)} "
      "shards already done",
      flush=True,
    )
  with tqdm(
    total=len(stage.my_shards),
    initial=len(stage.my_shards) - len(pending),
    desc=f"{name} shards",
    unit="shard",
  ) as bar:
    stage.run(items, work, on_shard=lambda i, n: bar.update(1))
  barrier(f"{name}-shards")
  return wd.read_all(stage.dir)


def finish(ctx: Context, name: str, summary: Mapping[str, Any] | None = None) -> None:
  """Marks the stage complete (process 0), with its figures in the manifest.

  Args:
    ctx: the run's context.
    name: the stage's name.
    summary: the figures to record; None: none.
  """
  if ctx.is_leader:
    wd.mark_done(ctx.path(name), summary)
  barrier(f"{name}-done")


def read(ctx: Context, name: str, needed_by: str) -> list[dict]:
  """All records of a finished, current stage, or an error naming the stage to run first.

  Args:
    ctx: the run's context.
    name: the stage whose records to read.
    needed_by: the stage that reads them (named in the error).
  """
  return wd.read_all(outputs.require(ctx, name, needed_by))


def is_done(ctx: Context, name: str) -> bool:
  """Whether stage `name` is finished under the current config.

  Args:
    ctx: the run's context.
    name: the stage's name.
  """
  return wd.stage_done(ctx.path(name))
