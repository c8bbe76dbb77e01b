"""The whole GSM8K (7,473 train + 1,319 test) through the loader, grading and step splitting."""

from __future__ import annotations

import re

import pytest

from glore_jax.data.grading import answers_match, extract_answer
from glore_jax.data.records import DataError
from glore_jax.data.sources import load_gsm8k_jsonl, load_problems
from glore_jax.data.steps import join_steps, split_steps


def _remove_marks_by_hand(text: str) -> str:
  """An independent oracle for calculator-mark removal: scan for '<<' ... '>>' pairs."""
  out, i = [], 0
  while True:
    j = text.find("<<", i)
    if j < 0:
      return "".join(out) + text[i:]
    k = text.find(">>", j)
    out.append(text[i:j])
    i = k + 2


@pytest.mark.parametrize("split, count", [("train", 7473), ("test", 1319)])
def test_every_reference_grades_and_splits(shared_data, gsm8k_raw, split, count):
  raw = gsm8k_raw[split]
  problems = load_gsm8k_jsonl(shared_data / "gsm8k" / f"{split}.jsonl")
  assert len(raw) == len(problems) == count and problems.num_skipped == 0
  assert len({p.id for p in problems}) == count
  for rec, p in zip(raw, problems):
    assert p.question == rec["question"].strip()
    gold_text = rec["answer"].rsplit("####", 1)[1].strip()
    gold = int(gold_text.replace(",", ""))  # every GSM8K gold answer is an integer
    assert p.answer == str(gold)
    # The reference's own final answer grades correct against the gold, in every spelling.
    assert extract_answer(p.reference) == gold_text
    assert answers_match(extract_answer(p.reference), p.answer)
    assert answers_match(extract_answer(rec["answer"]), gold_text)
    assert not answers_match(extract_answer(p.reference), gold + 1)
    # Calculator marks are gone, and nothing else changed.
    assert "<<" not in p.reference and ">>" not in p.reference
    assert p.reference == _remove_marks_by_hand(rec["answer"]).strip()
    # Steps are the non-blank lines, the last one is the answer line.
    lines = [line.strip() for line in p.reference.splitlines() if line.strip()]
    steps = split_steps(p.reference)
    assert steps == lines
    assert steps[-1].startswith("####") and all("####" not in s for s in steps[:-1])
    assert split_steps(join_steps(steps)) == steps


def test_keep_calculator_marks(shared_data, gsm8k_raw):
  problems = load_gsm8k_jsonl(shared_data / "gsm8k" / "test.jsonl", keep_calculator_marks=True)
  assert problems[0].reference == gsm8k_raw["test"][0]["answer"].strip()
  assert sum("<<" in p.reference for p in problems) > 1000


def test_registry_gsm8k(shared_data):
  problems = load_problems("gsm8k", "test", data_dir=shared_data / "gsm8k")
  assert len(problems) == 1319 and problems[0].id == "gsm8k-test-0"


# --- malformed files --------------------------------------------------------------------------

GOOD = '{"question": "What is 2+2?", "answer": "2+2=<<2+2=4>>4\\n#### 4"}'


@pytest.mark.parametrize(
  "bad_line, field, words",
  [
    ('{"question": "q", "answer": ', None, "not valid JSON"),
    ('{"answer": "x\\n#### 4"}', "question", "missing"),
    ('{"question": "q"}', "answer", "missing"),
    ('{"question": "q", "answer": 4}', "answer", "expected a string"),
    ('{"question": "q", "answer": "2+2=4"}', "answer", "no '#### <number>'"),
    ('{"question": "q", "answer": "x\\n#### four"}', "answer", "not a number"),
    ('{"question": "q", "answer": "x\\n#### "}', "answer", "not a number"),
    ('{"question": "  ", "answer": "x\\n#### 4"}', "question", "empty"),
  ],
)
def test_malformed_gsm8k_lines(tmp_path, bad_line, field, words):
  path = tmp_path / "train.jsonl"
  path.write_text("\n".join([GOOD, GOOD, bad_line, GOOD]) + "\n", encoding="utf-8")
  with pytest.raises(DataError) as info:
    load_gsm8k_jsonl(path)
  msg = str(info.value)
  assert msg.startswith(f"{path}:3: ") and words in msg
  assert info.value.field == field and info.value.line == 3
  if field:
    assert f"field {field!r}" in msg

  got = load_gsm8k_jsonl(path, on_error="skip")
  assert [p.id for p in got] == ["gsm8k-train-0", "gsm8k-train-1", "gsm8k-train-3"]
  assert got.num_skipped == 1 and got.skipped[0].line == 3


def test_skip_mode_logs_the_count(tmp_path, caplog):
  path = tmp_path / "test.jsonl"
  path.write_text("\n".join(["nope", GOOD, "{}", GOOD]) + "\n", encoding="utf-8")
  got = load_gsm8k_jsonl(path, on_error="skip")
  assert len(got) == 2 and [e.line for e in got.skipped] == [1, 3]
  assert re.search(r"skipped 2 malformed", caplog.text)
