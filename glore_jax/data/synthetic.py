"""The embedded synthetic task: seeded GSM8K-style word problems with one computation per line.

It lets the whole pipeline run offline on a CPU. Text is short and regular so that a tiny Llama with
a character tokenizer learns the format and the copying of numbers within minutes; what remains
hard is the arithmetic itself (carries in multi-digit addition, multiplication of a running total),
so a wrong solution is usually wrong at one identifiable step, which is what SORM labels and the
local refiner need. Example (question, then reference solution):

    Tom has 3 boxes of 12 apples. He buys 15 more. He gives away 7. How many apples does Tom have?
    Tom has 3*12=36 apples.
    He has 36+15=51 apples.
    He has 51-7=44 apples.
    #### 44

Train and test are disjoint by construction: a problem's *signature* (its operations and operand
values, ignoring names and objects) is hashed into a bucket that decides its split, so no seed or
size can ever put the same computation in both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Mapping
from typing import Any

from glore_jax.data.records import Problem

__all__ = [
  "OPERATIONS",
  "SyntheticConfig",
  "make_split",
  "problem_signature",
  "sample_problem",
  "split_of",
]

OPERATIONS = ("+", "-", "*", "/")
_NAMES = (
  ("Tom", "He"),
  ("Ann", "She"),
  ("Sam", "He"),
  ("Eva", "She"),
  ("Max", "He"),
  ("Mia", "She"),
  ("Ben", "He"),
  ("Zoe", "She"),
  ("Leo", "He"),
  ("Ivy", "She"),
)
_OBJECTS = (
  "apples",
  "pens",
  "cards",
  "eggs",
  "books",
  "shells",
  "coins",
  "stamps",
  "beads",
  "rocks",
)
_CONTAINERS = ("boxes", "bags", "packs", "jars")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Difficulty knobs. Defaults aim at a tiny CPU-trained model solving roughly half."""

  min_steps: int = 2  # computation lines per solution (the "#### N" line comes on top)
  max_steps: int = 4
  max_operand: int = 30  # largest number added or subtracted, and items per container
  max_multiplier: int = 9  # largest factor in "*" and divisor in "/"
  max_value: int = 999  # bound on every intermediate result (keeps numbers <= 3 digits)
  operations: tuple[str, ...] = ("+", "-", "*")
  test_fraction: float = 0.2  # share of signature buckets reserved for the test split
  # Sentences about a second person (same objects) mixed into the question; the solution must
  # ignore them. Their numbers make "used the wrong quantity" a possible mistake, one a verifier
  # can see by reading the question, unlike an arithmetic slip. 0 = the original task.
  distractors: int = 0

  def __post_init__(self) -> None:
    ops = tuple(self.operations)
    object.__setattr__(self, "operations", ops)
    if not ops or set(ops) - set(OPERATIONS):
      raise ValueError(f"operations must be a non-empty subset of {OPERATIONS}, got {ops}")
    if not set(ops) & {"+", "-", "*"}:
      raise ValueError("operations need one of '+', '-', '*' for the first step")
    if not 1 <= self.min_steps <= self.max_steps:
      raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
    if self.max_operand < 2 or self.max_multiplier < 2:
      raise ValueError("max_operand and max_multiplier must be at least 2")
    if self.max_value < 4 * self.max_multiplier:
      raise ValueError("max_value is too small for the operand ranges")
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
    if not isinstance(self.distractors, int) or self.distractors < 0:
      raise ValueError(f"distractors must be an integer >= 0, got {self.distractors!r}")

  @classmethod
  def from_dict(cls, overrides: Mapping[str, Any] | None) -> SyntheticConfig:
    """The defaults with `overrides` applied.

    Args:
      overrides: {field: value}; None: the defaults.

    Raises:
      ValueError: an unknown field or an invalid value.
    """
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
      raise ValueError(f"unknown synthetic task option(s) {unknown}; known: {sorted(known)}")
    return cls(**overrides)


def problem_signature(first: tuple[int, str, int], ops: list[tuple[str, int]]) -> str:
  """The computation alone, e.g. "3*12|+15|-7": two problems with it are the same problem.

  Args:
    first: the first equation's (a, op, b).
    ops: the following (op, operand) pairs.
  """
  a, op, b = first
  return "|".join([f"{a}{op}{b}"] + [f"{o}{v}" for o, v in ops])


def split_of(signature: str, test_fraction: float = 0.2) -> str:
  """'test' or 'train', fixed by a hash of the signature (stable across Python runs).

  Args:
    signature: a `problem_signature`.
    test_fraction: the share of signatures that are test problems.
  """
  h = int.from_bytes(hashlib.sha256(signature.encode()).digest()[:8], "big")
  return "test" if h < test_fraction * 2.0**64 else "train"


def _apply(x: int, op: str, v: int) -> int:
  if op == "+":
    return x + v
  if op == "-":
    return x - v
  if op == "*":
    return x * v
  return x // v


