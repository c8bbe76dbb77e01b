"""ORM and SORM step labels from rollouts, and the three SORM post-processing rules.

The SORM target for prefix P_i = steps[:i+1] approximates V*(P_i): "can this prefix still be
completed correctly?", estimated as best-of-K over rollouts that the policy samples from P_i.
Everything here is plain Python on plain dataclasses, so the labeling stage can be tested exactly
against hand-made rollouts without a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from glore_jax.data.grading import format_number, normalize_number, strip_calculator_marks

__all__ = [
  "Rollout",
  "StepLabels",
  "StepRollouts",
  "balance_by_step_index",
  "hash_rank",
  "intermediate_result",
  "is_consistent",
  "label_statistics",
  "numbers_in",
  "orm_labels",
  "prefix_successes",
  "sorm_labels",
]


@dataclasses.dataclass(frozen=True)
class Rollout:
  """One continuation sampled from a prefix: its text (after the prefix) and its grade."""

  text: str
  correct: bool

  @classmethod
  def from_json(cls, obj: Mapping[str, Any]) -> Rollout:
    """A Rollout from its {'text', 'correct'} JSON object."""
    return cls(text=obj["text"], correct=bool(obj["correct"]))


@dataclasses.dataclass(frozen=True)
class StepRollouts:
  """A sampled solution with the K rollouts from each of its prefixes.

  steps: the solution's steps. outcome: whether the solution itself is correct.
  rollouts[i]: the continuations sampled from P_i = steps[:i+1] (text after step i). The last
  prefix is the whole solution, so its label is `outcome` and rollouts[-1] may be empty.
  """

  steps: list[str]
  outcome: bool
  rollouts: list[list[Rollout]]

  def __post_init__(self) -> None:
    if len(self.rollouts) != len(self.steps):
      raise ValueError(
        f"rollouts must hold one list per step (the last may be empty): "
        f"got {len(self.rollouts)} lists for {len(self.steps)} steps"
      )

  @classmethod
  def from_json(cls, obj: Mapping[str, Any]) -> StepRollouts:
    """Inverse of `dataclasses.asdict`."""
    return cls(
      steps=list(obj["steps"]),
      outcome=bool(obj["outcome"]),
      rollouts=[[Rollout.from_json(r) for r in rs] for rs in obj["rollouts"]],
    )


@dataclasses.dataclass(frozen=True)
class StepLabels:
  """Per-step targets: hard (0/1) and soft (fraction of the K rollouts that succeeded)."""

  hard: list[int]
  soft: list[float]

  @classmethod
  def from_json(cls, obj: Mapping[str, Any]) -> StepLabels:
    """StepLabels from their {'hard', 'soft'} JSON object."""
    return cls(hard=[int(x) for x in obj["hard"]], soft=[float(x) for x in obj["soft"]])


# --------------------------------------------------------------------------------------------
# Intermediate results and consistency

# An unsigned number: "1,234.5" (groups of three), "1234", "12.5", ".5". Not preceded by a word
# character or a dot (so "x2" and the "5" of "1.5" are not numbers), not followed by a digit.
_NUMBER = re.compile(r"(?<![\w.])(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?![\d])")


def numbers_in(text: str) -> list[Fraction]:
  """All numbers written in `text` (calculator marks `<<...>>` removed), in order, as exact values.

  "3*12=36 apples" -> [3, 12, 36]; "1,200.50" -> [1200.5]; "= -5" -> [-5]; "10-5" -> [10, 5].
  """
  text = strip_calculator_marks(text)
  out = []
  for m in _NUMBER.finditer(text):
    value = normalize_number(m["num"])
    if value is None:  # pragma: no cover - the regex only matches parseable numbers
      continue
    before = text[max(0, m.start() - 2) : m.start()]
    if _is_negative_sign(before):
      value = -value
    out.append(value)
  return out


def _is_negative_sign(before: str) -> bool:
  """Whether the text before a number ends in a unary minus: "-5", "= -5", "is -5", "(-5".

  A minus right after a digit, letter or ")" ("10-5", "x-5") or followed by a space ("10 - 5")
  is subtraction.
  """
  if not before or before[-1] not in "-\u2212":
    return False
  return len(before) == 1 or not (before[-2].isalnum() or before[-2] in ")_")


def intermediate_result(step_text: str) -> str | None:
  """The result of a step: its last number, canonically written ("36", "1200.5"), or None.

  GSM8K steps end in their result ("3*12=<<3*12=36>>36 apples"), so the last number is the value
  the rest of the solution must build on.
  """
  numbers = numbers_in(step_text)
  return format_number(numbers[-1]) if numbers else None


def is_consistent(step_text: str, rollout_text: str) -> bool:
  """Whether a rollout from a prefix builds on it: the step's result reappears as a number.

  Compared as exact values, never as substrings ("36" is not in "360", "36.0" is 36). A step
  without a number constrains nothing, so it is always consistent.

  Args:
    step_text: the prefix's last step.
    rollout_text: the rollout's text after the prefix.
  """
  result = intermediate_result(step_text)
  if result is None:
    return True
  return normalize_number(result) in numbers_in(rollout_text)


# --------------------------------------------------------------------------------------------
# Labels


def prefix_successes(step: str, rollouts: Sequence[Rollout], consistency: bool) -> int:
  """How many rollouts from the prefix ending in `step` succeed: correct, and (with
  `consistency`) building on the step's result.

  Args:
    step: the prefix's last step.
    rollouts: the rollouts from that prefix.
    consistency: count only rollouts that build on the step's result (`is_consistent`).
  """
  return sum(1 for r in rollouts if r.correct and (not consistency or is_consistent(step, r.text)))


def sorm_labels(sol: StepRollouts, *, consistency: bool, propagate_positive: bool) -> StepLabels:
  """SORM targets: step i is positive if any rollout from P_i succeeds (best-of-K ~ V*).

  A success is a correct rollout, which must also reappear the step's result when `consistency`
  is on (a correct rollout that ignores the prefix says nothing about it). soft_i = successes / K.
  The last prefix is the full solution: its labels are the outcome. With `propagate_positive`,
  a positive step makes every earlier step positive (a completable prefix has completable
  prefixes); soft values are left as measured.

  Args:
    sol: the solution and its rollouts per prefix.
    consistency: a success must build on the step's result (`is_consistent`).
    propagate_positive: a positive step makes every earlier step positive.

  Raises:
    ValueError: a prefix other than the last has no rollouts.
  """
  n = len(sol.steps)
  hard: list[int] = []
  soft: list[float] = []
  for i in range(n - 1):
    k = len(sol.rollouts[i])
    if k == 0:
      raise ValueError(f"step {i} of {n} has no rollouts; every prefix but the last needs K >= 1")
    s = prefix_successes(sol.steps[i], sol.rollouts[i], consistency)
    hard.append(int(s > 0))
    soft.append(s / k)
  if n:
    hard.append(int(sol.outcome))
    soft.append(float(sol.outcome))
  if propagate_positive and 1 in hard:
    last_positive = n - 1 - hard[::-1].index(1)
    hard[:last_positive] = [1] * last_positive
  return StepLabels(hard=hard, soft=soft)


def orm_labels(sol: StepRollouts) -> StepLabels:
  """ORM targets: every step gets the sample's own outcome (an estimate of V^pi)."""
  n = len(sol.steps)
  return StepLabels(hard=[int(sol.outcome)] * n, soft=[float(sol.outcome)] * n)


