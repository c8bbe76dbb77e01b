"""Stage `label`: K policy rollouts from every step prefix of every sample (the SORM's labels).

Each sample's tokens are prefilled once and the K rollouts of every prefix start from that one
cache (the sampler's fan-out (b)); prefix i ends at the token that terminates step i.
"""

from __future__ import annotations

from typing import Any, Sequence

from glore_jax.data.grading import solution_correct
from glore_jax.data.steps import step_ends_from_tokens
from glore_jax.method.labels import (Rollout, StepLabels, StepRollouts, label_statistics,
                                     orm_labels, sorm_labels)
from glore_jax.sampling import rollouts_from_prefixes_batch
from glore_jax.stages import models, outputs, sharded
from glore_jax.stages.common import Context, problems, timed, tokenizer_for


def segment_steps(tokenizer, tokens: Sequence[int]) -> tuple[list[str], list[int]]:
  """Steps as decoded from the generated tokens themselves, and each step's terminator index,
  so a rollout's prefix is exactly the tokens the policy produced (no re-tokenisation)."""
  ends = step_ends_from_tokens(tokenizer, tokens)
  steps, begin = [], 0
  for end in ends:
    steps.append(tokenizer.decode(list(tokens[begin:end + 1]), skip_special_tokens=True).strip())
    begin = end + 1
  return steps, ends


def label_samples(ctx: Context, model, tokenizer, samples: Sequence[dict], gold: dict[str, str],
                  questions: dict[str, str]) -> list[dict]:
  """Label records for `samples` (with the prefill tokens fan-out (b) used and saved)."""
  section = ctx.config.sorm
  prompts, drafts, prefix_ends, segmented = [], [], [], []
  for r in samples:
    steps, ends = segment_steps(tokenizer, r["tokens"])
    segmented.append((steps, ends))
    prompts.append(tokenizer(ctx.prompts.policy_prompt(questions[r["problem_id"]]))["input_ids"])
    drafts.append(r["tokens"])
    prefix_ends.append(ends[:-1])  # the last step's prefix is the whole solution: its outcome
  rollouts = rollouts_from_prefixes_batch(
      model, prompts, drafts, prefix_ends, num_rollouts=section.num_rollouts,
      max_new_tokens=section.max_new_tokens, temperature=section.temperature,
      seed=ctx.config.seed + 1, mesh=ctx.mesh, batch_size=section.batch_size,
      example_ids=[(r["question_index"], r["sample_index"]) for r in samples])
  records = []
  for r, (steps, _), ro in zip(samples, segmented, rollouts):
    answer = gold[r["problem_id"]]
    graded = []
    for prefix in ro.samples:
      graded.append([_grade(tokenizer, s.tokens, answer) for s in prefix])
    if steps:
      graded.append([])  # the final step: no rollouts, its label is the outcome
    sol = StepRollouts(steps=steps, outcome=bool(r["correct"]), rollouts=graded)
    sorm = sorm_labels(sol, consistency=section.consistency,
                       propagate_positive=section.propagate_positive)
    records.append({
        "problem_id": r["problem_id"], "question_index": r["question_index"],
        "sample_index": r["sample_index"], "steps": steps, "outcome": bool(r["correct"]),
        "rollouts": [[{"text": x.text, "correct": x.correct} for x in p] for p in graded],
        "sorm_hard": list(sorm.hard), "sorm_soft": list(sorm.soft),
        "orm": list(orm_labels(sol).hard),
        # fan-out (b): one prefill of the sample vs. one per rollout
        "prefill_tokens": ro.prefill_tokens, "naive_prefill_tokens": ro.naive_per_rollout_tokens})
  return records


def _grade(tokenizer, tokens: Sequence[int], gold: str) -> Rollout:
  text = tokenizer.decode(list(tokens), skip_special_tokens=True)
  return Rollout(text=text, correct=solution_correct(text, gold))


def run(ctx: Context) -> None:
  section = ctx.config.sorm
  if outputs.start(ctx, "label"):
    print(f"[label] already done: {ctx.path('label')}", flush=True)
    return
  policy_dir = ctx.require("policy", "label")
  samples = sharded.read(ctx, "sample", "label")
  train = problems(ctx.config, "train")
  gold = {p.id: p.answer for p in train}
  questions = {p.id: p.question for p in train}
  with timed(ctx, "label") as summary:
    tokenizer = tokenizer_for(ctx.config, policy_dir)
    model = None

    def work(chunk: list[dict]) -> list[dict]:
      nonlocal model
      model = model or models.load(ctx, policy_dir)
      return label_samples(ctx, model, tokenizer, chunk, gold, questions)

    records = sharded.run(ctx, "label", samples, work, shard_size=section.shard_size)
    stats = label_statistics([StepLabels(r["sorm_hard"], r["sorm_soft"]) for r in records],
                             [r["outcome"] for r in records])
    counts = {k: sum(r[k] for r in records) for k in ("prefill_tokens", "naive_prefill_tokens")}
    counts["prefill_saved_fraction"] = round(
        1 - counts["prefill_tokens"] / max(counts["naive_prefill_tokens"], 1), 4)
    summary.update(**_flat(stats), **counts)  # stats' num_solutions counts the records
    sharded.finish(ctx, "label", {"statistics": stats, **counts})


def _flat(stats: dict[str, Any]) -> dict[str, Any]:
  return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()
          if isinstance(v, (int, float))}
