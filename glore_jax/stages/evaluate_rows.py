"""The arithmetic of stage `evaluate`, from candidate records to results: every row of the main
table (`per_question_rows`, `answer_rows`), the ORM + likelihood score (`combined_score`), how
well the ORM and SORM judge the policy's steps (`verifier_metrics`) and how good the training
labels are against ground truth (`label_quality`). Models play no part here; the records come
from `evaluate.candidates` or from `candidates.json`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from glore_jax.data.grading import normalize_number
from glore_jax.data.step_truth import reference_equations, step_truth
from glore_jax.method import evaluation as ev
from glore_jax.method.labels import hash_rank
from glore_jax.stages import sharded
from glore_jax.stages.common import Context, problems

POLICY_ROLES = ("draft", "sample")  # candidates the policy wrote (step-level metrics use these)


def combined_score(orm: float, mean_logprob: float | None, selector: dict) -> float:
  """The ORM's logit plus the policy's likelihood, each standardised on held-out questions and
  mixed with the weight chosen there: (1 - w) z(logit ORM) + w z(mean log-prob).

  Args:
    orm: the ORM's probability for the candidate (clipped to (0, 1) before the logit).
    mean_logprob: the policy's mean token log-probability; None: -inf (never chosen).
    selector: 'weight', 'logit_mean', 'logit_std', 'logprob_mean', 'logprob_std' from the
      held-out questions.
  """
  if mean_logprob is None:
    return float("-inf")
  p = min(max(orm, 1e-6), 1 - 1e-6)
  logit = math.log(p / (1 - p))
  w = selector["weight"]
  return (1 - w) * (logit - selector["logit_mean"]) / selector["logit_std"] + w * (
    mean_logprob - selector["logprob_mean"]
  ) / selector["logprob_std"]


def _row_name(kind: str, n: int) -> str:
  return f"{kind}_of_{n}"


def per_question_rows(records: Sequence[dict], threshold: float, seed: int) -> dict[str, list]:
  """Per-question correctness (a float for mean_sample) of every row of the main table.

  Args:
    records: one record per test question, from `candidates`.
    threshold: the ORM probability at which orm_gated keeps the greedy draft.
    seed: the seed of the random choices (mean_sample, ties).

  Returns:
    {row name: per-question correctness, in `records` order}.
  """
  rows: dict[str, list] = {}
  n = None
  for rec in records:
    by_role: dict[str, list[dict]] = {}
    for c in rec["candidates"]:
      by_role.setdefault(c["role"], []).append(c)
    d, g, l = by_role["draft"][0], by_role["global"][0], by_role["local"][0]
    samples = by_role.get("sample", [])
    n = len(samples)
    ok = [c["correct"] for c in samples]
    picks: dict[str, bool | float] = {"greedy": d["correct"]}
    if samples:
      picks["mean_sample"] = sum(ok) / n
      picks[_row_name("random", n)] = ok[hash_rank(seed, "random-pick", rec["id"]) % n]
      picks[_row_name("majority", n)] = ev.majority_vote(
        [normalize_number(c["answer"]) for c in samples], ok
      )
      likelihood = [
        c["mean_logprob"] if c["mean_logprob"] is not None else float("-inf") for c in samples
      ]
      picks[_row_name("likelihood", n)] = ok[ev.rerank([likelihood], [ok]).chosen[0]]
      picks[f"best_of_{n}"] = ev.rerank([[c["orm"] for c in samples]], [ok]).correct[0]
    dgl = [d, g, l]
    scores, correct = [[c["orm"] for c in dgl]], [[c["correct"] for c in dgl]]
    picks.update(
      {
        "global": g["correct"],
        "local": l["correct"],
        "draft_global": ev.rerank(scores, correct, [0, 1]).correct[0],
        "draft_local": ev.rerank(scores, correct, [0, 2]).correct[0],
        "draft_global_local": ev.rerank(scores, correct).correct[0],
        "orm_gated": ev.gated_rerank(scores, correct, threshold).correct[0],
        "oracle": any(c["correct"] for c in dgl),
      }
    )
    if "orm_lik" in d:  # the same reranks by ORM + policy likelihood
      mixed = [[c["orm_lik"] for c in dgl]]
      if samples:
        picks[f"best_of_{n}+lik"] = ev.rerank([[c["orm_lik"] for c in samples]], [ok]).correct[0]
      picks["draft_global+lik"] = ev.rerank(mixed, correct, [0, 1]).correct[0]
      picks["draft_local+lik"] = ev.rerank(mixed, correct, [0, 2]).correct[0]
      picks["draft_global_local+lik"] = ev.rerank(mixed, correct).correct[0]
    for k, v in picks.items():
      rows.setdefault(k, []).append(v)
  return rows


def answer_rows(records: Sequence[dict], threshold: float, resamples: int, seed: int) -> dict:
  """The main table (accuracy, n, bootstrap 95% interval per row), the paired differences that
  decide the paper's claims, and how many wrong drafts each refiner fixes.

  Args:
    records: one record per test question, from `candidates`.
    threshold: the ORM probability at which orm_gated keeps the greedy draft.
    resamples: bootstrap resamples for the 95% intervals.
    seed: the seed of the bootstrap and the random choices.
  """
  per_q = per_question_rows(records, threshold, seed)
  n = sum(c["role"] == "sample" for c in records[0]["candidates"]) if records else 0
  rows = {
    k: ev.accuracy_row([float(x) for x in v], num_resamples=resamples, seed=seed)
    if k == "mean_sample"
    else ev.accuracy_row(v, num_resamples=resamples, seed=seed)
    for k, v in per_q.items()
  }
  diff = lambda a, b: ev.paired_difference(per_q[a], per_q[b], num_resamples=resamples, seed=seed)
  comparisons = [
    ("draft_global_local", "greedy"),
    ("draft_global_local", f"best_of_{n}"),
    (f"best_of_{n}", "mean_sample"),
    (f"best_of_{n}", _row_name("random", n)),
    (f"best_of_{n}", _row_name("majority", n)),
    ("orm_gated", "greedy"),
    ("draft_global_local+lik", "greedy"),
    ("draft_global_local+lik", f"best_of_{n}+lik"),
    (f"best_of_{n}+lik", "mean_sample"),
    (f"best_of_{n}+lik", _row_name("likelihood", n)),
  ]
  differences = {f"{a} - {b}": diff(a, b) for a, b in comparisons if a in per_q and b in per_q}
  d, g, l = (per_q["greedy"], per_q["global"], per_q["local"])
  wrong = [i for i, ok in enumerate(d) if not ok]
  right = [i for i, ok in enumerate(d) if ok]
  fixes = {
    "wrong_drafts": len(wrong),
    "fixed_by_global": sum(g[i] for i in wrong),
    "fixed_by_local": sum(l[i] for i in wrong),
    "fixed_by_both": sum(g[i] and l[i] for i in wrong),
    "fixed_by_either": sum(g[i] or l[i] for i in wrong),
    "broken_by_global": sum(not g[i] for i in right),
    "broken_by_local": sum(not l[i] for i in right),
    "refined_locally": sum(rec["where"] is not None for rec in records),
  }
  return {"rows": rows, "differences": differences, "fixes": fixes, "best_of": n}


def intermediate(xs: Sequence) -> list:
  return list(xs[:-1])  # the last step's label is the outcome itself


def verifier_metrics(records: Sequence[dict], kind: str, threshold: float) -> dict[str, Any]:
  """How well the ORM or SORM judges the policy's own solutions on test questions.

  Args:
    records: one record per test question, from `candidates`.
    kind: 'orm' or 'sorm'.
    threshold: the step probability below which a step is the first error (the "where"
      threshold).
  """
  cands = [
    (rec["id"], c)
    for rec in records
    for c in rec["candidates"]
    if c["role"] in POLICY_ROLES
    and c.get(f"{kind}_steps")
    and len(c[f"{kind}_steps"]) == len(c["steps"])
  ]
  step_p, step_rollout, truth_p, truth_y = [], [], [], []
  for _, c in cands:
    p = intermediate(c[f"{kind}_steps"])
    if c.get("rollout_hard") is not None:
      step_p.append(p)
      step_rollout.append(intermediate(c["rollout_hard"]))
    if c.get("truth"):
      truth_p.extend(p)
      truth_y.extend(int(all(c["truth"]["ok"][: i + 1])) for i in range(len(p)))
  finals = [c[f"{kind}_steps"][-1] for _, c in cands]
  outcomes = [c["correct"] for _, c in cands]
  out = ev.step_level_metrics(step_p, step_rollout, finals, outcomes) if cands else {}
  out["auroc_truth"] = ev.auroc(truth_p, truth_y) if truth_y else None
  out["n_truth_steps"] = len(truth_y)
  out["final_auroc"] = ev.auroc(finals, [int(o) for o in outcomes]) if cands else None
  within = ev.within_question_pairs(finals, outcomes, [pid for pid, _ in cands])
  out["within_question_pairs"] = within["pairwise"]
  out["within_question"] = within
  with_truth = [c for _, c in cands if c.get("truth")]
  if with_truth:
    out["localisation"] = ev.localisation(
      [ev.first_step_below(c[f"{kind}_steps"], threshold) for c in with_truth],
      [c["truth"]["first_error"] for c in with_truth],
    )
  return out


def label_quality(ctx: Context) -> dict[str, Any] | None:
  """SORM (and ORM) training labels against each step's ground truth on the synthetic task."""
  if ctx.config.data.source != "synthetic":
    return None
  refs = {p.id: (reference_equations(p.reference), p.answer) for p in problems(ctx.config, "train")}
  agree = {"sorm": 0, "orm": 0}
  total, first_hits, first_total = 0, 0, 0
  for r in sharded.read(ctx, "label", "evaluate"):
    ref, gold = refs[r["problem_id"]]
    if not ref or len(r["steps"]) < 2:
      continue
    truth = step_truth(r["steps"], ref, gold)
    sound = intermediate(truth.prefix_sound)
    for kind, labels in (("sorm", r["sorm_hard"]), ("orm", r["orm"])):
      agree[kind] += sum(int(y) == int(t) for y, t in zip(intermediate(labels), sound))
    total += len(sound)
    if truth.first_error is not None and truth.first_error < len(r["steps"]) - 1:
      first_total += 1
      hard = intermediate(r["sorm_hard"])
      first_hits += (hard.index(0) if 0 in hard else None) == truth.first_error
  if not total:
    return None
  return {
    "sorm_label_accuracy": agree["sorm"] / total,
    "orm_label_accuracy": agree["orm"] / total,
    "sorm_first_negative_is_first_error": first_hits / first_total if first_total else None,
    "intermediate_steps": total,
  }
