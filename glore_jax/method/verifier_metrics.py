"""How well a verifier (ORM or SORM) judges solutions and steps: AUROC, calibration, accuracy
against rollout labels, within-question pairs and first-error localisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
  "auroc",
  "calibration_bins",
  "choose_where_threshold",
  "expected_calibration_error",
  "first_step_below",
  "localisation",
  "step_level_metrics",
  "within_question_pairs",
]


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
# Step-level metrics: probabilities against hard labels


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
