"""Records: exact JSONL round trips and located errors for malformed lines."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glore_jax.data.records import (
  DataError,
  JsonRecord,
  Problem,
  RecordList,
  Solution,
  read_jsonl,
  write_jsonl,
)

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
problems = st.builds(Problem, id=texts, question=texts, reference=texts, answer=texts, source=texts)
solutions = st.builds(
  Solution, text=texts, steps=st.lists(texts, max_size=5).map(tuple), answer=st.none() | texts
)


@settings(
  max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(problems, max_size=5), st.lists(solutions, max_size=5))
def test_jsonl_round_trip_is_exact(tmp_path, ps, ss):
  write_jsonl(tmp_path / "p.jsonl", ps)
  write_jsonl(tmp_path / "s.jsonl", ss)
  assert read_jsonl(tmp_path / "p.jsonl", Problem) == ps
  back = read_jsonl(tmp_path / "s.jsonl", Solution)
  assert back == ss
  assert all(type(s.steps) is tuple for s in back)


def test_solution_from_text():
  s = Solution.from_text("a = <<1+1=2>>2\n\n  b  \n#### 2")
  assert s.steps == ("a = <<1+1=2>>2", "b", "#### 2")
  assert s.answer == "2"
  assert Solution.from_text("no answer").answer is None


def _write_lines(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


GOOD = json.dumps(Problem("p1", "q", "r\n#### 1", "1", "t").to_json())


@pytest.mark.parametrize(
  "bad_line, field, words",
  [
    ('{"id": "p2", "question": "q"', None, "not valid JSON"),
    ("[1, 2]", None, "expected a JSON object"),
    ('{"id": "p2", "question": "q", "reference": "r", "source": "t"}', "answer", "missing"),
    (
      '{"id": 3, "question": "q", "reference": "r", "answer": "1", "source": "t"}',
      "id",
      "expected a string",
    ),
    (
      '{"id": "p", "question": "q", "reference": "r", "answer": "1", "source": "t", "x": 1}',
      "x",
      "unknown field",
    ),
  ],
)
def test_read_jsonl_errors_name_file_line_and_field(tmp_path, bad_line, field, words):
  path = _write_lines(tmp_path / "problems.jsonl", [GOOD, "", bad_line, GOOD])
  with pytest.raises(DataError) as info:
    read_jsonl(path, Problem)
  err = info.value
  assert (err.path, err.line, err.field) == (str(path), 3, field)
  assert str(path) in str(err) and ":3:" in str(err) and words in str(err)
  if field:
    assert repr(field) in str(err)

  got = read_jsonl(path, Problem, on_error="skip")
  assert isinstance(got, RecordList) and len(got) == 2 and got.num_skipped == 1
  assert got.skipped[0].line == 3


def test_solution_field_types_are_checked(tmp_path):
  path = _write_lines(
    tmp_path / "s.jsonl", [json.dumps({"text": "t", "steps": ["a", 1], "answer": None})]
  )
  with pytest.raises(DataError, match=r"s\.jsonl:1: field 'steps\[1\]': expected a string"):
    read_jsonl(path, Solution)


def test_on_error_is_validated(tmp_path):
  path = _write_lines(tmp_path / "p.jsonl", [GOOD])
  with pytest.raises(ValueError, match="on_error"):
    read_jsonl(path, Problem, on_error="ignore")


@dataclasses.dataclass(frozen=True)
class _Labelled(JsonRecord):
  problem_id: str
  labels: tuple[int, ...]
  values: tuple[float, ...]
  weights: dict[str, float]
  note: str | None = None


def test_json_record_mixin_other_types(tmp_path):
  rec = _Labelled("p", (1, 0), (0.25, 1.0), {"a": 0.5})
  write_jsonl(tmp_path / "l.jsonl", [rec])
  assert read_jsonl(tmp_path / "l.jsonl", _Labelled) == [rec]
  with pytest.raises(DataError, match="'labels\\[0\\]': expected an integer"):
    _write_lines(
      tmp_path / "b.jsonl",
      [json.dumps({"problem_id": "p", "labels": [True], "values": [], "weights": {}})],
    )
    read_jsonl(tmp_path / "b.jsonl", _Labelled)


def test_write_jsonl_is_atomic_and_rejects_nan(tmp_path):
  path = tmp_path / "x.jsonl"
  write_jsonl(path, [Problem("a", "q", "r", "1", "s")])
  with pytest.raises(ValueError):
    write_jsonl(path, [_Labelled("p", (), (float("nan"),), {})])
  assert read_jsonl(path, Problem)[0].id == "a"  # the old file is intact
  assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]  # no temporary file left behind
