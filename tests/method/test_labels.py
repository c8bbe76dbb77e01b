"""SORM/ORM label rules on hand-made rollouts whose right labels are known."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from glore_jax.method.labels import (
  Rollout,
  StepLabels,
  StepRollouts,
  balance_by_step_index,
  intermediate_result,
  is_consistent,
  label_statistics,
  numbers_in,
  orm_labels,
  sorm_labels,
)

R, W = True, False  # a correct / wrong rollout


def ro(text: str, correct: bool) -> Rollout:
  return Rollout(text, correct)


# --- intermediate results and consistency ----------------------------------------------------


@pytest.mark.parametrize(
  "step, result",
  [
    ("3*12=36 apples", "36"),
    ("She buys 3*12=<<3*12=36>>36 apples.", "36"),  # calculator marks removed, final "." dropped
    ("He earns 1,200 dollars", "1200"),
    ("Each costs $2.50 now", "2.5"),
    ("The mean is 7.0", "7"),
    ("10-5=5 left", "5"),  # subtraction, not a negative number
    ("The change is -3", "-3"),
    ("#### 72", "72"),
    ("Add them up", None),
    ("Half is .5", "0.5"),
  ],
)
def test_intermediate_result(step, result):
  assert intermediate_result(step) == result


def test_numbers_in_respects_number_boundaries():
  found = numbers_in("x2 and 3rd and 1,234,567 and 12,34")
  assert [str(x) for x in found] == ["3", "1234567", "12", "34"]


@pytest.mark.parametrize(
  "step, rollout, expected",
  [
    ("3*12=36 apples", "36*2=72\n#### 72", True),
    ("3*12=36 apples", "360/2=180\n#### 180", False),  # "36" only as part of a longer number
    ("3*12=36 apples", "2*136=272\n#### 272", False),
    ("3*12=36 apples", "3.6*10=36.0\n#### 36", True),  # compared as values, 36.0 == 36
    ("3*12=36 apples", "<<36*2=72>>72\n#### 72", False),  # only inside a calculator mark
    ("Total: $1,200", "1200/4=300\n#### 300", True),  # commas do not matter
    ("Total: 12.5", "12.50*2=25", True),
    ("Think about the apples", "#### 5", True),  # no number: nothing to build on
  ],
)
def test_is_consistent(step, rollout, expected):
  assert is_consistent(step, rollout) is expected


# --- sorm_labels -----------------------------------------------------------------------------


def solution() -> StepRollouts:
  """4 steps, incorrect; K = 4 rollouts per prefix.

  P_0: 2 correct rollouts, one of which ignores step 0's result (12)  -> 2/4, consistent 1/4
  P_1: 1 correct rollout, inconsistent with 20                        -> 1/4, consistent 0/4
  P_2: no correct rollout                                             -> 0/4
  P_3: the full (wrong) solution                                      -> outcome 0
  """
  steps = ["3*4=12 eggs", "12+8=20 eggs", "20*2=41 eggs", "#### 41"]
  return StepRollouts(
    steps=steps,
    outcome=False,
    rollouts=[
      [
        ro("12+8=20\n20*2=40\n#### 40", R),
        ro("#### 40", R),
        ro("#### 7", W),
        ro("12*3=36\n#### 36", W),
      ],
      [ro("#### 40", R), ro("20+1=21\n#### 21", W), ro("#### 9", W), ro("#### 8", W)],
      [ro("#### 82", W), ro("#### 41", W), ro("#### 1", W), ro("#### 2", W)],
      [],
    ],
  )


def test_sorm_labels_without_postprocessing():
  labels = sorm_labels(solution(), consistency=False, propagate_positive=False)
  assert labels == StepLabels(hard=[1, 1, 0, 0], soft=[0.5, 0.25, 0.0, 0.0])


def test_sorm_labels_with_consistency():
  labels = sorm_labels(solution(), consistency=True, propagate_positive=False)
  assert labels == StepLabels(hard=[1, 0, 0, 0], soft=[0.25, 0.0, 0.0, 0.0])


def test_last_step_is_the_outcome_even_with_rollouts_there():
  sol = solution()
  sol = dataclasses.replace(sol, outcome=True, rollouts=sol.rollouts[:-1] + [[ro("#### 1", W)]])
  assert sorm_labels(sol, consistency=False, propagate_positive=False).hard[-1] == 1
  assert sorm_labels(sol, consistency=False, propagate_positive=False).soft[-1] == 1.0


def test_positive_propagation_fills_every_earlier_step_and_keeps_soft():
  # P_2 is positive, P_0 and P_1 are not: propagation makes them positive.
  sol = StepRollouts(
    steps=["a=1", "b=2", "c=3", "d=4", "#### 9"],
    outcome=False,
    rollouts=[
      [ro("#### 9", W), ro("#### 8", W)],
      [ro("#### 9", W), ro("#### 8", W)],
      [ro("3+1=4\n#### 10", R), ro("#### 8", W)],
      [ro("#### 9", W), ro("#### 8", W)],
      [],
    ],
  )
  off = sorm_labels(sol, consistency=False, propagate_positive=False)
  on = sorm_labels(sol, consistency=False, propagate_positive=True)
  assert off.hard == [0, 0, 1, 0, 0]
  assert on.hard == [1, 1, 1, 0, 0]
  assert on.soft == off.soft == [0.0, 0.0, 0.5, 0.0, 0.0]
  # Consistency removes the only success (it does not mention 3), so nothing propagates.
  rollouts = sol.rollouts[:2] + [[ro("#### 10", R)]] + sol.rollouts[3:]
  sol2 = dataclasses.replace(sol, rollouts=rollouts)
  assert sorm_labels(sol2, consistency=True, propagate_positive=True).hard == [0, 0, 0, 0, 0]


def test_correct_solution_propagates_from_its_outcome():
  sol = StepRollouts(
    steps=["a=1", "b=2", "#### 3"],
    outcome=True,
    rollouts=[[ro("#### 4", W)], [ro("#### 4", W)], []],
  )
  assert sorm_labels(sol, consistency=False, propagate_positive=False).hard == [0, 0, 1]
  assert sorm_labels(sol, consistency=False, propagate_positive=True).hard == [1, 1, 1]


def test_orm_labels_are_the_outcome_everywhere():
  assert orm_labels(solution()) == StepLabels([0, 0, 0, 0], [0.0, 0.0, 0.0, 0.0])
  sol = dataclasses.replace(solution(), outcome=True)
  assert orm_labels(sol) == StepLabels([1, 1, 1, 1], [1.0, 1.0, 1.0, 1.0])


def test_bad_inputs_say_what_is_wrong():
  with pytest.raises(ValueError, match="one list per step"):
    StepRollouts(steps=["a", "b"], outcome=True, rollouts=[[]])
  with pytest.raises(ValueError, match="step 0 of 2 has no rollouts"):
    sorm_labels(
      StepRollouts(["a", "b"], True, [[], []]), consistency=False, propagate_positive=False
    )


def test_records_round_trip_through_json():
  sol = solution()
  assert StepRollouts.from_json(json.loads(json.dumps(dataclasses.asdict(sol)))) == sol
  lab = sorm_labels(sol, consistency=False, propagate_positive=False)
  assert StepLabels.from_json(json.loads(json.dumps(dataclasses.asdict(lab)))) == lab


# --- balancing ---------------------------------------------------------------------------------

LABELS = [
  [1, 1, 0],
  [1, 0, 0],
  [1, 1, 1],
  [0, 0],
  [1, 0, 0, 0],
  [1],
]
# index 0: 5 pos, 1 neg -> keep 1 + 1; index 1: 2 pos, 3 neg -> 2 + 2;
# index 2: 1 pos, 3 neg -> 1 + 1; index 3: 0 pos, 1 neg -> none.
EXPECTED_KEPT = {0: (1, 1), 1: (2, 2), 2: (1, 1), 3: (0, 0)}


def kept_counts(labels, mask):
  c = Counter()
  for row, keep in zip(labels, mask):
    assert len(row) == len(keep)
    for j, (y, k) in enumerate(zip(row, keep)):
      c[(j, y)] += k
  return {j: (c[(j, 1)], c[(j, 0)]) for j in range(4)}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_balancing_keeps_min_of_each_class_per_index(seed):
  mask = balance_by_step_index(LABELS, seed=seed)
  assert kept_counts(LABELS, mask) == EXPECTED_KEPT
  assert mask[4][3] is False  # index 3 has a negative and no positive
  # The only negative at index 0 and the only positive at index 2 are always kept.
  assert mask[3][0] and mask[2][2]


def test_balancing_is_deterministic_and_seeded():
  masks = {seed: balance_by_step_index(LABELS, seed=seed) for seed in range(8)}
  assert balance_by_step_index(LABELS, seed=5) == masks[5]
  assert len({json.dumps(m) for m in masks.values()}) > 1  # the seed matters


def test_balancing_with_keys_ignores_input_order():
  keys = ["a", "b", "c", "d", "e", "f"]
  mask = balance_by_step_index(LABELS, seed=3, keys=keys)
  rev = balance_by_step_index(LABELS[::-1], seed=3, keys=keys[::-1])
  assert rev[::-1] == mask


def test_balancing_rejects_soft_labels():
  with pytest.raises(ValueError, match="0 or 1"):
    balance_by_step_index([[0.5]], seed=0)


# --- statistics ----------------------------------------------------------------------------------


def test_label_statistics_numbers():
  labels = [
    StepLabels([1, 1, 0], [1.0, 0.5, 0.0]),  # incorrect: 2 of 3 disagree with outcome 0
    StepLabels([0, 1, 1], [0.0, 0.5, 1.0]),  # correct: 1 of 3 disagrees with outcome 1
    StepLabels([0, 0], [0.0, 0.0]),
  ]  # incorrect: both agree
  outcomes = [False, True, False]
  keep = [[True, False, False], [True, True, True], [False, False]]
  stats = label_statistics(labels, outcomes, keep=keep)
  assert stats["num_solutions"] == 3
  assert stats["num_correct_solutions"] == 1
  assert stats["num_steps"] == 8
  assert stats["positives_per_index"] == [1, 2, 1]
  assert stats["negatives_per_index"] == [2, 1, 1]
  assert stats["mean_soft_per_index"] == [pytest.approx(1 / 3), pytest.approx(1 / 3), 0.5]
  assert stats["positive_fraction"] == 4 / 8
  assert stats["agreement_with_outcome"] == 5 / 8  # 1 of 3 + 2 of 3 + 2 of 2
  assert stats["agreement_on_correct"] == 2 / 3
  assert stats["agreement_on_incorrect"] == 3 / 5
  assert stats["kept_positives_per_index"] == [1, 1, 1]
  assert stats["kept_negatives_per_index"] == [1, 0, 0]
  assert stats["num_kept"] == 4
  json.dumps(stats)  # JSON-ready