# --------------------------------------------------------------------------------------------
# Balancing and statistics


def hash_rank(seed: int, *parts: object) -> int:
  """A deterministic pseudo-random key from (seed, parts): stable across runs, Python and numpy
  versions and input order, unlike a shared RNG stream.

  Args:
    seed: the seed.
    *parts: the key's parts (hashed as their str()).
  """
  data = "\x1f".join(str(p) for p in (seed, *parts)).encode("utf-8")
  return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def balance_by_step_index(
  labels: Sequence[Sequence[int]], seed: int, keys: Sequence[object] | None = None
) -> list[list[bool]]:
  """A keep-mask with equally many kept positives and negatives at every step index.

  Without it the reward model can learn "early = good, late = bad" from the step index alone.
  At index j with p positives and n negatives, min(p, n) of each are kept, picked by a hash of
  (seed, key of the solution, j), so the choice does not depend on the order of `labels` when
  `keys` (e.g. solution ids) are given; the default keys are the solution positions.

  Args:
    labels: [solution][step] hard labels (0 or 1).
    seed: the seed of the choice.
    keys: one key per solution; None: the solution positions.

  Returns:
    [solution][step] True where the label is kept.

  Raises:
    ValueError: `keys` has the wrong length, or a label is not 0 or 1.
  """
  if keys is None:
    keys = range(len(labels))
  elif len(keys) != len(labels):
    raise ValueError(f"keys must have one entry per solution: {len(keys)} != {len(labels)}")
  mask = [[False] * len(row) for row in labels]
  by_index: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (j, label) -> [(rank, sol)]
  for s, (row, key) in enumerate(zip(labels, keys)):
    for j, y in enumerate(row):
      if y not in (0, 1):
        raise ValueError(f"hard labels must be 0 or 1, got {y!r} at solution {s}, step {j}")
      by_index.setdefault((j, int(y)), []).append((hash_rank(seed, key, j), s))
  for j in {j for j, _ in by_index}:
    pos, neg = by_index.get((j, 1), []), by_index.get((j, 0), [])
    keep = min(len(pos), len(neg))
    for group in (pos, neg):
      for _, s in sorted(group)[:keep]:
        mask[s][j] = True
  return mask


