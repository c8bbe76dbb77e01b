"""Problem sources: GSM8K (JSONL or TFDS), SVAMP and the embedded synthetic task, by name.

Every loader returns a `RecordList` of `Problem`s. Malformed input raises a `DataError` naming the
file, line (or record) and field; with `on_error="skip"` the bad records are dropped, counted in
`result.skipped` and logged, never silently ignored.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from etils import epath  # data folders may be gs:// URIs, which pathlib would mangle

from glore_jax.data.grading import (
  extract_answer,
  format_number,
  normalize_number,
  strip_calculator_marks,
)
from glore_jax.data.records import (
  DataError,
  FieldError,
  OnError,
  Problem,
  RecordList,
  check_on_error,
  handle_bad_record,
  iter_jsonl_objects,
)

__all__ = [
  "SOURCES",
  "gsm8k_problem",
  "load_gsm8k_jsonl",
  "load_problems",
  "load_svamp",
  "load_tfds_gsm8k",
  "problems_from_gsm8k_records",
  "register_source",
]

log = logging.getLogger(__name__)


def _text_field(obj: Mapping[str, Any], name: str) -> str:
  if name not in obj:
    raise FieldError(name, "missing")
  value = obj[name]
  if isinstance(value, bytes):  # TFDS Text features come back as UTF-8 bytes
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise FieldError(name, f"not valid UTF-8 ({e.reason})") from e
  if not isinstance(value, str):
    raise FieldError(name, f"expected a string, got {type(value).__name__}")
  if not value.strip():
    raise FieldError(name, "empty")
  return value


def gsm8k_problem(
  obj: Mapping[str, Any],
  *,
  problem_id: str,
  source: str = "gsm8k",
  keep_calculator_marks: bool = False,
) -> Problem:
  """One GSM8K record ({"question", "answer": "...\\n#### N"}) as a Problem; raises FieldError.

  The reference keeps GSM8K's text but, by default, without calculator marks `<<a*b=c>>`, which
  the policy should not learn to emit; the gold answer is stored canonically ("1,080" -> "1080").

  Args:
    obj: the record, with "question" and "answer" strings.
    problem_id: the Problem's id.
    source: the Problem's source name.
    keep_calculator_marks: keep the `<<a*b=c>>` marks in the reference.

  Raises:
    FieldError: a field is missing, empty, not a string, or the answer has no `#### N`.
  """
  question = _text_field(obj, "question").strip()
  answer_text = _text_field(obj, "answer")
  reference = answer_text if keep_calculator_marks else strip_calculator_marks(answer_text)
  reference = reference.strip()
  if "####" not in reference:
    raise FieldError("answer", "no '#### <number>' final-answer line")
  gold = extract_answer(reference)
  value = normalize_number(gold)
  if value is None:
    raise FieldError("answer", f"gold answer {gold!r} after '####' is not a number")
  if "id" in obj:
    problem_id = str(obj["id"])
  return Problem(
    id=problem_id,
    question=question,
    reference=reference,
    answer=format_number(value),
    source=source,
  )


def load_gsm8k_jsonl(
  path: str | os.PathLike,
  *,
  on_error: OnError = "raise",
  keep_calculator_marks: bool = False,
  source: str = "gsm8k",
) -> RecordList:
  """GSM8K in its official JSONL format; ids are "<source>-<file stem>-<0-based line index>".

  Args:
    path: the JSONL file (local path or etils.epath URI such as gs://).
    on_error: "raise" at the first bad line, or "skip" it (counted in `result.skipped`).
    keep_calculator_marks: keep the `<<a*b=c>>` marks in the references.
    source: the Problems' source name (and id prefix).

  Raises:
    DataError: an empty file, or with on_error="raise" the first malformed line or duplicate
      id (file, line, field).
  """
  check_on_error(on_error)
  out = RecordList()
  stem = epath.Path(path).stem
  first_line: dict[str, int] = {}  # problem id -> the line it came from
  for lineno, obj in iter_jsonl_objects(path, on_error=on_error, skipped=out.skipped):
    try:
      problem = gsm8k_problem(
        obj,
        problem_id=f"{source}-{stem}-{lineno - 1}",
        source=source,
        keep_calculator_marks=keep_calculator_marks,
      )
      if problem.id in first_line:
        # stages key answers by id: a duplicate would grade one question against another's
        raise FieldError(
          "id", f"duplicate problem id {problem.id!r} (first on line {first_line[problem.id]})"
        )
      first_line[problem.id] = lineno
      out.append(problem)
    except FieldError as e:
      handle_bad_record(DataError(path, lineno, e.field, e.message), on_error, out.skipped)
  if not out and not out.skipped:
    raise DataError(
      path,
      1,
      None,
      "no problems: the file is empty (GSM8K JSONL has one "
      '{"question": ..., "answer": ...} object per line)',
    )
  _log_skips(path, out)
  return out


def problems_from_gsm8k_records(
  records: Iterable[Mapping[str, Any]],
  *,
  origin: str,
  id_prefix: str,
  source: str = "gsm8k",
  on_error: OnError = "raise",
  keep_calculator_marks: bool = False,
) -> RecordList:
  """GSM8K-format dicts from any iterable (TFDS, Hugging Face datasets, a list) as Problems.

  `origin` names the collection in error messages ("tfds:gsm8k/test, record 12: ...").

  Args:
    records: the GSM8K-format dicts.
    origin: the collection's name in error messages.
    id_prefix: ids are "<id_prefix>-<0-based record index>".
    source: the Problems' source name.
    on_error: "raise" at the first bad record, or "skip" it.
    keep_calculator_marks: keep the `<<a*b=c>>` marks in the references.

  Raises:
    DataError: with on_error="raise", the first malformed record.
  """
  check_on_error(on_error)
  out = RecordList()
  for i, obj in enumerate(records):
    try:
      if not isinstance(obj, Mapping):
        raise FieldError("<record>", f"expected a mapping, got {type(obj).__name__}")
      out.append(
        gsm8k_problem(
          obj,
          problem_id=f"{id_prefix}-{i}",
          source=source,
          keep_calculator_marks=keep_calculator_marks,
        )
      )
    except FieldError as e:
      handle_bad_record(
        DataError(origin, i + 1, e.field, e.message, unit="record"), on_error, out.skipped
      )
  _log_skips(origin, out)
  return out


def load_tfds_gsm8k(
  split: str,
  data_dir: str | os.PathLike | None = None,
  *,
  download: bool = True,
  on_error: OnError = "raise",
  builder_name: str = "gsm8k",
) -> RecordList:
  """GSM8K through TensorFlow Datasets (builder `gsm8k`; needs the optional `tfds` extra).

  Prepares the dataset in array_record format, which TFDS reads without TensorFlow; a copy
  prepared earlier in TFRecord format is read through `as_dataset` (TensorFlow required).

  Args:
    split: the TFDS split, 'train' or 'test'.
    data_dir: the TFDS data folder; None: TFDS's default.
    download: download and prepare the dataset when it is not there yet.
    on_error: "raise" at the first bad record, or "skip" it.
    builder_name: the TFDS builder.

  Raises:
    ImportError: tensorflow_datasets is not installed (the `tfds` extra).
    DataError: with on_error="raise", the first malformed record.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
      "load_tfds_gsm8k needs TensorFlow Datasets: pip install tensorflow-datasets "
      "(or point the config at GSM8K's official JSONL files with source 'gsm8k')"
    ) from e
  data_dir = os.fspath(data_dir) if data_dir is not None else None
  builder = tfds.builder(builder_name, data_dir=data_dir, file_format="array_record")
  if download:
    builder.download_and_prepare()
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    records: Iterable[Mapping[str, Any]] = builder.as_data_source(split=split)
  else:
    records = tfds.as_numpy(builder.as_dataset(split=split))
  return problems_from_gsm8k_records(
    records,
    origin=f"tfds:{builder_name}/{split}",
    id_prefix=f"gsm8k_tfds-{split}",
    source="gsm8k",
    on_error=on_error,
  )


