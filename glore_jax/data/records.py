"""Records shared between pipeline stages, serialised as one JSON object per line.

Stages talk to each other only through files in the work directory, so a record must survive a
write/read round trip unchanged, and a bad line must be reported with its file, line and field
(or skipped and counted when the caller asks for that) instead of silently shifting data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

from etils import epath

from glore_jax.data.grading import extract_answer
from glore_jax.data.steps import split_steps
from glore_jax.errors import InputError

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
T = TypeVar("T")


class FieldError(ValueError):
  """A value that does not fit a record field; `read_jsonl` adds the file and line."""

  def __init__(self, field: str, message: str):
    super().__init__(f"field {field!r}: {message}")
    self.field = field
    self.message = message


class DataError(InputError, ValueError):
  """A malformed input record, located by file, line and (when known) field."""

  def __init__(
    self, path: str | os.PathLike, line: int, field: str | None, message: str, *, unit: str = "line"
  ):
    p = os.fspath(path)
    where = f"{p}:{line}" if unit == "line" else f"{p}, {unit} {line}"
    what = f"field {field!r}: {message}" if field is not None else message
    super().__init__(f"{where}: {what}")
    self.path = os.fspath(path)
    self.line = line  # 1-based line number (or record number when unit != "line")
    self.unit = unit
    self.field = field
    self.message = message


class RecordList(list):
  """A plain list of records that also remembers what was skipped while reading it.

  `skipped` holds one `DataError` per skipped line so callers can report "read 7,470, skipped 3".
  """

  def __init__(self, items: Iterable[Any] = (), skipped: Iterable[DataError] = ()):
    super().__init__(items)
    self.skipped: list[DataError] = list(skipped)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)


# --------------------------------------------------------------------------------------------
# Typed dataclass <-> JSON conversion


def _check_value(tp: Any, value: Any, field: str) -> Any:
  """Validate `value` against the annotation `tp` and convert JSON lists to tuples."""
  origin = typing.get_origin(tp)
  if tp is Any:
    return value
  if origin in (typing.Union, types.UnionType):
    for option in typing.get_args(tp):
      try:
        return _check_value(option, value, field)
      except FieldError:
        pass
    raise FieldError(field, f"expected {_type_name(tp)}, got {_json_type(value)}")
  if tp is type(None):
    if value is None:
      return None
    raise FieldError(field, f"expected null, got {_json_type(value)}")
  if tp is bool:
    if isinstance(value, bool):
      return value
    raise FieldError(field, f"expected a boolean, got {_json_type(value)}")
  if tp is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    raise FieldError(field, f"expected an integer, got {_json_type(value)}")
  if tp is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    raise FieldError(field, f"expected a number, got {_json_type(value)}")
  if tp is str:
    if isinstance(value, str):
      return value
    raise FieldError(field, f"expected a string, got {_json_type(value)}")
  if origin is tuple:
    args = typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
      raise FieldError(field, f"expected a list, got {_json_type(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_check_value(args[0], v, f"{field}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
      raise FieldError(field, f"expected {len(args)} items, got {len(value)}")
    return tuple(_check_value(a, v, f"{field}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
  if origin is dict:
    key_t, val_t = typing.get_args(tp)
    if not isinstance(value, dict):
      raise FieldError(field, f"expected an object, got {_json_type(value)}")
    return {
      _check_value(key_t, k, field): _check_value(val_t, v, f"{field}[{k!r}]")
      for k, v in value.items()
    }
  raise TypeError(f"record field {field!r} has an unsupported type {tp!r}")


def _type_name(tp: Any) -> str:
  return getattr(tp, "__name__", None) or str(tp)


def _json_type(value: Any) -> str:
  if value is None:
    return "null"
  return {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "list",
    dict: "object",
  }.get(type(value), type(value).__name__) + f" {value!r:.40}"


def _to_jsonable(value: Any) -> Any:
  if isinstance(value, tuple):
    return [_to_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {k: _to_jsonable(v) for k, v in value.items()}
  return value


class JsonRecord:
  """Mixin for frozen dataclasses: `to_json()` / `from_json()` with field-level validation.

  Supported field types: str, int, float, bool, None, unions of those, tuple[X, ...] and
  dict[str, X]. Unknown or missing keys are errors: a renamed field must not load as a default.
  """

  def to_json(self) -> dict[str, Any]:
    """The record as a JSON-ready dict (tuples as lists)."""
    return {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

  @classmethod
  def from_json(cls: type[T], obj: Mapping[str, Any]) -> T:
    """The record from a JSON object; fields are checked against the dataclass's types.

    Args:
      obj: the parsed JSON object.

    Raises:
      FieldError: not an object, an unknown or missing field, or a field of the wrong type.
    """
    if not isinstance(obj, Mapping):
      raise FieldError("<record>", f"expected a JSON object, got {_json_type(obj)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - set(fields))
    if unknown:
      raise FieldError(unknown[0], f"unknown field for {cls.__name__}")
    kwargs = {}
    for name, f in fields.items():
      if name not in obj:
        has_default = (
          f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        if has_default:
          continue
        raise FieldError(name, f"missing required field of {cls.__name__}")
      kwargs[name] = _check_value(hints[name], obj[name], name)
    try:
      return cls(**kwargs)
    except FieldError:
      raise
    except (TypeError, ValueError) as e:  # __post_init__ validation
      raise FieldError("<record>", str(e)) from e


@dataclasses.dataclass(frozen=True)
class Problem(JsonRecord):
  """A math word problem with its reference solution and gold answer (as text, e.g. "72")."""

  id: str
  question: str
  reference: str
  answer: str
  source: str


@dataclasses.dataclass(frozen=True)
class Solution(JsonRecord):
  """A solution text, its steps (lines) and the extracted final answer (None if there is none)."""

  text: str
  steps: tuple[str, ...]
  answer: str | None

  @classmethod
  def from_text(
    cls, text: str, *, separator: str = "\n", fallback_last_number: bool = False
  ) -> Solution:
    """Build a Solution from raw model output, splitting steps and extracting the answer.

    Args:
      text: the model's output (no prompt).
      separator: the step separator.
      fallback_last_number: without a `####` line, the answer is the last number in the text.
    """
    return cls(
      text=text,
      steps=tuple(split_steps(text, separator)),
      answer=extract_answer(text, fallback_last_number=fallback_last_number),
    )


# --------------------------------------------------------------------------------------------
# JSONL files


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
  """Write records (objects with `to_json()`, or plain dicts) one per line; returns the count.

  Writes to a temporary file and renames it, so a crash never leaves a half-written file that a
  resumed stage would mistake for finished output.

  Args:
    path: the output file (a local path); replaced when it exists.
    records: the records to write, in order.
  """
  path = os.fspath(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  n = 0
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      for rec in records:
        obj = rec.to_json() if hasattr(rec, "to_json") else rec
        f.write(json.dumps(obj, ensure_ascii=False, allow_nan=False))
        f.write("\n")
        n += 1
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return n


# A JSONL line longer than this is an error, found without reading the line into memory
# (GSM8K's longest line is about 2 KB; one bad 50 MB line must not cost gigabytes).
MAX_LINE_BYTES = 1 << 20


def _lines(f, path, max_line_bytes: int, on_error: OnError, skipped):
  """(line number, text) of a binary file, each line capped and decoded as UTF-8."""
  lineno = 0
  while True:
    raw = f.readline(max_line_bytes + 1)
    if not raw:
      return
    lineno += 1
    if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
      while raw and not raw.endswith(b"\n"):  # skip the rest of the line, a block at a time
        raw = f.readline(1 << 20)
      handle_bad_record(
        DataError(
          path,
          lineno,
          None,
          f"line longer than {max_line_bytes} bytes (the cap "
          "of glore_jax.data.records.MAX_LINE_BYTES); is this a JSONL file?",
        ),
        on_error,
        skipped,
      )
      continue
    try:
      yield lineno, raw.decode("utf-8")
    except UnicodeDecodeError as e:
      handle_bad_record(
        DataError(
          path, lineno, None, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)"
        ),
        on_error,
        skipped,
      )


def iter_jsonl_objects(
  path: str | os.PathLike,
  *,
  on_error: OnError = "raise",
  skipped: list[DataError] | None = None,
  max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yield (line_number, parsed JSON object) for each non-blank line of a JSONL file (a local
  path or any etils.epath URI such as gs://bucket/gsm8k/train.jsonl); lines longer than
  `max_line_bytes` or not UTF-8 are errors naming the file and line.

  Args:
    path: the JSONL file.
    on_error: "raise" at the first bad line, or "skip" it.
    skipped: with "skip", the skipped lines' errors are appended here; None: not kept.
    max_line_bytes: the longest line accepted, in bytes.

  Yields:
    (1-based line number, the line's JSON object).

  Raises:
    DataError: with on_error="raise", a line that is too long, not UTF-8, not JSON, or not a
      JSON object.
  """
  check_on_error(on_error)
  with epath.Path(path).open("rb") as f:
    for lineno, line in _lines(f, path, max_line_bytes, on_error, skipped):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        err = DataError(path, lineno, None, f"not valid JSON ({e.msg} at column {e.colno})")
        handle_bad_record(err, on_error, skipped)
        continue
      if not isinstance(obj, dict):
        err = DataError(path, lineno, None, f"expected a JSON object, got {_json_type(obj)}")
        handle_bad_record(err, on_error, skipped)
        continue
      yield lineno, obj


