"""The label-budget benchmark's arithmetic (benchmarks/label_budget.py) on hand-made records."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "label_budget.py"
_spec = importlib.util.spec_from_file_location("label_budget", _PATH)
lb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lb)


def test_label_quality_counts_intermediate_steps_and_first_errors():
  # A: labels [1,0,|0], truth sound [1,0], first wrong step 1 -> 2/2 steps, first error found.
  # B: labels [0,0,|0], truth sound [1,1], first wrong step 2 = the answer line -> 0/2 steps,
  #    not an intermediate error. C: no ground truth -> skipped.
  q = lb.label_quality([[1, 0, 0], [0, 0, 0], [1, 1]], [([1, 0], 1), ([1, 1], 2), None])
  assert q == {
    "step_accuracy": 0.5,
    "intermediate_steps": 4,
    "first_error_accuracy": 1.0,
    "solutions_with_intermediate_error": 1,
    "exact_solutions": 0.5,
  }


def _record(pattern, outcome, tokens=10):
  """Rollouts per prefix: `pattern[i]` is the list of correct flags (no numbers in the steps, so
  consistency constrains nothing); every rollout has `tokens` tokens plus its prefix index."""
  steps = [f"step {chr(97 + i)}" for i in range(len(pattern) + 1)]
  rollouts = [
    [{"text": f"r{j}", "correct": c, "num_tokens": tokens + i} for j, c in enumerate(p)]
    for i, p in enumerate(pattern)
  ] + [[]]
  return {"steps": steps, "outcome": outcome, "rollouts": rollouts}


def test_replay_costs_and_labels_per_mode():
  records = [
    # wrong, 4 steps, prefixes 0 and 1 completable by the 2nd rollout only, 2 not: boundary 2
    _record([[False, True], [False, True], [False, False]], False),
    _record([[False, False], [True, True], [False, False]], True),  # correct: no search
  ]
  k2 = lb.replay(records, consistency=True, k=2)
  assert k2["exhaustive"]["labels"] == [[1, 1, 0, 0], [1, 1, 1, 1]]
  assert k2["exhaustive"]["rollouts"] == 12
  assert k2["exhaustive"]["tokens"] == 2 * (10 + 11 + 12) * 2
  # bisect asks prefix 1 (success) then 2 (fail); gallop asks 0, 1, 2
  assert k2["bisect"]["labels"] == k2["gallop"]["labels"] == k2["exhaustive"]["labels"]
  assert (k2["bisect"]["rollouts"], k2["bisect"]["tokens"]) == (4, 2 * 11 + 2 * 12)
  assert (k2["gallop"]["rollouts"], k2["gallop"]["tokens"]) == (6, 2 * (10 + 11 + 12))
  assert k2["floor_tokens"] == 2 * 11 + 2 * 12  # prefixes 1 and 2 of the wrong solution
  assert k2["non_monotone"] == 1  # the correct one: [0, 1, 0, 1] before propagation
  # with K = 1 the first rollouts all fail: boundary 0 everywhere but the correct one's end
  k1 = lb.replay(records, consistency=True, k=1)
  assert k1["exhaustive"]["labels"][0] == [0, 0, 0, 0]
  assert k1["bisect"]["tokens"] == 11 + 10 and k1["gallop"]["tokens"] == 10


def test_paired_auroc_difference():
  a = [([0.9, 0.2], [1, 0]), ([0.8, 0.1], [1, 0]), ([0.3, 0.4], [1, 0])]
  same = lb.paired_auroc_difference(a, a, resamples=50)
  assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]
  flipped = [([1 - p for p in s], y) for s, y in a]
  diff = lb.paired_auroc_difference(a, flipped, resamples=50)
  assert diff["difference"] == pytest.approx(
    lb.auroc([0.9, 0.2, 0.8, 0.1, 0.3, 0.4], [1, 0] * 3)
    - lb.auroc([0.1, 0.8, 0.2, 0.9, 0.7, 0.6], [1, 0] * 3)
  )
  with pytest.raises(ValueError, match="same solutions"):
    lb.paired_auroc_difference(a, a[:2])
