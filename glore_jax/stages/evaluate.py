"""Stage `evaluate`: the paper's tables for this run, and every candidate behind them.

Per test question: a greedy draft D and N policy samples; the SORM scores D's steps and the first
step under the "where" threshold is where to refine; one global refinement G (question + D) and
one local refinement L (D with the marker before that step); the ORM reranks the candidates.
Baselines beside best-of-N by the ORM: the mean sample, a random pick, a majority vote and the
policy's own likelihood. On test questions, ORM and SORM are compared step by step against K
rollouts from every prefix of D and the samples and, on the synthetic task, against each step's
ground truth. `candidates.json` holds every candidate with its scores, so every row can be
recomputed from it (tests/recompute_table.py does). This module builds the candidates with the
models; evaluate_rows.py turns the records into the rows and metrics of results.json.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from glore_jax import provenance
from glore_jax.data.grading import extract_answer, solution_correct
from glore_jax.data.step_truth import reference_equations, step_truth
from glore_jax.data.steps import join_steps, split_steps
from glore_jax.method import evaluation as ev
from glore_jax.sampling import generate
from glore_jax.stages import models, outputs, sharded
from glore_jax.stages.common import Context, is_heldout, problems, timed, tokenizer_for
from glore_jax.stages.evaluate_rows import (
  POLICY_ROLES,
  answer_rows,
  combined_score,
  intermediate,
  label_quality,
  verifier_metrics,
)
from glore_jax.stages.label import label_samples
from glore_jax.stages.scoring import score_steps, solution_logprobs
from glore_jax.workdir import read_json, write_json_atomic

if TYPE_CHECKING:
  from glore_jax.data.records import Problem


def _candidate(role: str, steps: Sequence[str], gold: str, *, index: int = 0) -> dict[str, Any]:
  text = join_steps(steps)
  return {
    "role": role,
    "index": index,
    "steps": list(steps),
    "answer": extract_answer(text),
    "correct": solution_correct(text, gold),
  }


def _generate(
  ctx: Context,
  model,
  tokenizer,
  prompts: Sequence[str],
  *,
  num_samples: int = 1,
  temperature: float = 0.0,
  seed_offset: int = 0,
):
  section = ctx.config.evaluate
  ids = [tokenizer(p)["input_ids"] for p in prompts]
  return generate(
    model,
    ids,
    max_new_tokens=section.max_new_tokens,
    temperature=temperature,
    num_samples=num_samples,
    seed=ctx.config.seed + seed_offset,
    mesh=ctx.mesh,
    batch_size=section.batch_size,
  )


def _steps(tokenizer, sample) -> list[str]:
  return split_steps(tokenizer.decode(sample.tokens, skip_special_tokens=True))


def _score(ctx: Context, kind: str, tokenizer, pairs: Sequence[tuple[str, list[str]]]):
  """Per-step value-head scores of (question, steps) pairs under the ORM or the SORM."""
  model = models.load(ctx, ctx.path(kind), value_head=True)
  prompts = [ctx.prompts.reward_prompt(q) for q, _ in pairs]
  scores = score_steps(
    model,
    tokenizer,
    prompts,
    [s for _, s in pairs],
    max_length=ctx.config.data.max_length,
    mesh=ctx.mesh,
  )
  del model
  return scores


def _attach_scores(ctx, kind, tokenizer, questions, cands) -> None:
  """Sets c[kind + "_steps"] and, for the ORM, c["orm"] (the final step's score)."""
  scores = _score(ctx, kind, tokenizer, [(questions[q], c["steps"]) for q, c in cands])
  for (_, c), s in zip(cands, scores):
    c[f"{kind}_steps"] = s
    if kind == "orm":
      c["orm"] = s[-1] if s else 0.0


def _rollout_labels(ctx: Context, model, tokenizer, tests, records) -> None:
  """K policy rollouts from every prefix of D and the samples: their SORM labels on test
  questions (c["rollout_hard"], aligned with c["steps"] when the segmentations agree)."""
  samples, owners = [], []
  for q, rec in enumerate(records):
    for c in rec["candidates"]:
      if c["role"] in POLICY_ROLES and c.get("tokens"):
        samples.append(
          {
            "problem_id": rec["id"],
            "question_index": q,
            "tokens": c["tokens"],
            "sample_index": 1000 + c["index"] if c["role"] == "sample" else 0,
            "correct": c["correct"],
          }
        )
        owners.append(c)
  gold = {p.id: p.answer for p in tests}
  questions = {p.id: p.question for p in tests}
  labelled = label_samples(ctx, model, tokenizer, samples, gold, questions)
  for c, lab in zip(owners, labelled):
    c["rollout_hard"] = lab["sorm_hard"] if lab["steps"] == c["steps"] else None


def candidates(ctx: Context, tests: Sequence[Problem]) -> tuple[list[dict], dict]:
  """Every test question's candidates (D, N samples, G, L) with answers, grades and scores.

  Args:
    ctx: the run's context (the policy, reward models and refiners must be finished).
    tests: the test questions.

  Returns:
    (one record per question with its candidates, the chosen where threshold, its held-out
    F1 and the ORM + likelihood selector).
  """
  section = ctx.config.evaluate
  policy_dir = outputs.require(ctx, "policy", "evaluate")
  for kind in ("orm", "sorm", "global", "local"):
    outputs.require(ctx, kind, "evaluate")
  tokenizer = tokenizer_for(ctx.config, policy_dir)
  prompts = ctx.prompts
  questions = [p.question for p in tests]
  synthetic = ctx.config.data.source == "synthetic"
  records = [
    {"id": p.id, "question": p.question, "gold": p.answer, "candidates": []} for p in tests
  ]

  policy = models.load(ctx, policy_dir)
  policy_prompts = [prompts.policy_prompt(q) for q in questions]
  drafts = _generate(ctx, policy, tokenizer, policy_prompts)
  samples = _generate(
    ctx,
    policy,
    tokenizer,
    policy_prompts,
    num_samples=section.best_of,
    temperature=section.temperature,
    seed_offset=7,
  )
  for rec, d, row in zip(records, drafts, samples):
    for role, k, s in [("draft", 0, d[0])] + [("sample", k, s) for k, s in enumerate(row)]:
      c = _candidate(role, _steps(tokenizer, s), rec["gold"], index=k)
      c["tokens"] = list(s.tokens)
      rec["candidates"].append(c)
  if section.rollout_labels:
    _rollout_labels(ctx, policy, tokenizer, tests, records)
  del policy

  policy_cands = [(q, c) for q, rec in enumerate(records) for c in rec["candidates"]]
  for kind in ("sorm", "orm"):
    _attach_scores(ctx, kind, tokenizer, questions, policy_cands)

  threshold, tuned = _where_threshold(ctx, tokenizer)
  for rec in records:
    draft = rec["candidates"][0]
    where = ev.first_step_below(draft["sorm_steps"], threshold)
    if (
      where is not None
      and section.keep_confident_answer
      and where == len(draft["steps"]) - 1
      and draft["orm"] >= section.threshold
    ):
      where = None  # only the answer line is doubted, and the ORM trusts the draft: keep it
    rec["where"] = where if draft["steps"] else None

  drafts_steps = [rec["candidates"][0]["steps"] for rec in records]
  refiner_tok = tokenizer_for(ctx.config, ctx.path("global"))
  model = models.load(ctx, ctx.path("global"))
  outs = _generate(
    ctx,
    model,
    refiner_tok,
    [prompts.global_refine_input(q, d) for q, d in zip(questions, drafts_steps)],
  )
  del model
  for rec, out in zip(records, outs):
    rec["candidates"].append(_candidate("global", _steps(refiner_tok, out[0]), rec["gold"]))

  local_tok = tokenizer_for(ctx.config, ctx.path("local"), with_marker=True)
  model = models.load(ctx, ctx.path("local"))
  flagged = [i for i, rec in enumerate(records) if rec["where"] is not None]
  outs = _generate(
    ctx,
    model,
    local_tok,
    [
      prompts.local_refine_input(questions[i], drafts_steps[i], records[i]["where"])
      for i in flagged
    ],
  )
  del model
  local_steps = {
    i: list(drafts_steps[i][: records[i]["where"]]) + _steps(local_tok, out[0])
    for i, out in zip(flagged, outs)
  }
  for i, rec in enumerate(records):  # no flagged step: the draft stands
    rec["candidates"].append(_candidate("local", local_steps.get(i, drafts_steps[i]), rec["gold"]))

  refined = [(q, c) for q, rec in enumerate(records) for c in rec["candidates"][-2:]]
  for kind in ("sorm", "orm"):
    _attach_scores(ctx, kind, tokenizer, questions, refined)

  every = [(q, c) for q, rec in enumerate(records) for c in rec["candidates"]]
  policy = models.load(ctx, policy_dir)
  logprobs = solution_logprobs(
    policy,
    tokenizer,
    [prompts.policy_prompt(questions[q]) for q, _ in every],
    [c["steps"] for _, c in every],
    max_length=ctx.config.data.max_length,
    mesh=ctx.mesh,
  )
  for (_, c), lp in zip(every, logprobs):
    c["mean_logprob"] = lp
  selector = _likelihood_weight(ctx, policy, tokenizer)
  del policy
  for _, c in every:
    c["orm_lik"] = combined_score(c["orm"], c["mean_logprob"], selector)

  for p, rec in zip(tests, records):
    ref = reference_equations(p.reference) if synthetic else None
    for c in rec["candidates"]:
      c.pop("tokens", None)
      c["truth"] = step_truth(c["steps"], ref, p.answer).to_json() if ref else None
  return records, {
    "where_threshold": threshold,
    "where_threshold_heldout_f1": tuned,
    "orm_lik": selector,
  }


def _likelihood_weight(ctx: Context, policy, tokenizer) -> dict[str, Any]:
  """How much of the policy's own likelihood to mix into the ORM's score, chosen on held-out
  training questions (never trained on by the ORM) by within-question pairwise accuracy."""
  records = [
    r
    for r in sharded.read(ctx, "sample", "evaluate")
    if is_heldout(ctx.config, r["problem_id"]) and r["steps"]
  ]
  questions = {p.id: p.question for p in problems(ctx.config, "train")}
  pairs = [(questions[r["problem_id"]], r["steps"]) for r in records]
  orm = [s[-1] if s else 0.5 for s in _score(ctx, "orm", tokenizer, pairs)]
  lp = solution_logprobs(
    policy,
    tokenizer,
    [ctx.prompts.policy_prompt(q) for q, _ in pairs],
    [s for _, s in pairs],
    max_length=ctx.config.data.max_length,
    mesh=ctx.mesh,
  )
  keep = [i for i, x in enumerate(lp) if x is not None]
  logits = [
    math.log(min(max(orm[i], 1e-6), 1 - 1e-6) / (1 - min(max(orm[i], 1e-6), 1 - 1e-6)))
    for i in keep
  ]
  lps = [lp[i] for i in keep]
  stats = {
    "logit_mean": _mean(logits),
    "logit_std": _std(logits),
    "logprob_mean": _mean(lps),
    "logprob_std": _std(lps),
  }
  best = {"weight": 0.0, "heldout_pairwise": None}
  for w in [round(0.1 * i, 1) for i in range(11)]:
    sel = {**stats, "weight": w}
    scores = [combined_score(orm[i], lp[i], sel) for i in keep]
    r = ev.within_question_pairs(
      scores, [records[i]["correct"] for i in keep], [records[i]["problem_id"] for i in keep]
    )
    if r["pairwise"] is not None and (
      best["heldout_pairwise"] is None or r["pairwise"] > best["heldout_pairwise"]
    ):
      best = {"weight": w, "heldout_pairwise": r["pairwise"]}
  return {**stats, **best, "heldout_solutions": len(keep)}


def _mean(xs: Sequence[float]) -> float:
  return sum(xs) / len(xs) if xs else 0.0


def _std(xs: Sequence[float]) -> float:
  if len(xs) < 2:
    return 1.0
  m = _mean(xs)
  return max(math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)), 1e-6)


