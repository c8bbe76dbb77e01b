"""Training data for the global and local refiners, built from the SORM stage's rollouts.

Global refiner: (question, incorrect draft) -> a correct solution of the same question.
Local refiner: (question, draft with [BAD] before the first step whose prefix can no longer be
completed) -> the solution rewritten from the marker on.

Every random choice is a hash of (seed, problem id, content), so the data does not depend on the
order in which solutions arrive (e.g. which process or shard produced them).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from glore_jax.data.steps import split_steps
from glore_jax.method.labels import Rollout, StepLabels, StepRollouts, hash_rank, is_consistent

__all__ = [
  "CountedList",
  "GlobalPair",
  "LocalTriple",
  "first_drop",
  "global_pairs",
  "local_triples",
]


class Attempt(Protocol):
  """Anything with a solution's steps and its outcome (e.g. `StepRollouts`)."""

  steps: Sequence[str]
  outcome: bool


class CountedList(list):
  """A list of examples that also carries the counts of what was built and what was skipped."""

  def __init__(self, items: Iterable = (), counts: Mapping[str, int] | None = None):
    super().__init__(items)
    self.counts: dict[str, int] = dict(counts or {})


@dataclasses.dataclass(frozen=True)
class GlobalPair:
  """draft_steps: an incorrect solution; target_steps: a correct solution of the same question."""

  problem_id: str
  draft_steps: list[str]
  target_steps: list[str]


@dataclasses.dataclass(frozen=True)
class LocalTriple:
  """A local-refinement example.

  draft_steps: the incorrect solution. bad_index: the step the [BAD] marker goes in front of
  (0-based; steps[:bad_index] is the last prefix that could still be completed correctly).
  target_steps: the full corrected solution = draft_steps[:bad_index] + a correct continuation
  from that prefix. The refiner is trained to output `rewrite_steps` = target_steps[bad_index:]
  (what `PromptFormat.local_refine_target(target_steps, bad_index)` returns).
  """

  problem_id: str
  draft_steps: list[str]
  bad_index: int
  target_steps: list[str]

  @property
  def rewrite_steps(self) -> list[str]:
    """The steps the local refiner writes: the target from `bad_index` on."""
    return self.target_steps[self.bad_index :]


def _key(steps: Sequence[str]) -> str:
  return "\n".join(steps)


def _distinct(solutions: Iterable[Sequence[str]]) -> list[list[str]]:
  """Solutions with duplicates removed (identical samples add no new training signal)."""
  seen: dict[str, list[str]] = {}
  for steps in solutions:
    seen.setdefault(_key(steps), list(steps))
  return list(seen.values())


def _shuffled(seed: int, problem_id: str, role: str, sols: list[list[str]]) -> list[list[str]]:
  return sorted(sols, key=lambda s: (hash_rank(seed, problem_id, role, _key(s)), _key(s)))


def global_pairs(
  problems_solutions: Mapping[str, Sequence[Attempt]],
  *,
  seed: int = 0,
  max_pairs_per_question: int | None = None,
  correct_draft_pairs: int = 0,
) -> CountedList:
  """Pair each distinct incorrect solution with a correct solution of the same question.

  Per question, the distinct incorrect and correct solutions are put in a seeded order; the k-th
  incorrect one is paired with the (k mod #correct)-th correct one, so targets are spread evenly,
  and at most `max_pairs_per_question` pairs are kept. Questions without both kinds give none.
  With `correct_draft_pairs` > 0, up to that many correct drafts per question are also paired
  with a correct solution (another one when there is one, else itself): the paper's pairs are
  all wrong -> right, which teaches a small refiner that every draft must change, so it rewrites
  right drafts too; right -> right pairs teach it to keep what is already right.
  counts: pairs, correct_draft_pairs, questions_with_pairs, questions_without_correct,
  questions_without_incorrect.

  Args:
    problems_solutions: {problem id: its sampled solutions}.
    seed: the seed of the orders and choices.
    max_pairs_per_question: at most this many wrong -> right pairs per question; None: all.
    correct_draft_pairs: right -> right pairs per question (0: none, as in the paper).

  Raises:
    ValueError: a negative `max_pairs_per_question` or `correct_draft_pairs`.
  """
  if max_pairs_per_question is not None and max_pairs_per_question < 0:
    raise ValueError(f"max_pairs_per_question must be >= 0 or None, got {max_pairs_per_question}")
  if correct_draft_pairs < 0:
    raise ValueError(f"correct_draft_pairs must be >= 0, got {correct_draft_pairs}")
  pairs: list[GlobalPair] = []
  counts = collections.Counter(
    questions_with_pairs=0,
    questions_without_correct=0,
    questions_without_incorrect=0,
    correct_draft_pairs=0,
  )
  for pid, sols in problems_solutions.items():
    wrong = _shuffled(seed, pid, "draft", _distinct(s.steps for s in sols if not s.outcome))
    right = _shuffled(seed, pid, "target", _distinct(s.steps for s in sols if s.outcome))
    if not right:
      counts["questions_without_correct"] += 1
      continue
    kept = right[:correct_draft_pairs]
    pairs += [GlobalPair(pid, d, right[(k + 1) % len(right)]) for k, d in enumerate(kept)]
    counts["correct_draft_pairs"] += len(kept)
    if not wrong:
      counts["questions_without_incorrect"] += 1
      continue
    wrong = wrong[:max_pairs_per_question]
    pairs += [GlobalPair(pid, d, right[k % len(right)]) for k, d in enumerate(wrong)]
    counts["questions_with_pairs"] += bool(wrong)
  counts["pairs"] = len(pairs)
  return CountedList(pairs, counts)


