"""Choosing one answer per question (reranking, ORM gating, majority vote, the oracle) and the
accuracy rows of the results table.

Plain lists in, plain lists out: every pick can be checked by hand.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from glore_jax.method.bootstrap import bootstrap_ci

__all__ = [
  "ROWS",
  "Reranked",
  "accuracy_row",
  "gated_rerank",
  "majority_vote",
  "oracle",
  "rerank",
  "row_descriptions",
]


def row_descriptions(best_of: int) -> dict[str, str]:
  """Rows of the main table, in print order, with what each one means; N = `best_of` samples."""
  n = best_of
  return {
    "greedy": "greedy draft D",
    "mean_sample": f"mean accuracy of the {n} policy samples (expected random pick)",
    f"random_of_{n}": f"one of the {n} samples, picked at random (seeded)",
    f"majority_of_{n}": f"majority vote over the {n} samples' answers",
    f"likelihood_of_{n}": "the sample with the highest mean token log-prob under the policy",
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
