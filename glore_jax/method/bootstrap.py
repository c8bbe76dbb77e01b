"""Percentile bootstrap intervals over questions: one row's accuracy, and the paired difference
of two rows on the same questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
  "bootstrap_ci",
  "paired_difference",
]


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