def first_drop(hard: Sequence[int]) -> int | None:
  """The first i with hard[i] = 1 and hard[i+1] = 0: P_i can be completed, P_{i+1} cannot."""
  for i in range(len(hard) - 1):
    if hard[i] and not hard[i + 1]:
      return i
  return None


def _pick(seed: int, pid: str, draft: Sequence[str], options: list[list[str]]) -> list[str]:
  return min(options, key=lambda o: (hash_rank(seed, pid, _key(draft), _key(o)), _key(o)))


def local_triples(
  problems: Mapping[str, Sequence[tuple[StepRollouts, StepLabels]]],
  *,
  consistency: bool,
  seed: int = 0,
  from_empty_prefix: bool = True,
  separator: str = "\n",
) -> CountedList:
  """One local-refinement example per distinct incorrect solution that has a place to mark.

  With i = the first step where P_i is positive and P_{i+1} negative (`first_drop` of the hard
  labels): bad_index = i+1, and target = draft[:i+1] + a correct rollout's continuation from P_i
  (one that passes the consistency check when `consistency` is on, like the labels), picked by a
  seeded hash. If step 0 is already negative (no positive prefix), the last good prefix is the
  empty one, whose "rollouts" are the question's own samples: with `from_empty_prefix`, the
  example gets bad_index = 0 and a seeded correct solution of the same question as target.
  counts: triples, from_rollout, from_empty_prefix, and the skips no_correct_rollout,
  no_correct_solution, empty_prefix_disabled, duplicate_drafts.

  Args:
    problems: {problem id: (solution with rollouts, its step labels) per solution}.
    consistency: a target rollout must build on the prefix's result (`is_consistent`).
    seed: the seed of the choices.
    from_empty_prefix: make bad_index = 0 examples when step 0 is already negative.
    separator: the step separator of the rollouts' text.

  Raises:
    ValueError: a solution's labels and steps differ in count.
  """
  triples: list[LocalTriple] = []
  counts = collections.Counter(
    from_rollout=0,
    from_empty_prefix=0,
    no_correct_rollout=0,
    no_correct_solution=0,
    empty_prefix_disabled=0,
    duplicate_drafts=0,
  )
  for pid, items in problems.items():
    correct = sorted(_distinct(sol.steps for sol, _ in items if sol.outcome), key=_key)
    seen: set[str] = set()
    for sol, labels in items:
      if sol.outcome:
        continue
      if len(labels.hard) != len(sol.steps):
        raise ValueError(
          f"problem {pid!r}: {len(labels.hard)} labels for "
          f"{len(sol.steps)} steps; label the same solutions you pass"
        )
      if _key(sol.steps) in seen:
        counts["duplicate_drafts"] += 1
        continue
      seen.add(_key(sol.steps))
      triple = _local_triple(
        pid,
        sol,
        labels,
        correct,
        counts,
        consistency=consistency,
        seed=seed,
        from_empty_prefix=from_empty_prefix,
        separator=separator,
      )
      if triple is not None:
        triples.append(triple)
  counts["triples"] = len(triples)
  return CountedList(triples, counts)


def _local_triple(
  pid: str,
  sol: StepRollouts,
  labels: StepLabels,
  correct: list[list[str]],
  counts: collections.Counter,
  *,
  consistency: bool,
  seed: int,
  from_empty_prefix: bool,
  separator: str,
) -> LocalTriple | None:
  draft = list(sol.steps)
  i = first_drop(labels.hard)
  if i is None:  # an incorrect solution ends negative, so step 0 is negative already
    if not from_empty_prefix:
      counts["empty_prefix_disabled"] += 1
      return None
    if not correct:
      counts["no_correct_solution"] += 1
      return None
    counts["from_empty_prefix"] += 1
    return LocalTriple(pid, draft, 0, _pick(seed, pid, draft, correct))
  continuations = _distinct(
    _successful_continuations(draft[i], sol.rollouts[i], consistency, separator)
  )
  if not continuations:
    counts["no_correct_rollout"] += 1
    return None
  counts["from_rollout"] += 1
  return LocalTriple(pid, draft, i + 1, draft[: i + 1] + _pick(seed, pid, draft, continuations))


def _successful_continuations(
  step: str, rollouts: Sequence[Rollout], consistency: bool, separator: str
) -> list[list[str]]:
  out = []
  for r in rollouts:
    if r.correct and (not consistency or is_consistent(step, r.text)):
      steps = split_steps(r.text, separator)
      if steps:
        out.append(steps)
  return out
