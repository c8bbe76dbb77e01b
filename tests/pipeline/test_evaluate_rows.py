"""Evaluation arithmetic at the stage level: `evaluate.answer_rows` on hand-made candidates and
ORM scores, where every row's accuracy, its bootstrap interval and the fix counts are known."""

from __future__ import annotations

import pytest

from glore_jax.method import evaluation as ev
from glore_jax.stages.evaluate import answer_rows

GOLD = ["12", "7", "1200", "5", "9", "30"]
T, F = True, False
# Per question: (draft, global, local) correctness and their ORM scores.
CORRECT = [(T, F, F), (F, T, F), (F, F, T), (F, T, T), (F, F, F), (T, T, F)]
ORM = [(.9, .2, .1), (.3, .8, .4), (.6, .1, .7), (.2, .5, .5), (.1, .2, .3), (.4, .3, .9)]
# best-of-3 policy samples: correctness and ORM scores (ties go to the first sample)
BEST = [((F, T, T), (.9, .5, .1)), ((T, F, F), (.7, .2, .6)), ((F, F, F), (.5, .5, .5)),
        ((F, T, F), (.3, .3, .1)), ((T, F, F), (.8, .2, .1)), ((F, F, T), (.1, .2, .3))]
WHERE = [None, 1, 0, 0, None, 2]  # SORM's first step under the threshold (None: not refined)
THRESHOLD, RESAMPLES, SEED = 0.5, 200, 3

EXPECTED = {  # per-question correctness of each row, worked out by hand
    "greedy": [T, F, F, F, F, T],
    "best_of_3": [F, T, F, F, T, T],
    "global": [F, T, F, T, F, T],
    "local": [F, F, T, T, F, F],
    "draft_global": [T, T, F, T, F, T],  # q2: D (.6) beats G (.1)
    "draft_local": [T, F, T, T, F, F],  # q1: L (.4) beats D (.3); q5: L (.9) beats D
    "draft_global_local": [T, T, T, T, F, F],  # q3: G and L tie at .5, G comes first
    "orm_gated": [T, T, F, T, F, F],  # q2: ORM(D) = .6 >= .5 keeps the wrong draft
    "oracle": [T, T, T, T, F, T],
}


def solution(q: int, ok: bool, variant: int = 0) -> list[str]:
  answer = GOLD[q] if ok else str(int(GOLD[q]) + 1 + variant)
  if ok and q == 2:
    answer = "1,200.00"  # graded as a number, not as a string
  return [f"Step {variant}: 3+4=7.", f"#### {answer}"]


def candidates() -> dict:
  return {
      "gold": GOLD,
      "drafts": [solution(q, c[0], 0) for q, c in enumerate(CORRECT)],
      "globals": [solution(q, c[1], 1) for q, c in enumerate(CORRECT)],
      "locals": [solution(q, c[2], 2) for q, c in enumerate(CORRECT)],
      "best_of": [[solution(q, ok, 3 + k) for k, ok in enumerate(b[0])] for q, b in enumerate(BEST)],
      "where": WHERE,
      "orm": {"draft": [s[0] for s in ORM], "global": [s[1] for s in ORM],
              "local": [s[2] for s in ORM], "best_of": [list(b[1]) for b in BEST]},
  }


def test_answer_rows_known_accuracies():
  table = answer_rows(candidates(), THRESHOLD, RESAMPLES, SEED)
  rows = table["rows"]
  assert list(rows) == list(EXPECTED)
  for name, per_question in EXPECTED.items():
    row = rows[name]
    assert row["n"] == len(GOLD), name
    assert row["accuracy"] == pytest.approx(sum(per_question) / len(GOLD)), name
    # the interval is the bootstrap of exactly these per-question outcomes
    lo, hi = ev.bootstrap_ci(per_question, num_resamples=RESAMPLES, seed=SEED)
    assert row["ci95"] == pytest.approx([lo, hi]), name
    assert lo <= row["accuracy"] <= hi
  assert [rows[k]["accuracy"] for k in ("greedy", "draft_global_local", "oracle")] == \
      pytest.approx([2 / 6, 4 / 6, 5 / 6])


def test_answer_rows_fix_counts():
  fixes = answer_rows(candidates(), THRESHOLD, RESAMPLES, SEED)["fixes"]
  # wrong drafts: q1..q4; G fixes q1, q3; L fixes q2, q3
  assert fixes == {"wrong_drafts": 4, "fixed_by_global": 2, "fixed_by_local": 2,
                   "fixed_by_both": 1, "fixed_by_either": 3, "refined_locally": 4}


def test_degenerate_rows_have_exact_intervals():
  c = candidates()
  c["drafts"] = [solution(q, True) for q in range(len(GOLD))]  # every draft right
  c["globals"] = [solution(q, False, 1) for q in range(len(GOLD))]  # every refinement wrong
  c["orm"]["draft"] = [0.0] * len(GOLD)  # the ORM prefers the (wrong) refinements
  rows = answer_rows(c, THRESHOLD, RESAMPLES, SEED)["rows"]
  assert rows["greedy"] == {"accuracy": 1.0, "n": 6, "ci95": [1.0, 1.0]}
  assert rows["global"] == {"accuracy": 0.0, "n": 6, "ci95": [0.0, 0.0]}
  assert rows["oracle"]["accuracy"] == 1.0
  # G's ORM score beats D's 0 on every question, so the right draft is never chosen
  assert rows["draft_global"]["accuracy"] == 0.0
  # gated: ORM(D) = 0 < threshold everywhere, so every question is reranked as well
  assert rows["orm_gated"] == rows["draft_global_local"]
