"""SORM labels from a search for the first uncompletable prefix, instead of K rollouts from every one.

With positive propagation, exhaustive SORM labels are monotone: positive up to the last prefix from
which some rollout succeeds, negative after. What the label stage estimates is therefore one index
per solution, `first_negative`: the first prefix no rollout completes (len(steps) when none). This
module finds it by a search over the prefix indices (binary, as OmegaPRM does, or galloping) and
fills the other labels from monotonicity. It is model-free: a search asks for prefix indices and is told
(successes, rollouts) for each, so it is tested with a scripted oracle and driven, batched over
many solutions per round, by the label stage.

Two strategies. "bisect" (the default, as OmegaPRM): with no prior on where the first error sits,
bisection is the minimax choice, floor(log2 n) or ceil(log2 n) evaluations for n candidate
boundaries wherever the boundary is, in as many sequential rounds (each round is one batched
fan-out over all drafts of a shard); on the demo and repro runs its labels equal exhaustive ones
at K = 2, 4 and 8. "gallop" (exponential search from prefix 0: 0, 1, 3, 7, ... then bisection of
the gap) costs one evaluation when the first step is already unrecoverable and at most
2*ceil(log2(b+1)) for a boundary at b, so it is cheaper when errors come early (the demo's weak
policy: 62% of wrong solutions fail at step 0), but it trusts an early all-fail prefix that
exhaustive labeling would overrule with a later success (README: "Cheaper SORM labels").
A galloping search from the end would pay most exactly where errors are most frequent.

What is free: the last prefix is the whole solution, whose label is its outcome. A correct
solution is therefore all-positive under propagation and needs no rollout at all; an incorrect one
has n = len(steps) candidate boundaries (first_negative in 0..n-1) and needs a search.

Monotonicity is an assumption about the rollouts, not a fact. With noise (a prefix whose K
rollouts all fail, followed by one with a success) a search finds *a* boundary, with a measured
success just before it and a measured failure at it, while exhaustive labeling with propagation
puts it after the *last* success. Given the same rollouts, the search's boundary is never later
than the exhaustive one, so the search can only turn exhaustive positives into negatives; the
differences are counted by `compare_hard_labels` and `non_monotone`, never hidden.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from glore_jax.method.labels import StepLabels, StepRollouts, prefix_successes

__all__ = [
  "STRATEGIES",
  "FirstErrorSearch",
  "SearchLabels",
  "compare_hard_labels",
  "evaluation_bounds",
  "first_negative",
  "gallop_evaluation_bound",
  "non_monotone",
  "search_from_rollouts",
  "search_with_oracle",
]


@dataclasses.dataclass(frozen=True)
class SearchLabels:
  """A search's labels: hard and soft per step, whether each was measured, and the boundary.

  measured[i]: step i's label comes from its own rollouts (soft = successes / rollouts) or, for
  the last step, from the outcome; otherwise it is inferred from monotonicity (soft = hard).
  evaluations: the prefix indices evaluated, in order.
  """

  hard: list[int]
  soft: list[float]
  measured: list[bool]
  first_negative: int
  evaluations: list[int]

  def step_labels(self) -> StepLabels:
    return StepLabels(hard=list(self.hard), soft=list(self.soft))


STRATEGIES = ("bisect", "gallop")


class FirstErrorSearch:
  """Search for the first prefix of one solution that no rollout completes.

  Ask `next_query()` for a prefix index (None when done), evaluate K rollouts from that prefix,
  and `record(index, successes, rollouts)`; then `labels()`. Prefix i is steps[:i+1].

  Args:
    num_steps: the solution's number of steps n.
    outcome: whether the solution is correct (the label of the last prefix).
    strategy: "bisect" (binary search over the whole range) or "gallop" (exponential search from
      the first prefix: probes 0, 1, 3, 7, ... until one fails, then bisects the gap; 1
      evaluation when the very first step is already unrecoverable, at most 2*ceil(log2(b+1))
      for a boundary at b >= 1).
  """

  def __init__(self, num_steps: int, outcome: bool, strategy: str = "bisect"):
    if num_steps < 0:
      raise ValueError(f"num_steps={num_steps} must be >= 0")
    if strategy not in STRATEGIES:
      raise ValueError(f"strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    self.num_steps, self.outcome, self.strategy = num_steps, bool(outcome), strategy
    self._galloping = strategy == "gallop"
    # the boundary lies in [lo, hi]; an incorrect solution's last prefix is negative (hi = n-1),
    # a correct one's is positive, so under monotonicity every prefix is (lo = hi = n).
    self._lo = num_steps if self.outcome else 0
    self._hi = num_steps if self.outcome else max(num_steps - 1, 0)
    self._measured: dict[int, tuple[int, int]] = {}
    self.evaluations: list[int] = []

  @property
  def done(self) -> bool:
    """Whether the first negative prefix is found (no query left)."""
    return self._lo >= self._hi

  def next_query(self) -> int | None:
    """The prefix index to evaluate next, or None when the boundary is found."""
    if self.done:
      return None
    if self._galloping:
      return min(max(2 * self._lo - 1, 0), self._hi - 1)
    return (self._lo + self._hi) // 2

  def record(self, index: int, successes: int, rollouts: int) -> None:
    """The result of evaluating prefix `index`: `successes` of its `rollouts` succeeded.

    Args:
      index: the prefix evaluated; must be `next_query()`.
      successes: how many of its rollouts succeeded.
      rollouts: how many were sampled (>= 1).

    Raises:
      ValueError: `index` is not the prefix asked for, or the counts are out of range.
    """
    if index != self.next_query():
      raise ValueError(f"recorded prefix {index}, but the search asked for {self.next_query()}")
    if rollouts < 1 or not 0 <= successes <= rollouts:
      raise ValueError(f"need 0 <= successes ({successes}) <= rollouts ({rollouts}), rollouts >= 1")
    self._measured[index] = (successes, rollouts)
    self.evaluations.append(index)
    if successes > 0:
      self._lo = index + 1
    else:
      self._hi = index
      self._galloping = False  # the boundary is bracketed: bisect the gap

  def labels(self) -> SearchLabels:
    """The solution's labels once the search is done.

    Raises:
      ValueError: the search is not finished.
    """
    if not self.done:
      raise ValueError(
        f"the search is not finished: prefix {self.next_query()} is still to evaluate"
      )
    n, boundary = self.num_steps, self._lo
    hard = [int(i < boundary) for i in range(n)]
    soft = [float(h) for h in hard]
    measured = [False] * n
    for i, (s, k) in self._measured.items():
      soft[i], measured[i] = s / k, True
    if n:
      soft[-1], measured[-1] = float(self.outcome), True
    return SearchLabels(hard, soft, measured, boundary, list(self.evaluations))


def evaluation_bounds(num_steps: int, outcome: bool) -> tuple[int, int]:
  """(fewest, most) prefix evaluations the search makes on a solution, wherever its boundary.

  A correct solution needs none; an incorrect one with n steps has n candidate boundaries, so
  bisection needs floor(log2 n) to ceil(log2 n) evaluations (exactly log2 n when n is a power
  of two).

  Args:
    num_steps: the solution's step count.
    outcome: whether the solution is correct.
  """
  if outcome or num_steps <= 1:
    return 0, 0
  return math.floor(math.log2(num_steps)), math.ceil(math.log2(num_steps))


def gallop_evaluation_bound(num_steps: int, outcome: bool, boundary: int) -> int:
  """The most prefix evaluations the galloping search makes on a solution whose first negative
  prefix is `boundary`: none for a correct solution, else 1 for b = 0 and at most
  2*ceil(log2(b+1)) (probes 0, 1, 3, ..., 2^j-1 up to the first failure, then a bisection of the
  2^(j-1) candidates left), never more than the n-1 prefixes exhaustive labeling evaluates.

  Args:
    num_steps: the solution's step count.
    outcome: whether the solution is correct.
    boundary: the index of the first negative prefix.
  """
  if outcome or num_steps <= 1:
    return 0
  return min(max(1, 2 * math.ceil(math.log2(boundary + 1))), num_steps - 1)


def search_with_oracle(
  num_steps: int, outcome: bool, oracle: Callable[[int], tuple[int, int]], strategy: str = "bisect"
) -> SearchLabels:
  """Runs one search to the end; `oracle(prefix_index)` -> (successes, rollouts).

  Args:
    num_steps: the solution's number of steps.
    outcome: whether the solution is correct.
    oracle: evaluates a prefix (e.g. a scripted policy in tests, or recorded rollouts).
    strategy: "bisect" or "gallop" (`FirstErrorSearch`).
  """
  search = FirstErrorSearch(num_steps, outcome, strategy)
  while (i := search.next_query()) is not None:
    search.record(i, *oracle(i))
  return search.labels()


def search_from_rollouts(
  sol: StepRollouts, *, consistency: bool, num_rollouts: int | None = None, strategy: str = "bisect"
) -> SearchLabels:
  """The search replayed on exhaustive rollouts: it reads only the prefixes it asks for.

  The sampler's rollout k from a prefix depends only on (example, prefix end, k), so the search
  stage sees exactly these rollouts at the prefixes it evaluates; replaying it here gives the
  search's labels at any K <= the recorded one (`num_rollouts`: use the first K of each prefix).

  Args:
    sol: a solution with its rollouts from every prefix but the last.
    consistency: count only correct rollouts that build on the step, as the labels do.
    num_rollouts: K, at most the number recorded per prefix; None uses all of them.
    strategy: "bisect" or "gallop" (`FirstErrorSearch`).
  """

  def oracle(i: int) -> tuple[int, int]:
    rollouts = sol.rollouts[i][:num_rollouts]
    if not rollouts:
      raise ValueError(f"prefix {i} has no recorded rollouts to replay")
    return prefix_successes(sol.steps[i], rollouts, consistency), len(rollouts)

  return search_with_oracle(len(sol.steps), sol.outcome, oracle, strategy)


def first_negative(hard: Sequence[int]) -> int:
  """The index after the last positive label (len(hard) when the last is positive): the boundary
  monotone labels with this hard pattern's positives would have."""
  positives = [i for i, h in enumerate(hard) if h]
  return positives[-1] + 1 if positives else 0