def _mean(xs: Sequence[float]) -> float | None:
  return sum(xs) / len(xs) if xs else None


def label_statistics(
  labels: Sequence[StepLabels],
  outcomes: Sequence[bool],
  keep: Sequence[Sequence[bool]] | None = None,
) -> dict[str, Any]:
  """Figures for the label stage's summary, JSON-ready (None where undefined).

  positives/negatives per step index; mean soft label per index; the overall positive fraction;
  how often a hard label agrees with the ORM label (the solution's outcome) overall, on correct
  and on incorrect solutions (SORM and ORM differ exactly on the disagreements); and, given a
  balancing `keep` mask, the kept counts per index.

  Args:
    labels: the step labels of each solution.
    outcomes: whether each solution is right.
    keep: the balancing mask from `balance_by_step_index`; None: no kept counts.

  Raises:
    ValueError: `labels` and `outcomes` differ in length.
  """
  if len(labels) != len(outcomes):
    raise ValueError(f"one outcome per solution: {len(labels)} labels, {len(outcomes)} outcomes")
  width = max((len(l.hard) for l in labels), default=0)
  pos, neg = [0] * width, [0] * width
  soft_sum = [0.0] * width
  agree: dict[bool, list[int]] = {True: [], False: []}
  for lab, outcome in zip(labels, outcomes):
    for j, (h, s) in enumerate(zip(lab.hard, lab.soft, strict=True)):
      (pos if h else neg)[j] += 1
      soft_sum[j] += s
      agree[bool(outcome)].append(int(h == int(bool(outcome))))
  counts = [p + n for p, n in zip(pos, neg)]
  stats: dict[str, Any] = {
    "num_solutions": len(labels),
    "num_correct_solutions": sum(bool(o) for o in outcomes),
    "num_steps": sum(counts),
    "positives_per_index": pos,
    "negatives_per_index": neg,
    "mean_soft_per_index": [s / c if c else None for s, c in zip(soft_sum, counts)],
    "positive_fraction": sum(pos) / sum(counts) if sum(counts) else None,
    "agreement_with_outcome": _mean(agree[True] + agree[False]),
    "agreement_on_correct": _mean(agree[True]),
    "agreement_on_incorrect": _mean(agree[False]),
  }
  if keep is not None:
    kept_pos, kept_neg = [0] * width, [0] * width
    for lab, row in zip(labels, keep, strict=True):
      for j, (h, k) in enumerate(zip(lab.hard, row, strict=True)):
        if k:
          (kept_pos if h else kept_neg)[j] += 1
    stats["kept_positives_per_index"] = kept_pos
    stats["kept_negatives_per_index"] = kept_neg
    stats["num_kept"] = sum(kept_pos) + sum(kept_neg)
  return stats
