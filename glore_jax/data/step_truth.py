"""Ground truth for every step of a solution to a synthetic problem.

The synthetic task knows its computation: the reference solution writes one equation per line
("Tom has 3*12=36 apples."), so any solution can be checked step by step against it, without a
model and without evaluating text (equations are parsed with a regular expression and computed on
integers). For each step we record:

- arithmetic_ok: the step's own equation holds (`36+15=51`, not `36+15=52`);
- quantities_ok: it combines the right quantities: the reference's running value and the
  question's operand for that step (either order for `+` and `*`);
- ok: both, i.e. the step writes the reference's intermediate value the right way.

A prefix P_i = steps[:i+1] is *sound* when every step in it is ok: that is the ground truth that
SORM labels estimate ("can this prefix still be completed correctly?"), since a solution that has
written a wrong intermediate value can only reach the gold answer by not building on it.
`first_error` is the index of the first step that is not ok (None for a flawless solution), the
quantity ProcessBench-style evaluations localise. The final `#### N` line is ok when it comes right
after the last computation and N is the gold answer.

GSM8K and other sources have no such reference computation: `reference_equations` returns None and
callers report "no ground truth" instead of guessing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from glore_jax.data.grading import answers_match, extract_answer

__all__ = [
  "Equation",
  "StepTruth",
  "parse_equation",
  "reference_equations",
  "step_truth",
]

# "3*12=36", "51 - 7 = 44": two non-negative integer operands, one operator, an integer result.
_EQUATION = re.compile(r"(?<![\d.])(\d{1,9})\s*([+\-*/])\s*(\d{1,9})\s*=\s*(-?\d{1,12})(?![\d.])")
_COMMUTATIVE = frozenset("+*")


@dataclasses.dataclass(frozen=True)
class Equation:
  left: int
  op: str
  right: int
  result: int

  @property
  def holds(self) -> bool:
    """Whether left op right == result, on integers (`/` must divide exactly)."""
    if self.op == "+":
      return self.left + self.right == self.result
    if self.op == "-":
      return self.left - self.right == self.result
    if self.op == "*":
      return self.left * self.right == self.result
    return (
      self.right != 0 and self.left % self.right == 0 and self.left // self.right == self.result
    )

  def same_quantities(self, other: Equation) -> bool:
    """Same operator on the same operands (in either order when the operator commutes)."""
    if self.op != other.op:
      return False
    if (self.left, self.right) == (other.left, other.right):
      return True
    return self.op in _COMMUTATIVE and (self.left, self.right) == (other.right, other.left)


@dataclasses.dataclass(frozen=True)
class StepTruth:
  """Per-step ground truth of one solution (lists have one entry per step)."""

  arithmetic_ok: list[bool]
  quantities_ok: list[bool]
  ok: list[bool]

  @property
  def prefix_sound(self) -> list[bool]:
    """prefix_sound[i]: every step of P_i = steps[:i+1] is ok (the V* ground truth)."""
    out, sound = [], True
    for ok in self.ok:
      sound = sound and ok
      out.append(sound)
    return out

  @property
  def first_error(self) -> int | None:
    """Index of the first step that is not ok, or None when every step is."""
    for i, ok in enumerate(self.ok):
      if not ok:
        return i
    return None

  def to_json(self) -> dict:
    return {
      "arithmetic_ok": list(self.arithmetic_ok),
      "quantities_ok": list(self.quantities_ok),
      "ok": list(self.ok),
      "first_error": self.first_error,
    }


def parse_equation(step: str) -> Equation | None:
  """The first `a op b = c` equation in a step, or None if it has none."""
  m = _EQUATION.search(step)
  if m is None:
    return None
  return Equation(int(m[1]), m[2], int(m[3]), int(m[4]))


def reference_equations(reference: str) -> list[Equation] | None:
  """The computation of a synthetic reference solution, one equation per line before `####`.

  None when some computation line has no equation (not a synthetic-format reference) or there
  is none at all, so callers can tell "no ground truth" apart from "all wrong".
  """
  equations = []
  for line in reference.splitlines():
    line = line.strip()
    if not line or line.startswith("####"):
      continue
    eq = parse_equation(line)
    if eq is None or not eq.holds:
      return None
    equations.append(eq)
  return equations or None


def step_truth(steps: Sequence[str], reference: Sequence[Equation], gold: str) -> StepTruth:
  """Check every step of a solution against the reference computation.

  Step i < len(reference) must be an equation with reference[i]'s quantities that holds. Step
  len(reference) must be the `#### N` line with N the gold answer. Any other step (an early or
  late `####`, extra lines, text without an equation) is not ok.

  Args:
    steps: the solution's steps.
    reference: the reference solution's equations, in order (`reference_equations`).
    gold: the gold answer.
  """
  arithmetic, quantities, ok = [], [], []
  n_ref = len(reference)
  for i, step in enumerate(steps):
    if step.lstrip().startswith("####"):
      answer = extract_answer(step)
      right = i == n_ref and answer is not None and answers_match(answer, gold)
      arithmetic.append(True)
      quantities.append(right)
      ok.append(right)
      continue
    eq = parse_equation(step)
    holds = eq is not None and eq.holds
    same = eq is not None and i < n_ref and eq.same_quantities(reference[i])
    arithmetic.append(holds)
    quantities.append(same)
    ok.append(holds and same)
  return StepTruth(arithmetic, quantities, ok)
