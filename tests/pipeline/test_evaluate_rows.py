"""Evaluation arithmetic at the stage level: `evaluate_rows.answer_rows` on hand-made candidates and
ORM scores, where every row's accuracy, its bootstrap interval and the fix counts are known."""

from __future__ import annotations

import pytest

from glore_jax.method import evaluation as ev
from glore_jax.stages.evaluate_rows import answer_rows, per_question_rows

GOLD = ["12", "7", "1200", "5", "9", "30"]
T, F = True, False
# Per question: (draft, global, local) correctness and their ORM scores.
CORRECT = [(T, F, F), (F, T, F), (F, F, T), (F, T, T), (F, F, F), (T, T, F)]
ORM = [
  (0.9, 0.2, 0.1),
  (0.3, 0.8, 0.4),
  (0.6, 0.1, 0.7),
  (0.2, 0.5, 0.5),
  (0.1, 0.2, 0.3),
  (0.4, 0.3, 0.9),
]
# best-of-3 policy samples: correctness and ORM scores (ties go to the first sample)
BEST = [
  ((F, T, T), (0.9, 0.5, 0.1)),
  ((T, F, F), (0.7, 0.2, 0.6)),
  ((F, F, F), (0.5, 0.5, 0.5)),
  ((F, T, F), (0.3, 0.3, 0.1)),
  ((T, F, F), (0.8, 0.2, 0.1)),
  ((F, F, T), (0.1, 0.2, 0.3)),
]
# their mean token log-probs under the policy (the likelihood row picks the highest)
LOGPROB = [
  (-0.5, -0.1, -0.9),
  (-0.2, -0.3, -0.1),
  (-0.1, -0.2, -0.3),
  (-0.9, -0.8, -0.1),
  (-0.1, -0.2, -0.3),
  (-0.3, -0.2, -0.1),
]
# wrong samples' answers: offsets from gold (same offset = same wrong answer, for the vote)
WRONG_OFFSET = [(1, 0, 0), (0, 1, 1), (1, 2, 2), (1, 0, 1), (0, 3, 4), (5, 5, 0)]
WHERE = [None, 1, 0, 0, None, 2]  # SORM's first step under the threshold (None: not refined)
THRESHOLD, RESAMPLES, SEED = 0.5, 200, 3

EXPECTED = {  # per-question correctness of each row, worked out by hand
  "greedy": [T, F, F, F, F, T],
  "mean_sample": [2 / 3, 1 / 3, 0, 1 / 3, 1 / 3, 1 / 3],
  "majority_of_3": [T, F, F, F, T, F],  # q1: wrong answer 8 twice; q4: three distinct, first
  "likelihood_of_3": [T, F, F, F, T, T],
  "best_of_3": [F, T, F, F, T, T],
  "global": [F, T, F, T, F, T],
  "local": [F, F, T, T, F, F],
  "draft_global": [T, T, F, T, F, T],  # q2: D (.6) beats G (.1)
  "draft_local": [T, F, T, T, F, F],  # q1: L (.4) beats D (.3); q5: L (.9) beats D
  "draft_global_local": [T, T, T, T, F, F],  # q3: G and L tie at .5, G comes first
  "orm_gated": [T, T, F, T, F, F],  # q2: ORM(D) = .6 >= .5 keeps the wrong draft
  "oracle": [T, T, T, T, F, T],
}


def solution(q: int, ok: bool, offset: int = 1) -> list[str]:
  answer = GOLD[q] if ok else str(int(GOLD[q]) + offset)
  if ok and q == 2:
    answer = "1,200.00"  # graded as a number, not as a string
  return [f"Step {offset}: 3+4=7.", f"#### {answer}"]


def candidate(role, q, ok, orm, index=0, offset=1, logprob=None):
  steps = solution(q, ok, offset)
  return {
    "role": role,
    "index": index,
    "steps": steps,
    "answer": steps[-1][5:],
    "correct": ok,
    "orm": orm,
    "mean_logprob": logprob,
  }