def load_svamp(path: str | os.PathLike, *, on_error: OnError = "raise") -> RecordList:
  """SVAMP's JSON array of {"ID", "Body", "Question", "Equation", "Answer"} as Problems.

  The question is Body + Question (a period is added when the body lacks final punctuation);
  the reference is "<Equation> = <answer>\\n#### <answer>" so it grades like a GSM8K solution.

  Args:
    path: the SVAMP JSON file.
    on_error: "raise" at the first bad record, or "skip" it.

  Raises:
    DataError: the file is not a JSON array, or (on_error="raise") a malformed record.
  """
  check_on_error(on_error)
  try:
    with epath.Path(path).open("r", encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(path, e.lineno, None, f"not valid JSON ({e.msg})") from e
  if not isinstance(data, list):
    raise DataError(path, 1, None, "expected a JSON array of problems")
  out = RecordList()
  for i, obj in enumerate(data):
    try:
      out.append(_svamp_problem(obj, i))
    except FieldError as e:
      handle_bad_record(
        DataError(path, i + 1, e.field, e.message, unit="record"), on_error, out.skipped
      )
  _log_skips(path, out)
  return out


def _svamp_problem(obj: Any, index: int) -> Problem:
  if not isinstance(obj, Mapping):
    raise FieldError("<record>", f"expected an object, got {type(obj).__name__}")
  body = _text_field(obj, "Body").strip()
  question = _text_field(obj, "Question").strip()
  if "Answer" not in obj:
    raise FieldError("Answer", "missing")
  value = normalize_number(obj["Answer"])
  if value is None:
    raise FieldError("Answer", f"{obj['Answer']!r} is not a number")
  answer = format_number(value)
  equation = obj.get("Equation")
  equation = equation.strip() if isinstance(equation, str) and equation.strip() else None
  sep = " " if body[-1] in ".?!" else ". "
  reference = (f"{equation} = {answer}\n" if equation else "") + f"#### {answer}"
  return Problem(
    id=str(obj.get("ID", f"svamp-{index}")),
    question=f"{body}{sep}{question}",
    reference=reference,
    answer=answer,
    source="svamp",
  )


def _log_skips(where: Any, out: RecordList) -> None:
  if out.skipped:
    log.warning(
      "%s: skipped %d malformed record(s); first: %s",
      os.fspath(where) if isinstance(where, os.PathLike) else where,
      out.num_skipped,
      out.skipped[0],
    )


# --------------------------------------------------------------------------------------------
# Registry


def _gsm8k_source(
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  path: str | os.PathLike | None = None,
  **kw: Any,
) -> RecordList:
  if path is None:
    if data_dir is None:
      raise ValueError(
        "source 'gsm8k' needs data_dir=<folder with train.jsonl/test.jsonl> "
        "or path=<file.jsonl> (or use source 'gsm8k_tfds' or 'synthetic')"
      )
    path = epath.Path(data_dir) / f"{split}.jsonl"
  return load_gsm8k_jsonl(path, **kw)


def _svamp_source(
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  path: str | os.PathLike | None = None,
  **kw: Any,
) -> RecordList:
  if split not in ("test", "all"):
    raise ValueError(f"SVAMP is a test set; split must be 'test' or 'all', got {split!r}")
  if path is None:
    if data_dir is None:
      raise ValueError("source 'svamp' needs path=<SVAMP.json> or data_dir=<its folder>")
    path = epath.Path(data_dir) / "SVAMP.json"
  return load_svamp(path, **kw)


def _synthetic_source(split: str, *, seed: int = 0, n: int = 1000, **config: Any) -> RecordList:
  from glore_jax.data.synthetic import make_split

  return RecordList(make_split(seed, n, split, config or None))


SOURCES: dict[str, Callable[..., RecordList]] = {
  "gsm8k": _gsm8k_source,
  "gsm8k_tfds": load_tfds_gsm8k,
  "svamp": _svamp_source,
  "synthetic": _synthetic_source,
}


def register_source(name: str, loader: Callable[..., RecordList]) -> None:
  """Add a source: `loader(split, **kw)` returning a list of Problems.

  Args:
    name: the source's name (as in `config.data.source`); replaces an existing one.
    loader: the loader, called as `loader(split, **kw)`.
  """
  SOURCES[name] = loader


def load_problems(source: str, split: str, **kw: Any) -> RecordList:
  """Problems of `split` from the named source, e.g. ("synthetic", "train", seed=0, n=5000).

  Args:
    source: a name in SOURCES.
    split: 'train' or 'test'.
    **kw: the loader's options (path, seed, n, on_error, ...).

  Raises:
    ValueError: `source` is unknown.
  """
  try:
    loader = SOURCES[source]
  except KeyError:
    raise ValueError(f"unknown problem source {source!r}; known: {sorted(SOURCES)}") from None
  result = loader(split, **kw)
  return result if isinstance(result, RecordList) else RecordList(result)
