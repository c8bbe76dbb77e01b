"""Evaluation arithmetic on hand-made scores whose right numbers are known."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glore_jax.method import evaluation as ev
from glore_jax.method.evaluation import (
  ROWS,
  accuracy_row,
  auroc,
  bootstrap_ci,
  calibration_bins,
  expected_calibration_error,
  first_step_below,
  gated_rerank,
  markdown_table,
  oracle,
  reliability_diagram,
  rerank,
  step_level_metrics,
)

# Three questions, candidates [D, G, L].
SCORES = [
  [0.2, 0.9, 0.5],  # D doubted; G best and correct
  [0.6, 0.9, 0.3],  # D trusted at 0.5 but wrong; G best and correct
  [0.4, 0.4, 0.1],
]  # tie between D and G: the draft wins, and is correct
CORRECT = [[0, 1, 0], [0, 1, 1], [1, 0, 0]]


def test_rerank_picks_the_top_score_and_breaks_ties_towards_the_draft():
  r = rerank(SCORES, CORRECT)
  assert r.chosen == [1, 1, 0]
  assert r.correct == [True, True, True]
  assert r.accuracy == 1.0


def test_rerank_over_a_subset_of_candidates():
  r = rerank(SCORES, CORRECT, candidates=[0, 2])  # {D, L}
  assert r.chosen == [2, 0, 0]
  assert r.correct == [False, False, True]
  assert r.accuracy == pytest.approx(1 / 3)


def test_gated_rerank_keeps_trusted_drafts():
  g = gated_rerank(SCORES, CORRECT, threshold=0.5)
  assert g.refined == [True, False, True]
  assert g.chosen == [1, 0, 0]
  assert g.accuracy == pytest.approx(2 / 3)
  # A draft scored exactly at the threshold is trusted.
  assert gated_rerank([[0.5, 0.9]], [[0, 1]], threshold=0.5).chosen == [0]
  # A threshold above every draft score refines everything: plain reranking.
  assert gated_rerank(SCORES, CORRECT, threshold=1.0).chosen == rerank(SCORES, CORRECT).chosen
  # A threshold of 0 trusts every draft: greedy.
  assert gated_rerank(SCORES, CORRECT, threshold=0.0).chosen == [0, 0, 0]


def test_oracle():
  assert oracle(CORRECT) == [True, True, True]
  assert oracle([[0, 0], [0, 1], [False]]) == [False, True, False]


def test_grid_errors():
  with pytest.raises(ValueError, match="one row per question"):
    rerank(SCORES, CORRECT[:2])
  with pytest.raises(ValueError, match="question 1: 2 scores for 3 candidates"):
    rerank([[0.1, 0.2, 0.3], [0.1, 0.2], [0.1, 0.2, 0.3]], CORRECT)
  with pytest.raises(ValueError, match="NaN"):
    rerank([[float("nan")]], [[1]])


def test_first_step_below():
  assert first_step_below([0.9, 0.7, 0.4, 0.2], 0.5) == 2
  assert first_step_below([0.9, 0.5], 0.5) is None  # equal to the threshold is fine
  assert first_step_below([0.1], 0.5) == 0
  assert first_step_below([], 0.5) is None


# --- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_degenerate_cases():
  assert bootstrap_ci([1] * 20, seed=0) == (1.0, 1.0)
  assert bootstrap_ci([0] * 20, seed=0) == (0.0, 0.0)
  assert bootstrap_ci([True], seed=3) == (1.0, 1.0)
  with pytest.raises(ValueError, match="at least one"):
    bootstrap_ci([])


def test_bootstrap_is_seeded_and_sensible():
  x = [1] * 60 + [0] * 40
  a = bootstrap_ci(x, num_resamples=2000, seed=7)
  assert a == bootstrap_ci(x, num_resamples=2000, seed=7)
  assert a != bootstrap_ci(x, num_resamples=2000, seed=8)
  lo, hi = a
  # Normal approximation: 0.6 +- 1.96 * sqrt(0.24 / 100) = [0.504, 0.696].
  assert 0.47 < lo < 0.53 and 0.67 < hi < 0.73
  # A large input is resampled in chunks (bounded memory) and still brackets the mean.
  big = np.random.default_rng(0).integers(0, 2, size=5000)
  lo2, hi2 = bootstrap_ci(big, num_resamples=1000, seed=1)
  assert lo2 < big.mean() < hi2


def test_accuracy_row():
  row = accuracy_row([1, 1, 1, 1])
  assert row == {"accuracy": 1.0, "n": 4, "ci95": [1.0, 1.0]}
  row = accuracy_row([True, False, True, False], seed=0)
  assert row["accuracy"] == 0.5 and row["n"] == 4
  assert 0.0 <= row["ci95"][0] <= 0.5 <= row["ci95"][1] <= 1.0
  assert accuracy_row([]) == {"accuracy": None, "n": 0, "ci95": [None, None]}
  assert accuracy_row(rerank(SCORES, CORRECT, candidates=[0, 2]))["accuracy"] == pytest.approx(
    1 / 3
  )
  json.dumps(row, allow_nan=False)


# --- AUROC and calibration -----------------------------------------------------------------------


def brute_force_auroc(scores, labels):
  pos = [s for s, y in zip(scores, labels) if y == 1]
  neg = [s for s, y in zip(scores, labels) if y == 0]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(
  st.lists(
    st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]), st.integers(0, 1)),
    min_size=2,
    max_size=30,
  )
)
def test_auroc_matches_pairwise_count(pairs):
  scores, labels = zip(*pairs)
  if len(set(labels)) < 2:
    assert auroc(scores, labels) is None
  else:
    assert auroc(scores, labels) == pytest.approx(brute_force_auroc(scores, labels), abs=1e-12)


def test_auroc_known_values():
  assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
  assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
  assert auroc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5
  assert auroc([[0.3, 0.7], [0.7]], [[0, 1], [0]]) == 0.75  # ragged lists are flattened


def test_expected_calibration_error_by_hand():
  probs, labels = [0.1, 0.2, 0.8, 0.9], [0, 1, 1, 1]
  # 10 bins: one point per bin: (|0-.1| + |1-.2| + |1-.8| + |1-.9|) / 4 = 0.3
  assert expected_calibration_error(probs, labels) == pytest.approx(0.3)
  # 2 bins: {.1, .2}: |0.5 - 0.15| = .35, weight 1/2; {.8, .9}: |1 - .85| = .15, weight 1/2
  assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(0.25)
  assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0
  assert expected_calibration_error([], []) is None
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    expected_calibration_error([1.5], [1])


def test_calibration_bins_edges():
  conf, acc, count = calibration_bins([0.3, 0.6, 0.7, 1.0, 0.0, 0.35], [1, 0, 1, 1, 0, 0], bins=10)
  assert count.tolist() == [1, 0, 0, 2, 0, 0, 1, 1, 0, 1]  # 0.3, 0.35 -> bin 3; 1.0 -> last bin
  assert acc[3] == 0.5 and conf[3] == pytest.approx(0.325)
  assert acc[6] == 0.0 and np.isnan(acc[1])


def test_step_level_metrics_by_hand():
  m = step_level_metrics([[0.9, 0.4], [0.2]], [[1, 1], [0]], [0.8, 0.3], [True, True])
  assert m == {
    "step_accuracy": pytest.approx(2 / 3),
    "final_accuracy": 0.5,
    "auroc": 1.0,
    "ece": pytest.approx(0.3),
    "n_steps": 3,
  }
  with pytest.raises(ValueError, match="steps: 3 probabilities for 2 labels"):
    step_level_metrics([0.1, 0.2, 0.3], [1, 0], [0.5], [1])


# --- outputs -----------------------------------------------------------------------------------


def test_reliability_diagram_writes_a_png(tmp_path):
  path = tmp_path / "evaluate" / "reliability.png"
  reliability_diagram({"orm": ([0.1, 0.6, 0.9], [0, 1, 1]), "sorm": ([0.2, 0.5], [0, 1])}, path)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table():
  results = {
    "oracle": {"accuracy": 0.75, "n": 4, "ci95": [0.5, 1.0]},
    "greedy": {"accuracy": 0.5, "n": 4, "ci95": [0.0, 1.0]},
    "step_level": {
      "sorm": {
        "step_accuracy": 0.8,
        "final_accuracy": 0.7,
        "auroc": 0.85,
        "ece": 0.05,
        "n_steps": 10,
      },
      "orm": {
        "step_accuracy": 0.6,
        "final_accuracy": 0.75,
        "auroc": None,
        "ece": 0.1,
        "n_steps": 10,
      },
    },
    "timings": {"sample": 1.0},
  }
  text = markdown_table(results)
  lines = text.splitlines()
  assert lines[2] == f"| greedy | {ROWS['greedy']} | 50.0 | [0.0, 100.0] | 4 |"
  assert lines[3] == f"| oracle | {ROWS['oracle']} | 75.0 | [50.0, 100.0] | 4 |"
  assert "| orm | 60.0 | 75.0 | n/a | 0.100 | 10 |" in lines
  assert lines.index("| orm | 60.0 | 75.0 | n/a | 0.100 | 10 |") < lines.index(
    "| sorm | 80.0 | 70.0 | 0.850 | 0.050 | 10 |"
  )
  assert "timings" not in text
  only_rows = markdown_table({"rows": {"greedy": results["greedy"]}})
  assert only_rows.splitlines()[2].startswith("| greedy |")


# --------------------------------------------------------------------------------------------
# Baselines and verifier diagnostics


def test_majority_vote_counts_answers_and_breaks_ties_by_first_seen():
  assert ev.majority_vote([8, 7, 8], [False, True, False]) is False
  assert ev.majority_vote([7, 8, 7], [True, False, True]) is True
  assert ev.majority_vote([8, 7, 9], [False, True, False]) is False  # all tied: the first, 8
  assert ev.majority_vote([None, 7, None], [False, True, False]) is True  # no answer, no vote
  assert ev.majority_vote([None, None], [False, False]) is False


def test_paired_difference_is_the_mean_difference_with_a_paired_interval():
  a = [1, 1, 0, 1, 0, 1, 1, 1]
  b = [0, 1, 0, 1, 0, 0, 1, 1]
  d = ev.paired_difference(a, b, num_resamples=500, seed=1)
  assert d["difference"] == pytest.approx(0.25) and d["n"] == 8
  assert 0.0 <= d["ci95"][0] <= 0.25 <= d["ci95"][1]  # a is never worse: the interval stays >= 0
  same = ev.paired_difference(a, a, num_resamples=50)
  assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]
  with pytest.raises(ValueError, match="equal"):
    ev.paired_difference([1, 0], [1])


def test_within_question_pairs_ignore_question_difficulty():
  # A verifier that only knows question difficulty: every solution of an easy question scores
  # high, every solution of a hard one low, whatever its correctness.
  groups = ["easy"] * 4 + ["hard"] * 4
  labels = [1, 1, 1, 0, 1, 0, 0, 0]
  difficulty_only = [0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1]
  r = ev.within_question_pairs(difficulty_only, labels, groups)
  assert r["pooled_auroc"] > 0.7  # looks good pooled...
  assert r["pairwise"] == 0.5 and r["demeaned_auroc"] == 0.5  # ...but checks no work
  assert r["pairs"] == 3 + 3 and r["mixed_questions"] == 2
  checks_work = [0.9, 0.8, 0.7, 0.6, 0.4, 0.1, 0.2, 0.3]
  r = ev.within_question_pairs(checks_work, labels, groups)
  assert r["pairwise"] == 1.0  # every right solution beats every wrong one of its question
  assert r["demeaned_auroc"] == pytest.approx(13 / 16)  # centring mixes questions back together
  one_class = ev.within_question_pairs([0.3, 0.4], [1, 1], ["q", "q"])
  assert one_class["pairwise"] is None and one_class["pairs"] == 0


def test_localisation_and_its_f1():
  predicted = [1, 2, None, None, 0]
  truth = [1, 1, None, 2, None]
  r = ev.localisation(predicted, truth)
  assert r["n_wrong"] == 3 and r["n_right"] == 2
  assert r["accuracy_on_wrong"] == pytest.approx(1 / 3)  # only the first is exact
  assert r["accuracy_on_right"] == pytest.approx(1 / 2)
  assert r["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
  assert ev.localisation([None], [None])["f1"] is None  # no wrong solutions: undefined


def test_choose_where_threshold_finds_the_separating_value():
  # first bad step is where the score drops under 0.3 exactly; 0.5 would flag good steps too
  scores = [[0.9, 0.4, 0.2], [0.8, 0.45, 0.35], [0.9, 0.1, 0.1], [0.6, 0.4, 0.4]]
  first_bad = [2, None, 1, None]
  t, f1 = ev.choose_where_threshold(scores, first_bad)
  assert f1 == 1.0 and 0.2 < t <= 0.35
  assert ev.localisation([ev.first_step_below(s, t) for s in scores], first_bad)["f1"] == 1.0


def test_row_descriptions_follow_best_of():
  rows = ev.row_descriptions(8)
  assert {"best_of_8", "random_of_8", "majority_of_8", "likelihood_of_8", "mean_sample"} <= set(
    rows
  )
  assert "best_of_3" not in rows and "best_of_3" in ev.ROWS
  table = ev.markdown_table(
    {
      "best_of": 8,
      "best_of_8": {"accuracy": 0.5, "n": 2, "ci95": [0, 1]},
      "greedy": {"accuracy": 0.5, "n": 2, "ci95": [0, 1]},
    }
  )
  assert table.index("| greedy") < table.index("| best_of_8 | best of 8 policy samples")
