"""Answer extraction and exact grading: every GLoRe label is "did this text reach the gold answer?".

Numbers are compared as exact rationals (`fractions.Fraction`) after a small, explicit
normalisation; text is never evaluated (no `eval`, no sympy), so model output cannot run code and a
wrong parse cannot silently turn into a right answer.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = [
  "answers_match",
  "extract_answer",
  "format_number",
  "normalize_number",
  "solution_correct",
  "strip_calculator_marks",
]

# GSM8K calculator annotations, e.g. "48/2 = <<48/2=24>>24".
_CALC_MARK = re.compile(r"<<[^<>]*>>")

# An unsigned number: "1,234" (groups of three), "1234", "12.5", ".5".
_UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_INTEGER = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_MINUS = "\u2212\u2013-"  # Unicode minus, en dash, ASCII hyphen (last: literal in [...])
_NUMBER = re.compile(
  rf"""^(?P<sign1>[+{_MINUS}])?\s*          # sign before the currency: -$5
         (?:\\?(?P<cur>[$€£]))?\s*             # currency symbol, optionally LaTeX-escaped
         (?P<sign2>[+{_MINUS}])?\s*            # or after it: $-5
         (?:(?P<num>{_INTEGER})\s*/\s*(?P<den>{_INTEGER})(?![.\d])   # fraction 3/4
            |(?P<dec>{_UNSIGNED}))
         \s*(?P<pct>%)?                        # percent sign is a unit, not a scale
         (?P<unit>\s*[^\W\d_][^\d]*)?$         # unit words without digits: "51 dollars"
    """,
  re.VERBOSE,
)
_TRAILING_PUNCT = re.compile(r"[\s.,;:!?]+$")
# Numbers inside free text, for the last-number fallback.
_NUMBER_IN_TEXT = re.compile(
  rf"(?<![\w.,])(?:[{_MINUS}](?=[$\d.]))?\$?(?:{_INTEGER}/{_INTEGER}(?![.\d])|{_UNSIGNED})"
)
_MAX_CHARS = 200  # longer "numbers" are model babble; also bounds big-integer parsing work


def strip_calculator_marks(text: str) -> str:
  """Remove GSM8K calculator annotations `<<48/2=24>>`, keeping the surrounding text."""
  return _CALC_MARK.sub("", text)


def extract_answer(text: str, *, fallback_last_number: bool = False) -> str | None:
  """The final answer of a solution: the rest of the first line that starts a `####` marker.

  Returns the raw answer text (e.g. "1,080" or "$5."), to be compared with `answers_match`.
  Without a marker, returns None, or the last number in the text if `fallback_last_number`
  (useful for models not trained on the GSM8K format; off by default because it rewards
  solutions that never commit to an answer).

  Args:
    text: the solution text.
    fallback_last_number: without a `####` line, return the last number in the text.
  """
  if text is None:
    return None
  text = strip_calculator_marks(text)
  m = re.search(r"####[ \t]*([^\n]*)", text)
  if m:
    answer = m.group(1).strip()
    return answer or None
  if fallback_last_number:
    numbers = _NUMBER_IN_TEXT.findall(text)
    if numbers:
      return numbers[-1]
  return None


def normalize_number(s: str | int | float | Fraction | None) -> Fraction | None:
  """Parse a written number into an exact Fraction, or None if it is not a single number.

  Accepts thousands separators ("1,080"), currency ("$5", "-$5", "$-5"), a percent sign or unit
  words after the number ("50%", "51 dollars"), trailing sentence punctuation, decimals ("51.0",
  ".5"), fractions ("3/4") and negatives. Text with a second number ("5 or 6") is rejected.
  Floats are read through their shortest decimal repr, so 0.1 means 1/10, not the binary value.
  """
  if s is None or isinstance(s, bool):
    return None
  if isinstance(s, Fraction):
    return s
  if isinstance(s, int):
    return Fraction(s)
  if isinstance(s, float):
    if not math.isfinite(s):
      return None
    s = repr(s)
  if not isinstance(s, str):
    return None
  s = _TRAILING_PUNCT.sub("", s.strip())
  if not s or len(s) > _MAX_CHARS:
    return None
  m = _NUMBER.match(s)
  if m is None or (m["sign1"] and m["sign2"]):
    return None
  negative = (m["sign1"] or m["sign2"] or "+") != "+"
  try:
    if m["den"] is not None:
      den = int(m["den"].replace(",", ""))
      if den == 0:
        return None
      value = Fraction(int(m["num"].replace(",", "")), den)
    else:
      value = Fraction(m["dec"].replace(",", ""))
  except ValueError:  # e.g. beyond Python's int-from-str digit limit
    return None
  return -value if negative else value


def answers_match(
  pred: str | int | float | Fraction | None, gold: str | int | float | Fraction | None
) -> bool:
  """True iff both parse as numbers with exactly the same rational value.

  Args:
    pred: the predicted answer (raw text such as "$1,080." or a number); None never matches.
    gold: the gold answer, in the same forms.
  """
  p = normalize_number(pred)
  g = normalize_number(gold)
  return p is not None and g is not None and p == g


def solution_correct(text: str, gold: str | int | float | Fraction | None) -> bool:
  """Whether a solution's `#### N` answer equals `gold` (False when it has no answer line).

  Args:
    text: the solution text.
    gold: the gold answer (text or number).
  """
  return answers_match(extract_answer(text), gold)


def format_number(x: Fraction | int) -> str:
  """Canonical text of a number: "72", "-3", "0.25" (terminating decimals) or "1/3"."""
  x = Fraction(x)
  if x.denominator == 1:
    return str(x.numerator)
  d = x.denominator
  twos = fives = 0
  while d % 2 == 0:
    d //= 2
    twos += 1
  while d % 5 == 0:
    d //= 5
    fives += 1
  if d != 1:
    return f"{x.numerator}/{x.denominator}"
  places = max(twos, fives)
  scaled = abs(x) * 10**places
  digits = str(scaled.numerator).rjust(places + 1, "0")
  sign = "-" if x < 0 else ""
  return f"{sign}{digits[:-places]}.{digits[-places:]}"
