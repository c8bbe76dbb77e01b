"""Stage `label`: K policy rollouts from step prefixes of every sample (the SORM's labels).

Each sample's tokens are prefilled once and the K rollouts of every prefix start from that one
cache (the sampler's fan-out (b)); prefix i ends at the token that terminates step i.
`sorm.labeling`: "exhaustive" rolls out from every prefix; "first_error_search" only from the
prefixes a binary search for the first negative one asks for, one fan-out per search round
(`glore_jax.method.first_error_search`), and flags the labels it infers (`sorm_measured`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from glore_jax.data.grading import solution_correct
from glore_jax.data.steps import step_ends_from_tokens
from glore_jax.method.first_error_search import FirstErrorSearch, non_monotone
from glore_jax.method.labels import (
  Rollout,
  StepLabels,
  StepRollouts,
  label_statistics,
  orm_labels,
  prefix_successes,
  sorm_labels,
)
from glore_jax.sampling import rollouts_from_prefixes_batch
from glore_jax.stages import models, outputs, sharded
from glore_jax.stages.common import Context, problems, timed, tokenizer_for

if TYPE_CHECKING:
  from transformers import PreTrainedTokenizerFast

  from glore_jax.model import Llama


def segment_steps(
  tokenizer: PreTrainedTokenizerFast, tokens: Sequence[int]
) -> tuple[list[str], list[int]]:
  """Steps as decoded from the generated tokens themselves, and each step's terminator index,
  so a rollout's prefix is exactly the tokens the policy produced (no re-tokenisation).

  Args:
    tokenizer: the policy's tokenizer.
    tokens: the generated solution tokens (no prompt).
  """
  ends = step_ends_from_tokens(tokenizer, tokens)
  steps, begin = [], 0
  for end in ends:
    steps.append(tokenizer.decode(list(tokens[begin : end + 1]), skip_special_tokens=True).strip())
    begin = end + 1
  return steps, ends


def label_samples(
  ctx: Context,
  model: Llama,
  tokenizer: PreTrainedTokenizerFast,
  samples: Sequence[dict],
  gold: dict[str, str],
  questions: dict[str, str],
) -> list[dict]:
  """Label records for `samples` (with the prefill tokens fan-out (b) used and saved).

  Args:
    ctx: the run's context (`config.sorm` chooses the labelling).
    model: the policy that rolls out from each step prefix.
    tokenizer: the policy's tokenizer.
    samples: sample-stage records (problem_id, tokens, ...).
    gold: {problem_id: gold answer}.
    questions: {problem_id: question text}.
  """
  if ctx.config.sorm.labeling == "first_error_search":
    return _label_by_search(ctx, model, tokenizer, samples, gold, questions)
  section = ctx.config.sorm
  prompts, drafts, prefix_ends, segmented = [], [], [], []
  for r in samples:
    steps, ends = segment_steps(tokenizer, r["tokens"])
    segmented.append((steps, ends))
    prompts.append(tokenizer(ctx.prompts.policy_prompt(questions[r["problem_id"]]))["input_ids"])
    drafts.append(r["tokens"])
    prefix_ends.append(ends[:-1])  # the last step's prefix is the whole solution: its outcome
  rollouts = _rollouts(ctx, model, samples, prompts, drafts, prefix_ends)
  records = []
  for r, (steps, _), ro in zip(samples, segmented, rollouts):
    answer = gold[r["problem_id"]]
    graded = []
    for prefix in ro.samples:
      graded.append([_grade(tokenizer, s.tokens, answer) for s in prefix])
    if steps:
      graded.append([])  # the final step: no rollouts, its label is the outcome
    sol = StepRollouts(steps=steps, outcome=bool(r["correct"]), rollouts=graded)
    sorm = sorm_labels(
      sol, consistency=section.consistency, propagate_positive=section.propagate_positive
    )
    measured = sorm_labels(sol, consistency=section.consistency, propagate_positive=False)
    records.append(
      _record(
        r,
        sol,
        sorm,
        [True] * len(steps),
        ro.samples,
        prefill=(ro.prefill_tokens, ro.naive_per_rollout_tokens),
        # the rollout noise a first-error search would not see
        non_monotone=non_monotone(measured.hard),
      )
    )
  return records


def _rollouts(ctx: Context, model, samples, prompts, drafts, prefix_ends):
  section = ctx.config.sorm
  return rollouts_from_prefixes_batch(
    model,
    prompts,
    drafts,
    prefix_ends,
    num_rollouts=section.num_rollouts,
    max_new_tokens=section.max_new_tokens,
    temperature=section.temperature,
    seed=ctx.config.seed + 1,
    mesh=ctx.mesh,
    batch_size=section.batch_size,
    example_ids=[(r["question_index"], r["sample_index"]) for r in samples],
  )


def _label_by_search(
  ctx: Context,
  model,
  tokenizer,
  samples: Sequence[dict],
  gold: dict[str, str],
  questions: dict[str, str],
) -> list[dict]:
  """Labels from a search (`sorm.search_strategy`) for each sample's first negative prefix
  (`glore_jax.method.first_error_search`): one batched fan-out per search round over every
  sample still searching, K rollouts from the one prefix each asks for. Rollout k from a prefix
  has the same random key as in exhaustive labeling, so a measured prefix gets exactly the
  rollouts exhaustive labeling gives it."""
  section = ctx.config.sorm
  segmented = [segment_steps(tokenizer, r["tokens"]) for r in samples]
  prompts = [
    tokenizer(ctx.prompts.policy_prompt(questions[r["problem_id"]]))["input_ids"] for r in samples
  ]
  searches = [
    FirstErrorSearch(len(steps), bool(r["correct"]), section.search_strategy)
    for r, (steps, _) in zip(samples, segmented)
  ]
  graded: list[list[list[Rollout]]] = [[[] for _ in steps] for steps, _ in segmented]
  sampled: list[list[list]] = [[[] for _ in steps] for steps, _ in segmented]
  prefill = [[0, 0] for _ in samples]
  while todo := [(d, s.next_query()) for d, s in enumerate(searches) if not s.done]:
    rows = [d for d, _ in todo]
    rollouts = _rollouts(
      ctx,
      model,
      [samples[d] for d in rows],
      [prompts[d] for d in rows],
      [samples[d]["tokens"] for d in rows],
      [[segmented[d][1][i]] for d, i in todo],
    )
    for (d, i), ro in zip(todo, rollouts):
      answer = gold[samples[d]["problem_id"]]
      graded[d][i] = [_grade(tokenizer, s.tokens, answer) for s in ro.samples[0]]
      sampled[d][i] = ro.samples[0]
      prefill[d][0] += ro.prefill_tokens  # every round prefills the draft again
      prefill[d][1] += ro.naive_per_rollout_tokens
      steps = segmented[d][0]
      searches[d].record(
        i, prefix_successes(steps[i], graded[d][i], section.consistency), len(graded[d][i])
      )
  records = []
  for d, (r, search) in enumerate(zip(samples, searches)):
    sol = StepRollouts(steps=segmented[d][0], outcome=bool(r["correct"]), rollouts=graded[d])
    found = search.labels()
    records.append(
      _record(
        r,
        sol,
        found.step_labels(),
        found.measured,
        sampled[d],
        prefill=tuple(prefill[d]),
        evaluations=found.evaluations,
      )
    )
  return records


def _record(
  r: dict,
  sol: StepRollouts,
  sorm: StepLabels,
  measured: list[bool],
  samples,
  *,
  prefill: tuple[int, int],
  **extra,
) -> dict:
  """One sample's label record. `samples[i]`: the raw rollouts from prefix i (none for prefixes
  not evaluated); prefill: (tokens prefilled, tokens one prefill per rollout would take)."""
  return {
    "problem_id": r["problem_id"],
    "question_index": r["question_index"],
    "sample_index": r["sample_index"],
    "steps": sol.steps,
    "outcome": sol.outcome,
    "rollouts": [
      [
        {"text": x.text, "correct": x.correct, "num_tokens": len(s.tokens)}
        for x, s in zip(graded, raw)
      ]
      for graded, raw in itertools.zip_longest(sol.rollouts, samples, fillvalue=[])
    ],
    "sorm_hard": list(sorm.hard),
    "sorm_soft": list(sorm.soft),
    "sorm_measured": measured,
    "orm": list(orm_labels(sol).hard),
    "rollouts_sampled": sum(len(p) for p in samples),
    "generated_tokens": sum(len(s.tokens) for p in samples for s in p),
    # fan-out (b): one prefill of the sample vs. one per rollout
    "prefill_tokens": prefill[0],
    "naive_prefill_tokens": prefill[1],
    **extra,
  }


def _grade(tokenizer, tokens: Sequence[int], gold: str) -> Rollout:
  text = tokenizer.decode(list(tokens), skip_special_tokens=True)
  return Rollout(text=text, correct=solution_correct(text, gold))


def run(ctx: Context) -> None:
  """The label stage: SORM step labels from rollouts of the policy's samples (sharded)."""
  section = ctx.config.sorm
  if outputs.start(ctx, "label"):
    print(f"[label] already done: {ctx.path('label')}", flush=True)
    return
  policy_dir = outputs.require(ctx, "policy", "label")
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
    stats = label_statistics(
      [StepLabels(r["sorm_hard"], r["sorm_soft"]) for r in records], [r["outcome"] for r in records]
    )
    counts = {k: sum(r[k] for r in records) for k in ("prefill_tokens", "naive_prefill_tokens")}
    counts["prefill_saved_fraction"] = round(
      1 - counts["prefill_tokens"] / max(counts["naive_prefill_tokens"], 1), 4
    )
    counts.update(labeling=section.labeling, **rollout_budget(records))
    if section.labeling != "exhaustive":
      counts["search_strategy"] = section.search_strategy
    summary.update(**_flat(stats), **counts)  # stats' num_solutions counts the records
    sharded.finish(ctx, "label", {"statistics": stats, **counts})


