"""Malformed GSM8K JSONL: one line naming file and line, exit 3, before any training (issue 14,
items 5-7). Before: duplicate ids were accepted (one question graded against another's
answer), a 50 MB line took 10.7 GB of memory, non-UTF-8 bytes gave a byte offset without file
or line, and an empty file surfaced as "the previous stage produced none"."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from glore_jax.data.records import DataError
from glore_jax.data.sources import load_gsm8k_jsonl

from .conftest import assert_one_line_error, run_many

GOOD = [
  {
    "question": f"Tom has {i} pens and buys 2 more. How many?",
    "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}",
  }
  for i in range(6)
]


def _jsonl(records) -> bytes:
  return b"".join(json.dumps(r).encode() + b"\n" for r in records)


BAD_FILES = {
  "duplicate_ids": (
    _jsonl([{**r, "id": f"q{i % 4}"} for i, r in enumerate(GOOD)]),
    ["train.jsonl:5", "duplicate problem id 'q0' (first on line 1)"],
  ),
  "non_utf8": (
    _jsonl(GOOD[:2]) + b'{"question": "caf\xe9?", "answer": "1\\n#### 1"}\n',
    ["train.jsonl:3", "not valid UTF-8"],
  ),
  "empty": (b"", ["train.jsonl", "empty"]),
  "blank_lines_only": (b"\n\n  \n", ["train.jsonl:1", "no problems"]),
  "oversized_line": (
    _jsonl(GOOD[:1]) + b'{"question": "' + b"x" * (3 << 20) + b'"}\n',
    ["train.jsonl:2", "line longer than 1048576 bytes"],
  ),
}


@pytest.mark.parametrize("name", [n for n in BAD_FILES if n != "empty"])
def test_loader_names_file_and_line(tmp_path, name):
  data, needles = BAD_FILES[name]
  path = tmp_path / "train.jsonl"
  path.write_bytes(data)
  with pytest.raises(DataError) as e:
    load_gsm8k_jsonl(path)
  for needle in needles:
    assert needle in str(e.value)
  assert "\n" not in str(e.value)


def test_skip_mode_counts_duplicates_and_keeps_the_first(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_bytes(BAD_FILES["duplicate_ids"][0])
  out = load_gsm8k_jsonl(path, on_error="skip")
  assert [p.id for p in out] == ["q0", "q1", "q2", "q3"] and out.num_skipped == 2
  assert out[0].answer == "2"  # q0 is line 1's question with line 1's answer


def test_oversized_line_is_rejected_without_reading_it(tmp_path):
  path = tmp_path / "train.jsonl"
  with open(path, "wb") as f:
    f.write(_jsonl(GOOD[:1]))
    f.write(b'{"question": "')
    for _ in range(50):  # a 50 MB line
      f.write(b"x" * (1 << 20))
    f.write(b'"}\n')
    f.write(_jsonl(GOOD[1:2]))
  tracemalloc.start()
  out = load_gsm8k_jsonl(path, on_error="skip")
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert len(out) == 2 and "train.jsonl:2: line longer than" in str(out.skipped[0])
  assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for a 50 MB line"


@pytest.mark.slow
def test_pipeline_exits_3_with_one_line_before_training(tmp_path, subprocess_env):
  cases = {}
  for name in ("duplicate_ids", "non_utf8", "empty"):  # the others: in-process above
    data = BAD_FILES[name][0]
    folder = tmp_path / name / "gsm8k"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_bytes(data)
    (folder / "test.jsonl").write_bytes(_jsonl(GOOD))
    cases[name] = (
      tmp_path / name / "w",
      ["--config.data.source=gsm8k", f"--config.data.path={folder}"],
    )
  results = run_many(subprocess_env, cases)
  for name, (rc, _out, err) in results.items():
    needles = BAD_FILES[name][1]
    if name == "empty":  # found by the config check, before the work directory exists
      assert_one_line_error(rc, err, 2, "config.data.path", "train.jsonl is empty")
      assert not cases[name][0].exists()
      continue
    assert_one_line_error(rc, err, 3, *needles)
    assert not (cases[name][0] / "policy" / "train").exists(), f"{name}: training started"
