"""First-error search against scripted oracles whose first failing prefix is known, and against
exhaustive labeling of the same rollouts (exact on monotone rollouts, counted differences on
noisy ones)."""

from __future__ import annotations

import math
import random

import pytest

from glore_jax.method.first_error_search import (
  FirstErrorSearch,
  compare_hard_labels,
  evaluation_bounds,
  first_negative,
  gallop_evaluation_bound,
  non_monotone,
  search_from_rollouts,
  search_with_oracle,
)
from glore_jax.method.labels import Rollout, StepRollouts, sorm_labels

K = 4


def monotone_oracle(boundary: int, calls: list[int], k: int = K):
  """Prefixes before `boundary` have 1..k successes, the rest none; logs every call."""

  def oracle(i: int) -> tuple[int, int]:
    calls.append(i)
    return (1 + i % k if i < boundary else 0), k

  return oracle


@pytest.mark.parametrize("n", list(range(1, 34)))
def test_search_finds_the_first_failing_prefix_of_an_incorrect_solution(n):
  lo, hi = evaluation_bounds(n, outcome=False)
  assert (lo, hi) == ((0, 0) if n == 1 else (math.floor(math.log2(n)), math.ceil(math.log2(n))))
  counts = []
  for boundary in range(n):  # the last prefix (the wrong solution itself) is always negative
    calls: list[int] = []
    found = search_with_oracle(n, False, monotone_oracle(boundary, calls))
    assert found.first_negative == boundary
    assert found.hard == [1] * boundary + [0] * (n - boundary)
    assert found.evaluations == calls and len(set(calls)) == len(calls)
    assert all(0 <= i < n - 1 for i in calls)  # never rolls out from the whole solution
    assert lo <= len(calls) <= hi
    counts.append(len(calls))
  if n & (n - 1) == 0:  # a power of two: exactly log2 n evaluations wherever the error is
    assert set(counts) == {int(math.log2(n))}
  # n candidate boundaries need ceil(log2 n) bits for some of them (the worst case is tight)
  assert max(counts) == hi


@pytest.mark.parametrize("n", [0, 1, 2, 5, 16])
def test_a_correct_solution_needs_no_rollouts(n):
  calls: list[int] = []
  found = search_with_oracle(n, True, monotone_oracle(0, calls))
  assert calls == [] and evaluation_bounds(n, True) == (0, 0)
  assert found.hard == [1] * n and found.first_negative == n
  assert found.measured == [False] * (n - 1) + [True] * (n > 0)  # the last one is the outcome


def test_soft_labels_where_measured_and_flags_for_inferred():
  # 8 steps, boundary 5: bisection asks 3 (success 1/4), 5 (0/4), 4 (success 4/4)
  succ = {3: 1, 5: 0, 4: 4}
  found = search_with_oracle(8, False, lambda i: (succ[i], 4))
  assert found.evaluations == [3, 5, 4]
  assert found.hard == [1, 1, 1, 1, 1, 0, 0, 0]
  assert found.soft == [1.0, 1.0, 1.0, 0.25, 1.0, 0.0, 0.0, 0.0]
  assert found.measured == [False, False, False, True, True, True, False, True]
  # the boundary pair is always measured: a success right before it, a failure at it
  assert found.measured[found.first_negative - 1] and found.soft[found.first_negative - 1] > 0


def test_search_protocol_errors():
  s = FirstErrorSearch(4, False)
  with pytest.raises(ValueError, match="asked for 1"):
    s.record(2, 1, 4)
  with pytest.raises(ValueError, match="successes"):
    s.record(1, 5, 4)
  with pytest.raises(ValueError, match="not finished"):
    s.labels()
  with pytest.raises(ValueError, match="num_steps"):
    FirstErrorSearch(-1, False)


def _solution(pattern: list[int], outcome: bool, k: int = K) -> StepRollouts:
  """Rollouts per prefix: pattern[i] of k correct (no numbers in the steps, so consistency
  constrains nothing); the last step has none."""
  steps = [f"step {chr(97 + i)}" for i in range(len(pattern) + 1)]
  rollouts = [[Rollout(f"r{j}", j < s) for j in range(k)] for s in pattern] + [[]]
  return StepRollouts(steps=steps, outcome=outcome, rollouts=rollouts)


def _exhaustive(sol: StepRollouts, propagate: bool = True) -> list[int]:
  return sorm_labels(sol, consistency=True, propagate_positive=propagate).hard


def test_on_monotone_rollouts_search_and_exhaustive_labels_agree_exactly():
  rng = random.Random(0)
  for _ in range(400):
    n = rng.randint(1, 12)
    outcome = rng.random() < 0.3
    boundary = n if outcome else rng.randint(0, n - 1)
    pattern = [rng.randint(1, K) if i < boundary else 0 for i in range(n - 1)]
    if outcome:  # a correct solution's prefixes may fail too: propagation makes them positive
      pattern = [rng.randint(0, K) for _ in range(n - 1)]
    sol = _solution(pattern, outcome)
    found = search_from_rollouts(sol, consistency=True)
    exhaustive = sorm_labels(sol, consistency=True, propagate_positive=True)
    assert found.hard == exhaustive.hard, (pattern, outcome)
    # measured soft labels are the exhaustive ones
    assert all(found.soft[i] == exhaustive.soft[i] for i in range(n) if found.measured[i])
    assert found.first_negative == first_negative(exhaustive.hard)
    assert len(found.evaluations) <= evaluation_bounds(n, outcome)[1]


