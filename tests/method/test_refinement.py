"""Refiner training data on hand-made rollouts: right pairs, right triples, marker in place."""

from __future__ import annotations

import pytest

from glore_jax.data.prompts import PromptFormat
from glore_jax.data.steps import join_steps
from glore_jax.method.labels import Rollout, StepLabels, StepRollouts, sorm_labels
from glore_jax.method.refinement import (
  GlobalPair,
  LocalTriple,
  first_drop,
  global_pairs,
  local_triples,
)

R, W = True, False


def sol(steps, outcome, rollouts=None):
  return StepRollouts(list(steps), outcome, rollouts or [[] for _ in steps])


def labels(hard):
  return StepLabels(list(hard), [float(h) for h in hard])


# --- global pairs --------------------------------------------------------------------------------

WRONG_A = ["3*4=12", "12+8=21", "#### 21"]
WRONG_B = ["3+4=7", "#### 7"]
RIGHT_C = ["3*4=12", "12+8=20", "#### 20"]
RIGHT_D = ["12+8=20", "#### 20"]


def test_global_pairs_pair_each_incorrect_with_a_correct_solution():
  problems = {
    "p1": [
      sol(WRONG_A, False),
      sol(RIGHT_C, True),
      sol(WRONG_B, False),
      sol(WRONG_A, False),
      sol(RIGHT_D, True),
    ],
    "p2": [sol(WRONG_B, False)],  # no correct solution
    "p3": [sol(RIGHT_C, True)],  # nothing to fix
  }
  pairs = global_pairs(problems, seed=0)
  assert all(isinstance(p, GlobalPair) and p.problem_id == "p1" for p in pairs)
  # The duplicate WRONG_A gives one pair; the two drafts get the two different targets.
  assert sorted(tuple(p.draft_steps) for p in pairs) == sorted([tuple(WRONG_A), tuple(WRONG_B)])
  assert sorted(tuple(p.target_steps) for p in pairs) == sorted([tuple(RIGHT_C), tuple(RIGHT_D)])
  assert pairs.counts == {
    "pairs": 2,
    "correct_draft_pairs": 0,
    "questions_with_pairs": 1,
    "questions_without_correct": 1,
    "questions_without_incorrect": 1,
  }


def test_global_pairs_cap_seed_and_order_independence():
  problems = {"p1": [sol(WRONG_A, False), sol(WRONG_B, False), sol(RIGHT_C, True)]}
  capped = global_pairs(problems, seed=0, max_pairs_per_question=1)
  assert len(capped) == 1 and capped.counts["pairs"] == 1
  assert capped[0].target_steps == RIGHT_C
  shuffled = {"p1": problems["p1"][::-1]}
  for seed in range(5):
    assert global_pairs(shuffled, seed=seed) == global_pairs(problems, seed=seed)
  # Across seeds, the capped pair draws both drafts.
  drafts = {
    tuple(global_pairs(problems, seed=s, max_pairs_per_question=1)[0].draft_steps)
    for s in range(16)
  }
  assert drafts == {tuple(WRONG_A), tuple(WRONG_B)}
  with pytest.raises(ValueError, match="max_pairs_per_question"):
    global_pairs(problems, max_pairs_per_question=-1)


def test_correct_draft_pairs_teach_keeping_right_drafts():
  problems = {
    "p1": [sol(WRONG_A, False), sol(RIGHT_C, True), sol(RIGHT_D, True)],
    "p3": [sol(RIGHT_C, True)],  # nothing to fix: its one right solution maps to itself
  }
  plain = global_pairs(problems, seed=0)
  pairs = global_pairs(problems, seed=0, correct_draft_pairs=2)
  assert pairs.counts["correct_draft_pairs"] == 3 and pairs.counts["pairs"] == len(pairs) == 4
  keep = [p for p in pairs if p not in plain]
  assert all(p.target_steps in (RIGHT_C, RIGHT_D) for p in keep)
  p1 = {(tuple(p.draft_steps), tuple(p.target_steps)) for p in keep if p.problem_id == "p1"}
  assert p1 == {(tuple(RIGHT_C), tuple(RIGHT_D)), (tuple(RIGHT_D), tuple(RIGHT_C))}  # another one
  assert [(p.draft_steps, p.target_steps) for p in keep if p.problem_id == "p3"] == [
    (RIGHT_C, RIGHT_C)
  ]
  assert [p for p in pairs if p.draft_steps not in (RIGHT_C, RIGHT_D)] == list(plain)
  assert len(global_pairs(problems, seed=0, correct_draft_pairs=1)) == 3
  with pytest.raises(ValueError, match="correct_draft_pairs"):
    global_pairs(problems, correct_draft_pairs=-1)


# --- local triples ---------------------------------------------------------------------------------


def test_first_drop():
  assert first_drop([1, 1, 0, 0]) == 1
  assert first_drop([0, 1, 0]) == 1
  assert first_drop([1, 0, 1, 0]) == 0
  assert first_drop([0, 0]) is None
  assert first_drop([1, 1]) is None
  assert first_drop([]) is None


DRAFT = ["3*4=12 eggs", "12+8=21 eggs", "21*2=42 eggs", "#### 42"]
DRAFT_ROLLOUTS = [
  # From P_0 ("3*4=12 eggs"): one correct consistent, one correct that ignores 12, one wrong.
  [
    Rollout("12+8=20 eggs\n20*2=40 eggs\n#### 40", R),
    Rollout("#### 40", R),
    Rollout("12+9=21\n#### 42", W),
  ],
  [Rollout("21*2=42\n#### 42", W), Rollout("#### 43", W)],
  [Rollout("#### 42", W), Rollout("#### 41", W)],
  [],
]
CORRECT = ["3*4=12", "12+8=20", "20*2=40", "#### 40"]