def _where_threshold(ctx: Context, tokenizer) -> tuple[float, float | None]:
  """evaluate.where_threshold, or (tune_where_threshold) the one that best localises the first
  negative rollout label on held-out training questions' solutions."""
  section = ctx.config.evaluate
  if not section.tune_where_threshold:
    return float(section.where_threshold), None
  records = [
    r
    for r in sharded.read(ctx, "label", "evaluate")
    if is_heldout(ctx.config, r["problem_id"]) and r["steps"]
  ]
  if not records:
    return float(section.where_threshold), None
  questions = {p.id: p.question for p in problems(ctx.config, "train")}
  scores = _score(
    ctx, "sorm", tokenizer, [(questions[r["problem_id"]], r["steps"]) for r in records]
  )
  first_bad = [r["sorm_hard"].index(0) if 0 in r["sorm_hard"] else None for r in records]
  return ev.choose_where_threshold(scores, first_bad)


def run(ctx: Context) -> None:
  """The evaluate stage: the main table and verifier metrics, written to results.json."""
  section = ctx.config.evaluate
  out_dir = ctx.path("evaluate")
  if outputs.start(ctx, "evaluate"):
    print(f"[evaluate] already done: {out_dir / 'results.json'}", flush=True)
    if ctx.is_leader:
      print(ev.markdown_table(read_json(out_dir / "results.json")), flush=True)
    return
  with timed(ctx, "evaluate") as summary:
    tests = problems(ctx.config, "test")[: section.num_questions]
    records, where = candidates(ctx, tests)
    table = answer_rows(records, section.threshold, section.bootstrap_resamples, ctx.config.seed)
    steps = {
      kind: verifier_metrics(records, kind, where["where_threshold"]) for kind in ("orm", "sorm")
    }
    quality = label_quality(ctx)
    summary.update(questions=len(tests), where_threshold=where["where_threshold"])
  if not ctx.is_leader:
    return
  out_dir.mkdir(parents=True, exist_ok=True)
  curves = {}
  for kind in ("orm", "sorm"):
    pairs = [
      (p, y)
      for rec in records
      for c in rec["candidates"]
      if c["role"] in POLICY_ROLES
      and c.get("rollout_hard") is not None
      and len(c.get(f"{kind}_steps", [])) == len(c["steps"])
      for p, y in zip(intermediate(c[f"{kind}_steps"]), intermediate(c["rollout_hard"]))
    ]
    curves[kind] = ([p for p, _ in pairs], [y for _, y in pairs])
  if all(c[0] for c in curves.values()):
    ev.reliability_diagram(curves, out_dir / "reliability.png")
  timings_path = ctx.workdir / "timings.json"
  results = {
    **table["rows"],
    "best_of": table["best_of"],
    "differences": table["differences"],
    "step_level": steps,
    "label_quality": quality,
    "fixes": table["fixes"],
    **where,
    "timings": read_json(timings_path) if timings_path.exists() else {},
    "provenance": provenance.record(ctx.config),
  }
  write_json_atomic(out_dir / "results.json", results)
  write_json_atomic(
    out_dir / "candidates.json",
    {"threshold": section.threshold, "seed": ctx.config.seed, **where, "questions": records},
  )
  print(ev.markdown_table(results), flush=True)