def test_noisy_rollouts_disagreement_is_counted():
  # a failure at prefix 3 before a success at prefix 5: exhaustive labels (propagated) are
  # positive up to 5; bisection on 8 steps asks 3 (fail), 1 (ok), 2 (ok) and stops at 3.
  noisy = _solution([2, 1, 3, 0, 0, 1, 0], outcome=False)
  clean = _solution([2, 1, 3, 0, 0, 0, 0], outcome=False)
  assert non_monotone(_exhaustive(noisy, propagate=False))
  assert not non_monotone(_exhaustive(clean, propagate=False))
  searched = [search_from_rollouts(s, consistency=True).hard for s in (noisy, clean)]
  assert searched[0] == [1, 1, 1, 0, 0, 0, 0, 0]
  assert _exhaustive(noisy) == [1, 1, 1, 1, 1, 1, 0, 0]
  report = compare_hard_labels(searched, [_exhaustive(noisy), _exhaustive(clean)])
  assert report == {
    "steps": 16,
    "solutions": 2,
    "disagreeing_steps": 3,
    "disagreeing_solutions": 1,
    "search_negative_exhaustive_positive": 3,
    "search_positive_exhaustive_negative": 0,
    "step_agreement": 1 - 3 / 16,
    "solution_agreement": 0.5,
  }


def test_with_random_noise_the_search_is_never_more_positive_than_exhaustive():
  rng = random.Random(1)
  searched, exhaustive, noisy = [], [], 0
  for _ in range(500):
    n = rng.randint(1, 10)
    sol = _solution([rng.choice([0, 0, 1, 3]) for _ in range(n - 1)], outcome=rng.random() < 0.3)
    searched.append(search_from_rollouts(sol, consistency=True).hard)
    exhaustive.append(_exhaustive(sol))
    noisy += non_monotone(_exhaustive(sol, propagate=False))
  report = compare_hard_labels(searched, exhaustive)
  assert report["search_positive_exhaustive_negative"] == 0
  assert 0 < report["disagreeing_solutions"] <= noisy  # only noisy solutions can disagree
  assert report["disagreeing_steps"] == report["search_negative_exhaustive_positive"]


def test_replay_with_fewer_rollouts_uses_the_first_k():
  sol = _solution([0, 0, 0], outcome=False)
  sol.rollouts[0][3] = Rollout("late", True)  # only the 4th rollout of prefix 0 succeeds
  assert search_from_rollouts(sol, consistency=True, num_rollouts=4).hard == [1, 0, 0, 0]
  k2 = search_from_rollouts(sol, consistency=True, num_rollouts=2)
  assert k2.hard == [0, 0, 0, 0] and k2.soft[0] == 0.0


def test_compare_rejects_mismatched_inputs():
  with pytest.raises(ValueError, match="same solutions"):
    compare_hard_labels([[1]], [])
  with pytest.raises(ValueError, match="solution 0"):
    compare_hard_labels([[1, 0]], [[1]])


@pytest.mark.parametrize("n", list(range(1, 40)))
def test_gallop_finds_the_first_failing_prefix_within_its_bound(n):
  for boundary in range(n):
    calls: list[int] = []
    found = search_with_oracle(n, False, monotone_oracle(boundary, calls), strategy="gallop")
    assert found.first_negative == boundary
    assert found.hard == [1] * boundary + [0] * (n - boundary)
    assert len(set(calls)) == len(calls) and all(0 <= i < n - 1 for i in calls)
    assert len(calls) <= gallop_evaluation_bound(n, False, boundary)
    if n > 1:
      # probes 0, 1, 3, 7, ... (capped below n-1) until the first failure
      probes = [min(2**j - 1, n - 2) for j in range(n)]
      first_fail = next(j for j, p in enumerate(probes) if p >= boundary or p == n - 2)
      assert calls[: first_fail + 1] == probes[: first_fail + 1]
  if n > 1:  # an unrecoverable first step costs one evaluation
    assert (
      len(search_with_oracle(n, False, monotone_oracle(0, []), strategy="gallop").evaluations) == 1
    )
  # the bound is reached: boundary 2 on a long solution probes 0, 1, 3 then bisects to 2
  if n >= 6:
    calls = []
    search_with_oracle(n, False, monotone_oracle(2, calls), strategy="gallop")
    assert calls == [0, 1, 3, 2] and gallop_evaluation_bound(n, False, 2) == 4


def test_gallop_and_bisect_agree_with_exhaustive_on_monotone_rollouts():
  rng = random.Random(2)
  for _ in range(300):
    n = rng.randint(1, 12)
    boundary = rng.randint(0, n - 1)
    sol = _solution([rng.randint(1, K) if i < boundary else 0 for i in range(n - 1)], False)
    want = _exhaustive(sol)
    for strategy in ("bisect", "gallop"):
      assert search_from_rollouts(sol, consistency=True, strategy=strategy).hard == want


def test_unknown_strategy_is_rejected():
  with pytest.raises(ValueError, match="strategy='linear'"):
    FirstErrorSearch(3, False, "linear")