def test_local_triple_marks_the_first_step_after_the_last_good_prefix():
  draft = sol(DRAFT, False, DRAFT_ROLLOUTS)
  lab = sorm_labels(draft, consistency=True, propagate_positive=True)
  assert lab.hard == [1, 0, 0, 0]
  triples = local_triples({"p1": [(draft, lab)]}, consistency=True, seed=0)
  assert triples == [
    LocalTriple(
      problem_id="p1",
      draft_steps=DRAFT,
      bad_index=1,
      target_steps=["3*4=12 eggs", "12+8=20 eggs", "20*2=40 eggs", "#### 40"],
    )
  ]
  t = triples[0]
  assert t.rewrite_steps == ["12+8=20 eggs", "20*2=40 eggs", "#### 40"]
  assert triples.counts["from_rollout"] == 1 and triples.counts["triples"] == 1

  # The marker sits in front of the first wrong step, and the prompt helpers agree on the target.
  fmt = PromptFormat()
  assert fmt.mark_draft(t.draft_steps, t.bad_index).split("\n") == [
    "3*4=12 eggs",
    "[BAD] 12+8=21 eggs",
    "21*2=42 eggs",
    "#### 42",
  ]
  assert fmt.local_refine_target(t.target_steps, t.bad_index) == t.rewrite_steps
  assert (
    fmt.apply_local_refinement(t.draft_steps, t.bad_index, join_steps(t.rewrite_steps))
    == t.target_steps
  )


def test_local_triple_without_consistency_may_use_any_correct_rollout():
  draft = sol(DRAFT, False, DRAFT_ROLLOUTS)
  targets = set()
  for seed in range(16):
    (t,) = local_triples({"p1": [(draft, labels([1, 0, 0, 0]))]}, consistency=False, seed=seed)
    assert t.bad_index == 1 and t.target_steps[:1] == DRAFT[:1]
    targets.add(tuple(t.rewrite_steps))
  assert targets == {("12+8=20 eggs", "20*2=40 eggs", "#### 40"), ("#### 40",)}


def test_later_drop_uses_rollouts_from_that_prefix():
  rollouts = [list(r) for r in DRAFT_ROLLOUTS]
  rollouts[1] = [Rollout("21*2=42\n42-2=40\n#### 40", R), Rollout("#### 43", W)]
  draft = sol(DRAFT, False, rollouts)
  lab = sorm_labels(draft, consistency=True, propagate_positive=True)
  assert lab.hard == [1, 1, 0, 0]
  (t,) = local_triples({"p1": [(draft, lab)]}, consistency=True, seed=0)
  assert t.bad_index == 2
  assert t.target_steps == DRAFT[:2] + ["21*2=42", "42-2=40", "#### 40"]
  marked = PromptFormat().mark_draft(t.draft_steps, t.bad_index).split("\n")
  assert marked[2] == "[BAD] 21*2=42 eggs"


def test_step_zero_negative_uses_a_correct_solution_from_the_empty_prefix():
  wrong = sol(["3+4=7", "#### 7"], False, [[Rollout("#### 7", W)], []])
  right = sol(CORRECT, True)
  items = {
    "p1": [(wrong, labels([0, 0])), (right, labels([1, 1, 1, 1]))],
    "p2": [(wrong, labels([0, 0]))],
  }  # no correct solution to learn from
  triples = local_triples(items, consistency=True, seed=0)
  assert triples == [LocalTriple("p1", ["3+4=7", "#### 7"], 0, CORRECT)]
  assert triples[0].rewrite_steps == CORRECT
  assert PromptFormat().mark_draft(triples[0].draft_steps, 0).startswith("[BAD] 3+4=7")
  assert triples.counts["from_empty_prefix"] == 1
  assert triples.counts["no_correct_solution"] == 1
  off = local_triples(items, consistency=True, seed=0, from_empty_prefix=False)
  assert off == [] and off.counts["empty_prefix_disabled"] == 2


def test_skips_are_counted():
  draft = sol(DRAFT, False, DRAFT_ROLLOUTS)
  right = sol(CORRECT, True)
  # Labels say P_1 is positive, but no rollout from P_1 succeeded (labels from another rule set).
  items = {
    "p1": [
      (draft, labels([1, 1, 0, 0])),
      (draft, labels([1, 1, 0, 0])),
      (right, labels([1, 1, 1, 1])),
    ]
  }
  triples = local_triples(items, consistency=True, seed=0)
  assert triples == []
  assert triples.counts == {
    "triples": 0,
    "from_rollout": 0,
    "from_empty_prefix": 0,
    "no_correct_rollout": 1,
    "no_correct_solution": 0,
    "empty_prefix_disabled": 0,
    "duplicate_drafts": 1,
  }
  with pytest.raises(ValueError, match="3 labels for 4 steps"):
    local_triples({"p1": [(draft, labels([1, 0, 0]))]}, consistency=True)


def test_local_triples_are_seeded_and_order_free():
  draft = sol(DRAFT, False, DRAFT_ROLLOUTS)
  other = sol(["3+4=7", "#### 7"], False, [[Rollout("#### 7", W)], []])
  right1, right2 = sol(CORRECT, True), sol(["3*4=12", "12+8=20", "20*2=40", "#### 40.0"], True)
  items = [
    (draft, labels([1, 0, 0, 0])),
    (other, labels([0, 0])),
    (right1, labels([1] * 4)),
    (right2, labels([1] * 4)),
  ]
  for seed in range(4):
    a = local_triples({"p": items}, consistency=False, seed=seed)
    b = local_triples({"p": items[::-1]}, consistency=False, seed=seed)
    assert sorted(a, key=repr) == sorted(b, key=repr)
