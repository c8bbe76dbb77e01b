"""Stage `refine_data`: global pairs and local triples from the label stage's rollouts."""

from __future__ import annotations

import collections
import dataclasses

from glore_jax import fingerprint
from glore_jax.method.labels import StepLabels, StepRollouts
from glore_jax.method.refinement import global_pairs, local_triples
from glore_jax.stages import outputs, sharded
from glore_jax.stages.common import Context, timed
from glore_jax.workdir import ShardedStage


def build(ctx: Context, records: list[dict]) -> tuple[list, list, dict]:
  """(global pairs, local triples, counts) from label records; deterministic in the seed.

  Args:
    ctx: the run's context (`config.refine`, seed).
    records: label-stage records.
  """
  by_question: dict[str, list] = collections.defaultdict(list)
  for r in records:
    sol = StepRollouts.from_json(r)
    by_question[r["problem_id"]].append((sol, StepLabels(r["sorm_hard"], r["sorm_soft"])))
  seed = ctx.config.seed
  pairs = global_pairs(
    {pid: [s for s, _ in v] for pid, v in by_question.items()},
    seed=seed,
    max_pairs_per_question=ctx.config.refine.max_pairs_per_question,
    correct_draft_pairs=ctx.config.refine.correct_draft_pairs,
  )
  triples = local_triples(by_question, consistency=ctx.config.sorm.consistency, seed=seed)
  counts = {
    **{f"global_{k}": v for k, v in pairs.counts.items()},
    **{f"local_{k}": v for k, v in triples.counts.items()},
  }
  return list(pairs), list(triples), counts


def run(ctx: Context) -> None:
  """The refine_data stage: global pairs and local triples from the label records."""
  if outputs.start(ctx, "refine_data"):
    print(f"[refine_data] already built: {ctx.path('refine_data')}")
    return
  records = sharded.read(ctx, "label", "refine_data")
  with timed(ctx, "refine_data") as summary:
    pairs, triples, counts = build(ctx, records)
    if ctx.is_leader:
      # one shard holding both kinds, tagged: the two sets are small and built in one pass
      rows = [{"kind": "global", **dataclasses.asdict(p)} for p in pairs] + [
        {"kind": "local", **dataclasses.asdict(t)} for t in triples
      ]
      stage = ShardedStage(
        ctx.path("refine_data"),
        "refine_data",
        config=fingerprint.record(ctx.config, "refine_data"),
        num_items=len(rows),
        shard_size=max(len(rows), 1),
      )
      stage.write_shard(0, rows)
    summary.update(counts)
    sharded.finish(ctx, "refine_data", counts)


def read_examples(ctx: Context, kind: str, needed_by: str) -> list[dict]:
  """The refinement examples of `kind` from the finished refine_data stage.

  Args:
    ctx: the run's context.
    kind: 'global' (pairs) or 'local' (triples).
    needed_by: the stage that reads them (named in the error when missing).
  """
  return [r for r in sharded.read(ctx, "refine_data", needed_by) if r["kind"] == kind]
