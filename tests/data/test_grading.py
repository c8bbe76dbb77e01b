"""Answer extraction and exact rational grading."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glore_jax.data.grading import (
  answers_match,
  extract_answer,
  format_number,
  normalize_number,
  strip_calculator_marks,
)
from glore_jax.data.sources import load_svamp


@pytest.mark.parametrize(
  "text, value",
  [
    ("72", 72),
    ("1,080", 1080),
    ("109,200,000", 109200000),
    ("$5", 5),
    ("-$5", -5),
    ("$-5", -5),
    ("-5", -5),
    ("\u22127", -7),
    ("+3", 3),
    ("51.0", 51),
    ("51.00", 51),
    ("0.5", Fraction(1, 2)),
    (".25", Fraction(1, 4)),
    ("3/4", Fraction(3, 4)),
    ("-3/4", Fraction(-3, 4)),
    ("1,000/4", 250),
    ("50%", 50),
    ("50 %", 50),
    ("51 dollars", 51),
    ("$51 dollars.", 51),
    ("12 apples!", 12),
    ("72.", 72),
    (" 72 ", 72),
    ("\\$18", 18),
    ("1,234.5", Fraction(2469, 2)),
    ("007", 7),
    ("5kg", 5),
  ],
)
def test_normalize_number_accepts(text, value):
  assert normalize_number(text) == Fraction(value)


@pytest.mark.parametrize(
  "text",
  [
    "",
    "   ",
    "abc",
    "5 or 6",
    "5 apples and 3 pears",
    "1,00",
    "12,5",
    "1/0",
    "--3",
    "-$-3",
    "$",
    "x5",
    "3 1/2",
    "5-3",
    "1e5",
    "five",
    "#### 5",
    "1.2.3",
    "9" * 300,
  ],
)
def test_normalize_number_rejects(text):
  assert normalize_number(text) is None


def test_normalize_number_non_strings():
  assert normalize_number(7) == 7
  assert normalize_number(Fraction(1, 3)) == Fraction(1, 3)
  assert normalize_number(0.1) == Fraction(1, 10)  # decimal meaning, not the binary float
  assert normalize_number(float("nan")) is None
  assert normalize_number(float("inf")) is None
  assert normalize_number(None) is None
  assert normalize_number(True) is None


def test_extract_answer():
  assert extract_answer("a\nb\n#### 72") == "72"
  assert extract_answer("#### 1,080\n") == "1,080"
  assert extract_answer("x\n####   $5.  \nmore text\n#### 9") == "$5."  # first marker wins
  assert extract_answer("x = <<2*3=6>>6\n#### <<6>>6") == "6"  # calculator marks ignored
  assert extract_answer("no marker 5 then 7") is None
  assert extract_answer("####\nnothing") is None
  assert extract_answer("####") is None
  assert extract_answer(None) is None


def test_extract_answer_fallback_last_number():
  f = lambda t: extract_answer(t, fallback_last_number=True)
  assert f("She earned 0.2 x 50 = $10.") == "$10"
  assert f("so 1,000 - 3/4") == "3/4"
  assert f("10-5 is five") == "5"
  assert f("it is -5.") == "-5"
  assert f("words only") is None
  assert f("#### 3\nthen 9") == "3"  # the marker still wins
  assert answers_match(f("The answer is 1,080 apples."), "1080")


def test_answers_match():
  assert answers_match("1,080", "1080")
  assert answers_match("$18.00", 18)
  assert answers_match("0.75", "3/4")
  assert answers_match("-2", "-2.0")
  assert not answers_match("18", "18.5")
  assert not answers_match("-18", "18")
  assert not answers_match(None, "18")
  assert not answers_match("abc", "abc")  # text is never graded as a number
  assert not answers_match("5 or 6", "5")


def test_strip_calculator_marks():
  text = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nShe made $<<0.2*50=10>>10."
  assert strip_calculator_marks(text) == "Natalia sold 48/2 = 24 clips.\nShe made $10."
  assert strip_calculator_marks("a << b") == "a << b"


def test_format_number():
  assert format_number(Fraction(72)) == "72"
  assert format_number(Fraction(-5, 2)) == "-2.5"
  assert format_number(Fraction(1, 8)) == "0.125"
  assert format_number(Fraction(-1, 40)) == "-0.025"
  assert format_number(Fraction(1, 3)) == "1/3"


# --- properties -------------------------------------------------------------------------------


def _with_commas(n: int) -> str:
  return f"{n:,}"


@settings(max_examples=300, deadline=None)
@given(
  st.integers(min_value=-(10**15), max_value=10**15),
  st.sampled_from(
    [
      "{}",
      "{:,}",
      "${}",
      "${:,}",
      "{}.0",
      "{}.000",
      "{} dollars",
      "{}%",
      "{} apples.",
      "{:,} units",
    ]
  ),
)
def test_integers_round_trip_through_any_spelling(n, fmt):
  sign = "-" if n < 0 else ""
  body = fmt.format(abs(n))
  assert normalize_number(sign + body) == n


@settings(max_examples=300, deadline=None)
@given(st.fractions(max_denominator=10**6))
def test_format_then_normalize_is_identity(x):
  assert normalize_number(format_number(x)) == x


@settings(max_examples=300, deadline=None)
@given(
  st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9), max_value=10**9)
)
def test_decimals_are_exact(d):
  text = format(d, "f")
  assert normalize_number(text) == Fraction(d)
  assert answers_match(text, Fraction(d))
  assert not answers_match(text, Fraction(d) + Fraction(1, 10**5))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_normalize_never_crashes(text):
  value = normalize_number(text)
  assert value is None or isinstance(value, Fraction)


# --- SVAMP: every answer matches itself written as text --------------------------------------


def test_all_svamp_answers_match_their_spellings(shared_data):
  path = shared_data / "svamp" / "SVAMP.json"
  if not path.exists():
    pytest.skip(f"{path} not found")
  raw = json.loads(path.read_text(encoding="utf-8"))
  problems = load_svamp(path)
  assert len(raw) == len(problems) == 1000
  for rec, problem in zip(raw, problems):
    value = rec["Answer"]
    short = repr(value)[:-2] if repr(value).endswith(".0") else repr(value)
    spellings = [
      short,
      repr(value),
      f"${short}",
      f"{short} dollars",
      f"{short}.",
      f"{value:,}" if value == int(value) else short,
      f"$ {short}",
    ]
    for s in spellings:
      assert answers_match(s, value), (rec["ID"], s, value)
      assert answers_match(s, problem.answer), (rec["ID"], s, problem.answer)
    assert not answers_match(short, value + 1)
    assert answers_match(extract_answer(problem.reference), value)