def rollout_budget(records: Sequence[dict]) -> dict[str, Any]:
  """What the labels cost and how many were measured: rollouts and generated tokens (total and
  per solution), the fraction of step labels measured rather than inferred, and, for exhaustive
  labels, the solutions whose rollouts are non-monotone (where a search would disagree).
  Empty for records written before these fields existed."""
  if not records or any("rollouts_sampled" not in r for r in records):
    return {}
  n = len(records)
  rollouts = sum(r["rollouts_sampled"] for r in records)
  tokens = sum(r["generated_tokens"] for r in records)
  steps = sum(len(r["sorm_measured"]) for r in records)
  out = {
    "rollouts": rollouts,
    "generated_tokens": tokens,
    "rollouts_per_solution": round(rollouts / n, 4),
    "generated_tokens_per_solution": round(tokens / n, 4),
    "measured_label_fraction": round(
      sum(sum(r["sorm_measured"]) for r in records) / max(steps, 1), 4
    ),
  }
  if all("non_monotone" in r for r in records):
    out["non_monotone_solutions"] = sum(bool(r["non_monotone"]) for r in records)
  if all("evaluations" in r for r in records):
    out["search_rounds"] = max((len(r["evaluations"]) for r in records), default=0)
  return out


def _flat(stats: dict[str, Any]) -> dict[str, Any]:
  return {
    k: (round(v, 4) if isinstance(v, float) else v)
    for k, v in stats.items()
    if isinstance(v, (int, float))
  }
