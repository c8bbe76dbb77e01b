"""SVAMP and TFDS adapters, and the source registry."""

from __future__ import annotations

import json
import sys

import pytest

from glore_jax.data.grading import answers_match, extract_answer
from glore_jax.data.records import DataError, Problem, RecordList
from glore_jax.data.sources import (
  SOURCES,
  load_problems,
  load_svamp,
  load_tfds_gsm8k,
  problems_from_gsm8k_records,
  register_source,
)


def test_svamp_real_file(shared_data):
  path = shared_data / "svamp" / "SVAMP.json"
  if not path.exists():
    pytest.skip(f"{path} not found")
  problems = load_svamp(path)
  assert len(problems) == 1000 and len({p.id for p in problems}) == 1000
  first = problems[0]
  assert first.id == "chal-1" and first.answer == "51" and first.source == "svamp"
  assert first.question == (
    "Each pack of dvds costs 76 dollars. If there is a discount of 25 "
    "dollars on each pack. How much do you have to pay to buy each pack?"
  )
  assert first.reference == "( 76.0 - 25.0 ) = 51\n#### 51"
  assert all(answers_match(extract_answer(p.reference), p.answer) for p in problems)
  assert load_problems("svamp", "test", data_dir=path.parent) == problems


def _svamp(tmp_path, records):
  path = tmp_path / "SVAMP.json"
  path.write_text(json.dumps(records), encoding="utf-8")
  return path


def test_svamp_malformed(tmp_path):
  good = {
    "ID": "a",
    "Body": "Tom has 3 pens.",
    "Question": "How many?",
    "Equation": "3",
    "Answer": 3.0,
  }
  path = _svamp(tmp_path, [good, dict(good, ID="b", Answer="three"), dict(good, ID="c")])
  with pytest.raises(DataError, match=r"SVAMP\.json, record 2: field 'Answer': 'three' is not a"):
    load_svamp(path)
  got = load_svamp(path, on_error="skip")
  assert [p.id for p in got] == ["a", "c"] and got.num_skipped == 1
  missing = _svamp(tmp_path, [good, {k: v for k, v in good.items() if k != "Body"}])
  with pytest.raises(DataError, match="record 2: field 'Body': missing"):
    load_svamp(missing)
  broken = tmp_path / "broken.json"
  broken.write_text('[{"ID": 1,,}]', encoding="utf-8")
  with pytest.raises(DataError, match=r"broken\.json:1: not valid JSON"):
    load_svamp(broken)
  with pytest.raises(ValueError, match="SVAMP is a test set"):
    load_problems("svamp", "train", path=path)


def test_records_adapter_accepts_bytes_and_names_records():
  records = [
    {"question": b"What is 1+1?", "answer": b"1+1=<<1+1=2>>2\n#### 2"},
    {"question": "q", "answer": "#### x"},
  ]
  with pytest.raises(DataError, match=r"tfds:gsm8k/test, record 2: field 'answer'"):
    problems_from_gsm8k_records(records, origin="tfds:gsm8k/test", id_prefix="gsm8k-test")
  got = problems_from_gsm8k_records(records, origin="x", id_prefix="p", on_error="skip")
  assert got == [Problem("p-0", "What is 1+1?", "1+1=2\n#### 2", "2", "gsm8k")]
  assert got.num_skipped == 1


def test_tfds_missing_gives_helpful_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
  with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
    load_tfds_gsm8k("test")


def test_tfds_gsm8k_offline(tmp_path, monkeypatch):
  """Prepare TFDS's real `gsm8k` builder from local files (no network), then read it back."""
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")
  from tensorflow_datasets.text.gsm8k import gsm8k as gsm8k_builder

  rows = {
    "train": [
      {
        "question": "Tom has 2 pens and buys 3. How many?",
        "answer": "He has 2+3=<<2+3=5>>5 pens.\n#### 5",
      },
      {
        "question": "Ann has 1,000 coins é. She spends 1. How many?",
        "answer": "1000-1=<<1000-1=999>>999\n#### 999",
      },
    ],
    "test": [{"question": "What is 6*7?", "answer": "6*7=<<6*7=42>>42\n#### 42"}],
  }
  files = {}
  for split, recs in rows.items():
    files[split] = tmp_path / f"{split}.jsonl"
    files[split].write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")

  def local_splits(self, dl_manager):
    return {k: self._generate_examples(v) for k, v in files.items()}

  monkeypatch.setattr(gsm8k_builder.Gsm8k, "_split_generators", local_splits)
  data_dir = tmp_path / "tfds"
  train = load_tfds_gsm8k("train", data_dir=data_dir)
  test = load_problems("gsm8k_tfds", "test", data_dir=data_dir, download=False)
  assert isinstance(train, RecordList)
  # TFDS shuffles on write: compare as sets of (question, reference, answer).
  assert {(p.question, p.reference, p.answer) for p in train} == {
    ("Tom has 2 pens and buys 3. How many?", "He has 2+3=5 pens.\n#### 5", "5"),
    ("Ann has 1,000 coins é. She spends 1. How many?", "1000-1=999\n#### 999", "999"),
  }
  assert [(p.question, p.answer, p.source) for p in test] == [("What is 6*7?", "42", "gsm8k")]
  # Ids follow TFDS's deterministic record order, which is not the JSONL line order.
  assert sorted(p.id for p in train) == ["gsm8k_tfds-train-0", "gsm8k_tfds-train-1"]


def test_registry():
  assert {"gsm8k", "gsm8k_tfds", "svamp", "synthetic"} <= set(SOURCES)
  with pytest.raises(ValueError, match="unknown problem source 'nope'"):
    load_problems("nope", "train")
  with pytest.raises(ValueError, match="needs data_dir"):
    load_problems("gsm8k", "train")
  got = load_problems("synthetic", "test", seed=3, n=5, max_steps=2)
  assert len(got) == 5 and all(p.reference.count("\n") == 2 for p in got)

  register_source("tiny", lambda split, **kw: [Problem("t", "q", "#### 1", "1", split)])
  try:
    got = load_problems("tiny", "dev")
    assert isinstance(got, RecordList) and got[0].source == "dev"
  finally:
    del SOURCES["tiny"]
