"""The embedded synthetic task: deterministic, disjoint splits, every reference correct."""

from __future__ import annotations

import re

import pytest

from glore_jax.data.grading import answers_match, extract_answer
from glore_jax.data.steps import encode_steps, split_steps
from glore_jax.data.synthetic import SyntheticConfig, make_split, split_of

_LINE = re.compile(r"^(?:[A-Z][a-z]+) has (\d+)([-+*/])(\d+)=(\d+) ([a-z]+)\.$")


def _check_arithmetic(problem, cfg: SyntheticConfig):
  """Recompute every line of the reference independently; return the op sequence."""
  steps = split_steps(problem.reference)
  assert steps[-1] == f"#### {problem.answer}"
  ops, prev = [], None
  for line in steps[:-1]:
    m = _LINE.match(line)
    assert m, line
    a, op, b, r = int(m[1]), m[2], int(m[3]), int(m[4])
    expect = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    assert r == expect and 0 < r <= cfg.max_value, line
    if op == "/":
      assert a % b == 0
    if prev is not None:
      assert a == prev, "each step continues from the previous result"
    assert str(a if prev is None else b) in problem.question
    prev = r
    ops.append(op)
  assert str(prev) == problem.answer
  assert cfg.min_steps <= len(ops) <= cfg.max_steps
  return ops


def test_deterministic_per_seed():
  a = make_split(7, 200, "train")
  assert a == make_split(7, 200, "train")
  assert a != make_split(8, 200, "train")
  assert make_split(7, 50, "train") == a[:50]  # a prefix: growing n keeps earlier problems


def test_train_test_disjoint_by_signature():
  train = make_split(0, 3000, "train")
  test = make_split(0, 600, "test")
  also_test = make_split(1, 600, "test")

  def sig(p):  # everything but names and objects
    return tuple(re.sub(r"[A-Za-z]+", "", s) for s in split_steps(p.reference))

  train_sigs = {sig(p) for p in train}
  assert len(train_sigs) == len(train)  # no duplicate within a split
  assert not train_sigs & {sig(p) for p in test + also_test}
  assert not {p.question for p in train} & {p.question for p in test}


def test_every_reference_is_correct_and_short():
  cfg = SyntheticConfig()
  problems = make_split(0, 2000, "train") + make_split(0, 500, "test")
  ops_seen = set()
  for p in problems:
    assert answers_match(extract_answer(p.reference), p.answer)
    ops_seen.update(_check_arithmetic(p, cfg))
    assert len(p.question) < 200 and len(p.reference) < 200
    assert p.source == "synthetic"
  assert ops_seen == {"+", "-", "*"}
  assert len({p.id for p in problems}) == len(problems)


def test_knobs():
  cfg = SyntheticConfig(
    min_steps=3,
    max_steps=5,
    max_operand=99,
    max_multiplier=12,
    max_value=5000,
    operations=("+", "*", "/"),
  )
  problems = make_split(1, 500, "test", cfg)
  ops = set()
  for p in problems:
    ops.update(_check_arithmetic(p, cfg))
  assert ops == {"+", "*", "/"}
  assert max(int(p.answer) for p in problems) > 999
  same = make_split(
    1,
    500,
    "test",
    {
      "min_steps": 3,
      "max_steps": 5,
      "max_operand": 99,
      "max_multiplier": 12,
      "max_value": 5000,
      "operations": ["+", "*", "/"],
    },
  )
  assert same == problems


@pytest.mark.parametrize(
  "bad, words",
  [
    ({"operations": ("^",)}, "subset"),
    ({"operations": ("/",)}, "first step"),
    ({"min_steps": 3, "max_steps": 2}, "min_steps"),
    ({"max_multiplier": 1}, "at least 2"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"colour": 1}, "unknown synthetic"),
  ],
)
def test_config_validation(bad, words):
  with pytest.raises(ValueError, match=words):
    make_split(0, 1, "train", bad)


def test_too_many_problems_is_an_error():
  with pytest.raises(ValueError, match="distinct"):
    make_split(
      0,
      500,
      "train",
      {"min_steps": 1, "max_steps": 1, "max_operand": 3, "max_multiplier": 2, "max_value": 20},
    )
  with pytest.raises(ValueError, match="split"):
    make_split(0, 1, "dev")


def test_split_of_is_stable():
  # Fixed by SHA-256, not Python's salted hash(): these values must never change.
  sigs = ("3*12|+15|-7", "2+2", "9*9|*9", "5+5", "7*3|-2", "10-4|+8", "4*4")
  assert [split_of(s) for s in sigs] == [
    "train",
    "test",
    "train",
    "train",
    "train",
    "train",
    "test",
  ]
  fractions = [split_of(f"{a}+{b}") for a in range(60) for b in range(60)]
  assert 0.15 < fractions.count("test") / len(fractions) < 0.25


def test_embedded_tokenizer_covers_the_task(embedded_tok):
  for p in make_split(0, 200, "train"):
    prompt = f"Question: {p.question}\nAnswer:\n"
    ids = embedded_tok(prompt + p.reference)["input_ids"]
    assert embedded_tok.unk_token_id not in ids
    enc = encode_steps(embedded_tok, prompt, split_steps(p.reference))
    assert len(enc.ids) < 400