def _operand(rng: random.Random, x: int, op: str, cfg: SyntheticConfig) -> int | None:
  """A random operand for `x op v` within the bounds, or None if the op cannot apply to x."""
  if op == "+":
    hi = min(cfg.max_operand, cfg.max_value - x)
    return rng.randint(2, hi) if hi >= 2 else None
  if op == "-":
    hi = min(cfg.max_operand, x - 1)
    return rng.randint(1, hi) if hi >= 1 else None
  if op == "*":
    hi = min(cfg.max_multiplier, cfg.max_value // max(x, 1))
    return rng.randint(2, hi) if hi >= 2 else None
  divisors = [d for d in range(2, cfg.max_multiplier + 1) if x % d == 0 and x // d >= 1]
  return rng.choice(divisors) if divisors else None


def sample_problem(rng: random.Random, cfg: SyntheticConfig) -> tuple[str, str, int, str]:
  """One random problem: (question, reference solution, answer, signature).

  Args:
    rng: the random generator (advanced).
    cfg: the number ranges and step counts.
  """
  while True:
    problem = _try_sample(rng, cfg)
    if problem is not None:
      return problem


def _try_sample(rng: random.Random, cfg: SyntheticConfig) -> tuple[str, str, int, str] | None:
  """A problem, or None when the chosen operations ran out of room before min_steps."""
  name, pron = rng.choice(_NAMES)
  obj = rng.choice(_OBJECTS)
  n_steps = rng.randint(cfg.min_steps, cfg.max_steps)
  first_op = rng.choice([o for o in cfg.operations if o != "/"])
  if first_op == "*":
    a = rng.randint(2, cfg.max_multiplier)
    b = rng.randint(2, min(cfg.max_operand, cfg.max_value // a))
    q = [f"{name} has {a} {rng.choice(_CONTAINERS)} of {b} {obj}."]
  elif first_op == "+":
    a = rng.randint(2, cfg.max_operand)
    b = rng.randint(2, cfg.max_operand)
    q = [f"{name} has {a} {obj} and finds {b} more."]
  else:
    a = rng.randint(3, cfg.max_operand)
    b = rng.randint(1, a - 1)
    q = [f"{name} has {a} {obj} and loses {b}."]
  x = _apply(a, first_op, b)
  sol = [f"{name} has {a}{first_op}{b}={x} {obj}."]
  ops: list[tuple[str, int]] = []
  for _ in range(n_steps - 1):
    choices = list(cfg.operations)
    rng.shuffle(choices)
    for op in choices:
      v = _operand(rng, x, op, cfg)
      if v is not None:
        break
    else:  # no operation fits (e.g. only "*" and x is large): end the problem early
      break
    q.append(
      {
        "+": f"{pron} buys {v} more.",
        "-": f"{pron} gives away {v}.",
        "*": f"{pron} then has {v} times as many.",
        "/": f"{pron} splits them into {v} equal piles and keeps one.",
      }[op]
    )
    y = _apply(x, op, v)
    sol.append(f"{pron} has {x}{op}{v}={y} {obj}.")
    ops.append((op, v))
    x = y
  if 1 + len(ops) < cfg.min_steps:
    return None
  if cfg.distractors:
    q = _with_distractors(rng, q, name, pron, obj, cfg)
  q.append(f"How many {obj} does {name} have?")
  sol.append(f"#### {x}")
  return " ".join(q), "\n".join(sol), x, problem_signature((a, first_op, b), ops)


def _with_distractors(
  rng: random.Random, q: list[str], name: str, pron: str, obj: str, cfg: SyntheticConfig
) -> list[str]:
  """The question's sentences with `cfg.distractors` sentences about someone else mixed in after
  the first one; the main person's sentences name them instead of a pronoun (both could be
  "He")."""
  other = rng.choice([n for n, _ in _NAMES if n != name])
  main = [q[0]] + [sentence.replace(f"{pron} ", f"{name} ", 1) for sentence in q[1:]]
  count = rng.randint(3, cfg.max_operand)
  extra = [f"{other} has {count} {obj}."]
  for _ in range(cfg.distractors - 1):
    if count > 2 and rng.random() < 0.5:  # never more than they have
      v = rng.randint(1, min(cfg.max_operand, count - 1))
      extra.append(f"{other} gives away {v}.")
      count -= v
    else:
      v = rng.randint(2, cfg.max_operand)
      extra.append(f"{other} buys {v} more.")
      count += v
  out = main[:1]
  rest = main[1:]
  for sentence in extra:  # keep each list's own order, interleave them at random
    while rest and rng.random() < 0.5:
      out.append(rest.pop(0))
    out.append(sentence)
  return out + rest


def make_split(
  seed: int, n: int, split: str = "train", config: SyntheticConfig | Mapping[str, Any] | None = None
) -> list[Problem]:
  """`n` distinct problems of `split` ('train' or 'test'), identical for the same seed and config.

  Raises if the number ranges are too small to hold `n` distinct signatures in that split.

  Args:
    seed: the random seed.
    n: how many problems.
    split: 'train' or 'test'.
    config: a SyntheticConfig or a dict of its fields; None: the defaults.

  Raises:
    ValueError: `split` is neither 'train' nor 'test', or the ranges hold fewer than `n`
      distinct problems of that split.
  """
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  cfg = config if isinstance(config, SyntheticConfig) else SyntheticConfig.from_dict(config)
  rng = random.Random(f"glore-synthetic/{split}/{seed}")
  seen: set[str] = set()
  out: list[Problem] = []
  attempts, max_attempts = 0, 50 * n + 10_000
  while len(out) < n:
    attempts += 1
    if attempts > max_attempts:
      raise ValueError(
        f"only {len(out)} distinct {split} problems found after "
        f"{max_attempts} draws; widen the number ranges or steps in {cfg}"
      )
    question, reference, answer, sig = sample_problem(rng, cfg)
    if sig in seen or split_of(sig, cfg.test_fraction) != split:
      continue
    seen.add(sig)
    out.append(
      Problem(
        id=f"synthetic-{split}-{seed}-{len(out)}",
        question=question,
        reference=reference,
        answer=str(answer),
        source="synthetic",
      )
    )
  return out