def records() -> list[dict]:
  out = []
  for q in range(len(GOLD)):
    (d, g, l), (sd, sg, sl) = CORRECT[q], ORM[q]
    cands = [candidate("draft", q, d, sd, offset=1)]
    for k, (ok, s) in enumerate(zip(*BEST[q])):
      cands.append(
        candidate("sample", q, ok, s, index=k, offset=1 + WRONG_OFFSET[q][k], logprob=LOGPROB[q][k])
      )
    cands += [candidate("global", q, g, sg, offset=2), candidate("local", q, l, sl, offset=3)]
    out.append({"id": f"q{q}", "gold": GOLD[q], "where": WHERE[q], "candidates": cands})
  return out


def test_answer_rows_known_accuracies():
  table = answer_rows(records(), THRESHOLD, RESAMPLES, SEED)
  rows = table["rows"]
  assert table["best_of"] == 3
  assert set(rows) == set(EXPECTED) | {"random_of_3"}
  for name, per_question in EXPECTED.items():
    row = rows[name]
    assert row["n"] == len(GOLD), name
    assert row["accuracy"] == pytest.approx(sum(per_question) / len(GOLD)), name
    # the interval is the bootstrap of exactly these per-question outcomes
    lo, hi = ev.bootstrap_ci(per_question, num_resamples=RESAMPLES, seed=SEED)
    assert row["ci95"] == pytest.approx([lo, hi]), name
    assert lo <= row["accuracy"] <= hi
  assert [rows[k]["accuracy"] for k in ("greedy", "draft_global_local", "oracle")] == pytest.approx(
    [2 / 6, 4 / 6, 5 / 6]
  )


def test_random_pick_is_one_of_the_samples_and_seeded():
  per_q = per_question_rows(records(), THRESHOLD, SEED)
  for q, pick in enumerate(per_q["random_of_3"]):
    assert pick in BEST[q][0]
  assert per_question_rows(records(), THRESHOLD, SEED)["random_of_3"] == per_q["random_of_3"]
  picks = {tuple(per_question_rows(records(), THRESHOLD, s)["random_of_3"]) for s in range(20)}
  assert len(picks) > 1  # the seed matters


def test_paired_differences_match_the_rows():
  table = answer_rows(records(), THRESHOLD, RESAMPLES, SEED)
  d = table["differences"]["draft_global_local - greedy"]
  assert d["difference"] == pytest.approx(4 / 6 - 2 / 6)
  lo, hi = d["ci95"]
  assert lo <= d["difference"] <= hi
  per_q = [float(a) - float(b) for a, b in zip(EXPECTED["draft_global_local"], EXPECTED["greedy"])]
  assert [lo, hi] == pytest.approx(list(ev.bootstrap_ci(per_q, num_resamples=RESAMPLES, seed=SEED)))
  mean = table["differences"]["best_of_3 - mean_sample"]["difference"]
  assert mean == pytest.approx(3 / 6 - sum(EXPECTED["mean_sample"]) / 6)


def test_answer_rows_fix_counts():
  fixes = answer_rows(records(), THRESHOLD, RESAMPLES, SEED)["fixes"]
  # wrong drafts: q1..q4; G fixes q1, q3; L fixes q2, q3; right drafts q0, q5: G breaks q0, L both
  assert fixes == {
    "wrong_drafts": 4,
    "fixed_by_global": 2,
    "fixed_by_local": 2,
    "fixed_by_both": 1,
    "fixed_by_either": 3,
    "broken_by_global": 1,
    "broken_by_local": 2,
    "refined_locally": 4,
  }


def test_degenerate_rows_have_exact_intervals():
  recs = records()
  for _q, rec in enumerate(recs):
    for c in rec["candidates"]:
      if c["role"] == "draft":
        c.update(correct=True, orm=0.0)  # every draft right, and the ORM prefers the others
      if c["role"] == "global":
        c["correct"] = False  # every global refinement wrong
  rows = answer_rows(recs, THRESHOLD, RESAMPLES, SEED)["rows"]
  assert rows["greedy"] == {"accuracy": 1.0, "n": 6, "ci95": [1.0, 1.0]}
  assert rows["global"] == {"accuracy": 0.0, "n": 6, "ci95": [0.0, 0.0]}
  assert rows["oracle"]["accuracy"] == 1.0
  # G's ORM score beats D's 0 on every question, so the right draft is never chosen
  assert rows["draft_global"]["accuracy"] == 0.0
  # gated: ORM(D) = 0 < threshold everywhere, so every question is reranked as well
  assert rows["orm_gated"] == rows["draft_global_local"]
