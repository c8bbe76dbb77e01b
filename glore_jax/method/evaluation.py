"""Evaluation arithmetic on plain arrays: reranking, gating, bootstrap intervals, step-level metrics.

The evaluate stage produces scores and correctness flags; everything after that is here, model-free,
so every number in the results table can be checked by hand.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
  "ROWS",
  "Reranked",
  "accuracy_row",
  "auroc",
  "bootstrap_ci",
  "calibration_bins",
  "choose_where_threshold",
  "expected_calibration_error",
  "first_step_below",
  "gated_rerank",
  "localisation",
  "majority_vote",
  "markdown_table",
  "oracle",
  "paired_difference",
  "reliability_diagram",
  "rerank",
  "row_descriptions",
  "step_level_metrics",
  "within_question_pairs",
]


def row_descriptions(best_of: int) -> dict[str, str]:
  """Rows of the main table, in print order, with what each one means; N = `best_of` samples."""
  n = best_of
  return {
    "greedy": "greedy draft D",
    "mean_sample": f"mean accuracy of the {n} policy samples (expected random pick)",
    f"random_of_{n}": f"one of the {n} samples, picked at random (seeded)",
    f"majority_of_{n}": f"majority vote over the {n} samples' answers",
    f"likelihood_of_{n}": f"the sample with the highest mean token log-prob under the policy",
    f"best_of_{n}": f"best of {n} policy samples, ORM rerank",
    "global": "global refinement G",
    "local": "local refinement L",
    "draft_global": "{D, G}, ORM rerank",
    "draft_local": "{D, L}, ORM rerank",
    "draft_global_local": "{D, G, L}, ORM rerank",
    "orm_gated": "refine only if ORM(D) < threshold, then rerank {D, G, L}",
    "oracle": "oracle: any of D, G, L correct",
    f"best_of_{n}+lik": f"best of {n} samples, ORM + policy likelihood rerank",
    "draft_global+lik": "{D, G}, ORM + policy likelihood rerank",
    "draft_local+lik": "{D, L}, ORM + policy likelihood rerank",
    "draft_global_local+lik": "{D, G, L}, ORM + policy likelihood rerank",
  }


ROWS: dict[str, str] = row_descriptions(3)  # the default evaluate.best_of
STEP_LEVEL_MODELS = ("orm", "sorm")


@dataclasses.dataclass(frozen=True)
class Reranked:
  """chosen[q]: index of the picked candidate; correct[q]: whether it is correct;
  refined[q]: whether the candidates were reranked (always True for plain `rerank`)."""

  chosen: list[int]
  correct: list[bool]
  refined: list[bool]

  @property
  def accuracy(self) -> float | None:
    return sum(self.correct) / len(self.correct) if self.correct else None


def _check_grid(scores: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]]) -> None:
  if len(scores) != len(correct):
    raise ValueError(
      f"scores and correct need one row per question: {len(scores)} != {len(correct)}"
    )
  for q, (s, c) in enumerate(zip(scores, correct)):
    if len(s) != len(c) or not s:
      raise ValueError(
        f"question {q}: {len(s)} scores for {len(c)} candidates "
        f"(need the same number, at least one)"
      )
    if any(math.isnan(x) for x in s):
      raise ValueError(f"question {q}: NaN score; the reward model output is broken")


def _argmax(xs: Sequence[float], among: Sequence[int]) -> int:
  """First index of the maximum among `among`: ties go to the earliest candidate (the draft)."""
  best = among[0]
  for i in among[1:]:
    if xs[i] > xs[best]:
      best = i
  return best


def rerank(
  scores: Sequence[Sequence[float]],
  correct: Sequence[Sequence[bool]],
  candidates: Sequence[int] | None = None,
) -> Reranked:
  """Pick the highest-scoring candidate per question (ties: the earliest one).

  `candidates` restricts the choice to some columns, e.g. [0, 1] for {D, G} out of [D, G, L].

  Args:
    scores: [question][candidate] reward-model scores.
    correct: [question][candidate] grades, same shape.
    candidates: the candidate columns to choose among; None: all.

  Raises:
    ValueError: `scores` and `correct` differ in shape, a question has no candidates, or a
      score is NaN.
  """
  _check_grid(scores, correct)
  chosen = []
  for s in scores:
    among = list(range(len(s))) if candidates is None else list(candidates)
    chosen.append(_argmax(s, among))
  return Reranked(chosen, [bool(c[i]) for c, i in zip(correct, chosen)], [True] * len(chosen))


def gated_rerank(
  scores: Sequence[Sequence[float]],
  correct: Sequence[Sequence[bool]],
  threshold: float,
  draft_index: int = 0,
) -> Reranked:
  """Keep the draft when the ORM trusts it (score >= threshold), else rerank all candidates.

  This is the "refine only when the ORM doubts the draft" row: it saves the refiners' work on
  drafts the ORM already believes, at the risk of keeping confidently wrong ones.

  Args:
    scores: [question][candidate] ORM scores (probabilities).
    correct: [question][candidate] grades, same shape.
    threshold: the draft's score at or above which it is kept.
    draft_index: the draft's column.

  Raises:
    ValueError: `scores` and `correct` differ in shape, a question has no candidates, or a
      score is NaN.
  """
  _check_grid(scores, correct)
  chosen, refined = [], []
  for s in scores:
    keep = s[draft_index] >= threshold
    chosen.append(draft_index if keep else _argmax(s, list(range(len(s)))))
    refined.append(not keep)
  return Reranked(chosen, [bool(c[i]) for c, i in zip(correct, chosen)], refined)


def oracle(correct: Sequence[Sequence[bool]]) -> list[bool]:
  """Whether any candidate is correct: the upper bound of any reranker."""
  return [any(bool(x) for x in c) for c in correct]


def bootstrap_ci(
  correct_per_question: Sequence[bool] | np.ndarray,
  num_resamples: int = 1000,
  seed: int = 0,
  confidence: float = 0.95,
) -> tuple[float, float]:
  """Percentile bootstrap interval of the accuracy: resample questions with replacement.

  Args:
    correct_per_question: one flag (or fraction) per question.
    num_resamples: bootstrap resamples.
    seed: the resampling seed.
    confidence: the interval's coverage, in (0, 1).

  Returns:
    (low, high) bounds of the accuracy.

  Raises:
    ValueError: no questions, num_resamples < 1, or confidence outside (0, 1).
  """
  x = np.asarray(correct_per_question, dtype=np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError("bootstrap_ci needs at least one question")
  if num_resamples < 1 or not 0 < confidence < 1:
    raise ValueError(
      f"need num_resamples >= 1 and 0 < confidence < 1, got {num_resamples}, {confidence}"
    )
  rng = np.random.default_rng(seed)
  means = np.empty(num_resamples)
  chunk = max(1, 2**22 // x.size)  # bound memory: at most ~4M indices at a time
  for start in range(0, num_resamples, chunk):
    stop = min(num_resamples, start + chunk)
    means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
  alpha = (1 - confidence) / 2
  lo, hi = np.quantile(means, [alpha, 1 - alpha])
  return float(lo), float(hi)


def accuracy_row(
  correct: Sequence[bool] | Reranked, *, num_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
  """{"accuracy", "n", "ci95": [lo, hi]} for one table row (None values when n = 0).

  Takes per-question correctness flags (or fractions, e.g. the share of a question's samples
  that are right), or a `Reranked` result (its `correct`).

  Args:
    correct: per-question flags or fractions, or a `Reranked`.
    num_resamples: bootstrap resamples for the interval.
    seed: the resampling seed.
  """
  if isinstance(correct, Reranked):
    correct = correct.correct
  n = len(correct)
  if n == 0:
    return {"accuracy": None, "n": 0, "ci95": [None, None]}
  lo, hi = bootstrap_ci(correct, num_resamples=num_resamples, seed=seed)
  return {"accuracy": sum(float(c) for c in correct) / n, "n": n, "ci95": [lo, hi]}


def first_step_below(scores: Sequence[float], threshold: float) -> int | None:
  """Where to refine: the first step whose SORM score is under the threshold (None: all fine).

  Args:
    scores: the SORM's probability per step.
    threshold: the probability under which a step is judged wrong.
  """
  for i, s in enumerate(scores):
    if s < threshold:
      return i
  return None


def majority_vote(answers: Sequence[Any], correct: Sequence[bool]) -> bool:
  """Whether the most common answer among samples is right (ties: the answer seen first).

  `answers` are comparable keys (e.g. normalised numbers); None (no answer) does not vote, and
  a question where no sample answers counts as wrong.

  Args:
    answers: one answer key per sample (None: no answer).
    correct: whether each sample's answer is right.
  """
  counts: dict[Any, int] = {}
  first_correct: dict[Any, bool] = {}
  for a, c in zip(answers, correct):
    if a is None:
      continue
    counts[a] = counts.get(a, 0) + 1
    first_correct.setdefault(a, bool(c))
  if not counts:
    return False
  best = max(counts.values())
  winner = next(a for a in counts if counts[a] == best)  # dicts keep first-seen order
  return first_correct[winner]


def paired_difference(
  a: Sequence[float],
  b: Sequence[float],
  num_resamples: int = 1000,
  seed: int = 0,
  confidence: float = 0.95,
) -> dict[str, Any]:
  """Mean of a - b over the same questions with a percentile bootstrap interval.

  Resampling questions (not the two rows independently) keeps the pairing, so the interval is
  that of the difference itself, much tighter than comparing two separate intervals.

  Args:
    a: per-question correctness of one row.
    b: per-question correctness of the other row, same questions in the same order.
    num_resamples: bootstrap resamples.
    seed: the resampling seed.
    confidence: the interval's coverage, in (0, 1).

  Raises:
    ValueError: `a` and `b` are empty or differ in length.
  """
  x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if x.shape != y.shape or x.size == 0:
    raise ValueError(f"paired_difference needs two equal, non-empty rows: {x.shape} vs {y.shape}")
  lo, hi = bootstrap_ci(x - y, num_resamples=num_resamples, seed=seed, confidence=confidence)
  return {"difference": float((x - y).mean()), "ci95": [lo, hi], "n": int(x.size)}


def within_question_pairs(
  scores: Sequence[float], labels: Sequence[bool], groups: Sequence[Any]
) -> dict[str, Any]:
  """Does a verifier check the work? Compared only within each question.

  pairwise: over every (right, wrong) pair of solutions of the same question, the fraction where
  the right one scores higher (ties count 1/2): 0.5 is a verifier that only knows which
  questions are hard. demeaned_auroc: AUROC after subtracting each question's mean score, over
  questions with both right and wrong solutions. pooled_auroc: plain AUROC over everything.

  Args:
    scores: one verifier score per solution.
    labels: whether each solution is right.
    groups: each solution's question key.
  """
  s = np.asarray(scores, np.float64)
  y = np.asarray(labels, bool)
  by_group: dict[Any, list[int]] = {}
  for i, g in enumerate(groups):
    by_group.setdefault(g, []).append(i)
  wins, pairs, kept = 0.0, 0, []
  centred = np.zeros_like(s)
  for idx in by_group.values():
    idx = np.asarray(idx)
    pos, neg = s[idx][y[idx]], s[idx][~y[idx]]
    if pos.size == 0 or neg.size == 0:
      continue
    diff = pos[:, None] - neg[None, :]
    wins += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
    pairs += diff.size
    centred[idx] = s[idx] - s[idx].mean()
    kept.extend(idx.tolist())
  kept_idx = np.asarray(kept, np.int64)
  return {
    "pairwise": wins / pairs if pairs else None,
    "pairs": pairs,
    "mixed_questions": sum(1 for i in by_group.values() if 0 < y[np.asarray(i)].sum() < len(i)),
    "demeaned_auroc": auroc(centred[kept_idx], y[kept_idx].astype(int)) if kept else None,
    "pooled_auroc": auroc(s, y.astype(int)) if s.size else None,
  }


def localisation(predicted: Sequence[int | None], truth: Sequence[int | None]) -> dict[str, Any]:
  """ProcessBench-style first-error localisation.

  On solutions with an error (truth not None): accuracy of predicting exactly its first wrong
  step. On flawless ones: accuracy of predicting "no error" (None). f1: their harmonic mean.

  Args:
    predicted: the predicted first wrong step per solution (None: no error).
    truth: the true first wrong step per solution (None: flawless).
  """
  wrong = [(p, t) for p, t in zip(predicted, truth) if t is not None]
  right = [p for p, t in zip(predicted, truth) if t is None]
  acc_wrong = sum(p == t for p, t in wrong) / len(wrong) if wrong else None
  acc_right = sum(p is None for p in right) / len(right) if right else None
  f1 = None
  if acc_wrong is not None and acc_right is not None:
    f1 = 0.0 if acc_wrong + acc_right == 0 else 2 * acc_wrong * acc_right / (acc_wrong + acc_right)
  return {
    "accuracy_on_wrong": acc_wrong,
    "accuracy_on_right": acc_right,
    "f1": f1,
    "n_wrong": len(wrong),
    "n_right": len(right),
  }


def choose_where_threshold(
  step_scores: Sequence[Sequence[float]],
  first_bad: Sequence[int | None],
  grid: Sequence[float] = tuple(round(0.05 * i, 2) for i in range(1, 20)),
) -> tuple[float, float | None]:
  """The threshold whose "first step below it" best localises `first_bad` (by F1), with that F1.

  Ties go to the threshold closest to 0.5 (the paper's default), then the lower one.

  Args:
    step_scores: [solution][step] SORM probabilities.
    first_bad: each solution's true first wrong step (None: flawless).
    grid: the thresholds to try.

  Returns:
    (best threshold, its F1); (0.5, None) when there is nothing to tune on.
  """
  best: tuple[float, float | None] = (0.5, None)
  best_key = None
  for t in grid:
    f1 = localisation([first_step_below(s, t) for s in step_scores], first_bad)["f1"]
    if f1 is None:
      continue
    key = (f1, -abs(t - 0.5), -t)
    if best_key is None or key > best_key:
      best, best_key = (float(t), f1), key
  return best


# --------------------------------------------------------------------------------------------
# Step-level metrics


def _flat(xs: Sequence[Any] | np.ndarray) -> np.ndarray:
  """Flatten ragged per-solution lists (or an array) into one float vector."""
  if isinstance(xs, np.ndarray):
    return xs.astype(np.float64).reshape(-1)
  out: list[float] = []
  for x in xs:
    if isinstance(x, (Sequence, np.ndarray)) and not isinstance(x, str):
      out.extend(float(v) for v in np.asarray(x).reshape(-1))
    else:
      out.append(float(x))
  return np.asarray(out, dtype=np.float64)


def _check_binary(probs: np.ndarray, labels: np.ndarray, what: str) -> None:
  if probs.shape != labels.shape:
    raise ValueError(f"{what}: {probs.size} probabilities for {labels.size} labels")
  if np.any((probs < 0) | (probs > 1)) or np.any(np.isnan(probs)):
    raise ValueError(f"{what}: probabilities must lie in [0, 1] (apply the sigmoid first)")
  if np.any((labels != 0) & (labels != 1)):
    raise ValueError(f"{what}: labels must be 0 or 1 (hard labels, not soft)")


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float | None:
  """Exact area under the ROC curve: P(score of a positive > score of a negative), ties 1/2.

  Computed from average ranks (Mann-Whitney U). None if only one class is present.

  Args:
    scores: one score per example (any scale).
    labels: 0 or 1 per example.

  Raises:
    ValueError: `scores` and `labels` differ in length, or a label is not 0 or 1.
  """
  s, y = _flat(scores), _flat(labels)
  if s.shape != y.shape:
    raise ValueError(f"auroc: {s.size} scores for {y.size} labels")
  n_pos = int((y == 1).sum())
  n_neg = int((y == 0).sum())
  if n_pos + n_neg != y.size:
    raise ValueError("auroc: labels must be 0 or 1")
  if n_pos == 0 or n_neg == 0:
    return None
  order = np.argsort(s, kind="stable")
  sorted_s = s[order]
  ranks = np.empty(s.size)
  # Average 1-based rank over each run of equal scores.
  starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
  ends = np.r_[starts[1:], s.size]
  for a, b in zip(starts, ends):
    ranks[order[a:b]] = (a + 1 + b) / 2
  u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


def calibration_bins(
  probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per equal-width bin: mean probability, fraction of positives, count (NaN where empty).

  Bin b holds b/bins <= p < (b+1)/bins; p = 1 goes to the last bin.

  Args:
    probs: predicted probabilities in [0, 1].
    labels: 0 or 1 per prediction.
    bins: the number of bins (>= 1).

  Returns:
    (mean probability, fraction positive, count), each of shape [bins].

  Raises:
    ValueError: bins < 1, lengths differ, a probability outside [0, 1] or a label not 0/1.
  """
  p, y = _flat(probs), _flat(labels)
  _check_binary(p, y, "calibration")
  if bins < 1:
    raise ValueError(f"bins must be >= 1, got {bins}")
  idx = np.minimum((p * bins).astype(np.int64), bins - 1)
  count = np.bincount(idx, minlength=bins).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    conf = np.bincount(idx, weights=p, minlength=bins) / count
    acc = np.bincount(idx, weights=y, minlength=bins) / count
  return conf, acc, count


def expected_calibration_error(
  probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, bins: int = 10
) -> float | None:
  """ECE = sum over bins of (bin count / N) * |fraction positive - mean probability|.

  Args:
    probs: predicted probabilities in [0, 1].
    labels: 0 or 1 per prediction.
    bins: the number of equal-width bins.

  Returns:
    The ECE, or None when there are no predictions.
  """
  conf, acc, count = calibration_bins(probs, labels, bins)
  total = count.sum()
  if total == 0:
    return None
  nonempty = count > 0
  return float((count[nonempty] / total * np.abs(acc[nonempty] - conf[nonempty])).sum())


def step_level_metrics(
  probs_per_step: Sequence[Any],
  labels_per_step: Sequence[Any],
  final_probs: Sequence[float],
  outcomes: Sequence[bool],
  threshold: float = 0.5,
) -> dict[str, Any]:
  """How well a reward model predicts rollout labels of steps and outcomes of solutions.

  step_accuracy: fraction of steps where (prob >= threshold) equals the hard label; auroc and ece
  over the same steps; final_accuracy: the same thresholded accuracy for final-answer
  probabilities against outcomes. Ragged per-solution lists are flattened.

  Args:
    probs_per_step: [solution][step] predicted probabilities (ragged).
    labels_per_step: [solution][step] hard rollout labels, same shape.
    final_probs: one final-answer probability per solution.
    outcomes: whether each solution is right.
    threshold: the probability at or above which a prediction counts as positive.
  """
  p, y = _flat(probs_per_step), _flat(labels_per_step)
  fp, fy = _flat(final_probs), _flat(outcomes)
  _check_binary(p, y, "steps")
  _check_binary(fp, fy, "final answers")
  return {
    "step_accuracy": float(((p >= threshold) == (y == 1)).mean()) if p.size else None,
    "final_accuracy": float(((fp >= threshold) == (fy == 1)).mean()) if fp.size else None,
    "auroc": auroc(p, y),
    "ece": expected_calibration_error(p, y) if p.size else None,
    "n_steps": int(p.size),
  }


# --------------------------------------------------------------------------------------------
# Outputs: reliability diagram and Markdown tables


def reliability_diagram(curves: Mapping[str, tuple[Any, Any]], path: Any, bins: int = 10) -> None:
  """Write a PNG: fraction of positives against mean predicted probability, one curve per model.

  Uses the Agg canvas directly (no pyplot state, no display needed); `path` may be any
  `etils.epath` path, gs:// included.

  Args:
    curves: {model name: (probabilities, labels)}.
    path: the PNG file to write (str or etils.epath path).
    bins: the number of equal-width bins.
  """
  from etils import epath
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(4.5, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
  for name, (probs, labels) in curves.items():
    conf, acc, count = calibration_bins(probs, labels, bins)
    ok = count > 0
    ece = expected_calibration_error(probs, labels, bins)
    label = name if ece is None else f"{name} (ECE {ece:.3f})"
    ax.plot(conf[ok], acc[ok], marker="o", label=label)
  ax.set(
    xlim=(0, 1),
    ylim=(0, 1),
    xlabel="mean predicted probability",
    ylabel="fraction of positive labels",
    title="Reliability on held-out steps",
  )
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(buf.getvalue())


def _pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 3) -> str:
  return "n/a" if x is None else f"{x:.{digits}f}"


def _signed(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:+.1f}"


def markdown_table(results: Mapping[str, Any]) -> str:
  """The final tables as Markdown: accuracy rows (in `ROWS` order, then any others) and, when
  present, the step-level ORM vs SORM table.

  Rows are read from results["rows"] if present, else from top-level keys whose value has an
  "accuracy" (the layout of `evaluate/results.json`).
  """
  rows = results.get("rows", results)
  described = row_descriptions(int(results.get("best_of", 3)))
  names = [k for k in described if k in rows]
  names += sorted(
    k for k, v in rows.items() if k not in described and isinstance(v, Mapping) and "accuracy" in v
  )
  lines = ["| method | | accuracy (%) | 95% CI (%) | n |", "|---|---|---:|---|---:|"]
  for k in names:
    r = rows[k]
    lo, hi = r.get("ci95") or [None, None]
    lines.append(
      f"| {k} | {described.get(k, '')} | {_pct(r['accuracy'])} | "
      f"[{_pct(lo)}, {_pct(hi)}] | {r.get('n', 'n/a')} |"
    )
  differences = results.get("differences")
  if differences:
    lines += ["", "| paired difference (same questions) | points | 95% CI (points) |",
              "|---|---:|---|"]
    for name, d in differences.items():
      lo, hi = d["ci95"]
      lines.append(f"| {name} | {_signed(d['difference'])} | [{_signed(lo)}, {_signed(hi)}] |")
  step = results.get("step_level")
  if step and any("auroc_truth" in r for r in step.values()):
    lines += [
      "",
      "| reward model (test questions) | step AUROC vs truth | step AUROC vs rollouts | "
      "final AUROC | within-question pairs | first-error F1 | steps |",
      "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in [m for m in STEP_LEVEL_MODELS if m in step]:
      r = step[m]
      loc = r.get("localisation") or {}
      lines.append(
        f"| {m} | {_num(r.get('auroc_truth'))} | {_num(r.get('auroc'))} | "
        f"{_num(r.get('final_auroc'))} | {_num(r.get('within_question_pairs'))} | "
        f"{_num(loc.get('f1'))} | {r.get('n_steps', 'n/a')} |"
      )
  elif step:
    lines += [
      "",
      "| reward model | step accuracy (%) | final accuracy (%) | step AUROC | step ECE | steps |",
      "|---|---:|---:|---:|---:|---:|",
    ]
    models = [m for m in STEP_LEVEL_MODELS if m in step]
    models += sorted(m for m in step if m not in STEP_LEVEL_MODELS)
    for m in models:
      r = step[m]
      lines.append(
        f"| {m} | {_pct(r.get('step_accuracy'))} | "
        f"{_pct(r.get('final_accuracy'))} | {_num(r.get('auroc'))} | "
        f"{_num(r.get('ece'))} | {r.get('n_steps', 'n/a')} |"
      )
  return "\n".join(lines) + "\n"