def read_jsonl(
  path: str | os.PathLike, cls: type[T] | Callable[[dict], T], *, on_error: OnError = "raise"
) -> RecordList:
  """Read a JSONL file into records of `cls` (anything with `from_json`, or a callable).

  on_error="raise" raises `DataError` naming file, line and field at the first bad line;
  "skip" drops bad lines, logs a warning with the count and lists them in `result.skipped`.

  Args:
    path: the JSONL file (local path or etils.epath URI).
    cls: the record type (its `from_json` parses a line's object) or a parsing callable.
    on_error: "raise" or "skip" (see above).

  Raises:
    DataError: with on_error="raise", the first bad line.
  """
  check_on_error(on_error)
  parse = getattr(cls, "from_json", cls)
  out = RecordList()
  for lineno, obj in iter_jsonl_objects(path, on_error=on_error, skipped=out.skipped):
    try:
      out.append(parse(obj))
    except FieldError as e:
      handle_bad_record(DataError(path, lineno, e.field, e.message), on_error, out.skipped)
  if out.skipped:
    log.warning(
      "%s: skipped %d malformed line(s); first: %s",
      os.fspath(path),
      len(out.skipped),
      out.skipped[0],
    )
  return out


def check_on_error(on_error: str) -> None:
  """A ValueError unless `on_error` is 'raise' or 'skip' (checked before any file is read).

  Args:
    on_error: the caller's choice for bad records.
  """
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def handle_bad_record(err: DataError, on_error: OnError, skipped: list[DataError] | None) -> None:
  """Raises `err` ('raise'), or records it in `skipped` and goes on ('skip').

  Args:
    err: the bad record's error (file, line, field, what was expected).
    on_error: 'raise' or 'skip'.
    skipped: where skipped records' errors are kept (None: not kept).
  """
  if on_error == "raise":
    raise err
  if skipped is not None:
    skipped.append(err)