def non_monotone(hard: Sequence[int]) -> bool:
  """Whether measured hard labels (before propagation) have a negative before a positive: the
  rollout noise that makes the search and exhaustive labeling disagree."""
  return any(not a and b for a, b in itertools.pairwise(hard))


def compare_hard_labels(
  search: Sequence[Sequence[int]], exhaustive: Sequence[Sequence[int]]
) -> dict[str, Any]:
  """How the search's hard labels differ from exhaustive ones on the same solutions.

  Returns counts (steps, solutions, disagreeing steps and solutions, steps the search calls
  negative where exhaustive says positive and the reverse) and the step and solution agreement.

  Args:
    search: [solution][step] hard labels from the search.
    exhaustive: [solution][step] hard labels from exhaustive labelling, same solutions.

  Raises:
    ValueError: the two label different solutions or step counts.
  """
  if len(search) != len(exhaustive):
    raise ValueError(f"label the same solutions: {len(search)} vs {len(exhaustive)}")
  steps = diff_steps = diff_solutions = search_neg = search_pos = 0
  for s, (a, b) in enumerate(zip(search, exhaustive)):
    if len(a) != len(b):
      raise ValueError(f"solution {s}: {len(a)} search labels vs {len(b)} exhaustive labels")
    steps += len(a)
    diff = [(x, y) for x, y in zip(a, b) if int(x) != int(y)]
    diff_steps += len(diff)
    diff_solutions += bool(diff)
    search_neg += sum(1 for x, y in diff if not x)
    search_pos += sum(1 for x, y in diff if x)
  return {
    "steps": steps,
    "solutions": len(search),
    "disagreeing_steps": diff_steps,
    "disagreeing_solutions": diff_solutions,
    "search_negative_exhaustive_positive": search_neg,
    "search_positive_exhaustive_negative": search_pos,
    "step_agreement": 1 - diff_steps / steps if steps else None,
    "solution_agreement": 1 - diff_solutions / len(search) if search else None,
  }
