"""Files that readers never see half-written, and JSON reads that name a damaged file.

A write goes to a hidden, unique sibling name and is renamed into place (on GCS the object appears
only when the copy finishes), so a reader finds the old file or the new one, never part of one.
Paths are local or any etils.epath URI (gs:// included).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from etils import epath

from glore_jax.errors import InputError

__all__ = [
  "CorruptFileError",
  "PathLike",
  "read_json",
  "temp_pattern",
  "write_json_atomic",
  "write_text_atomic",
]

PathLike = str | os.PathLike


class CorruptFileError(InputError, ValueError):
  """A file of the work directory cannot be read back (truncated, damaged, edited)."""


def _temp_name(path: epath.Path) -> epath.Path:
  """A hidden, unique sibling name: never matches the shard pattern, never collides."""
  return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def temp_pattern(path: PathLike) -> str:
  """The glob pattern, within its folder, of temp files a killed `write_text_atomic(path)` left.

  Args:
    path: the file the writes were for.
  """
  return f".{epath.Path(path).name}.tmp-*"


def write_text_atomic(path: PathLike, data: str) -> None:
  """Write UTF-8 text so that readers see the old file or the new one, never half of one.

  Args:
    path: the file (local path or etils.epath URI); replaced when it exists.
    data: the whole content.
  """
  path = epath.Path(path)
  tmp = _temp_name(path)
  try:
    tmp.write_text(data, encoding="utf-8")
    tmp.replace(path)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def write_json_atomic(path: PathLike, obj: Any) -> None:
  """Write JSON so that readers see the old file or the new one, never half of one.

  Args:
    path: the file (local path or etils.epath URI).
    obj: a JSON-serialisable value.
  """
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: PathLike) -> Any:
  """A JSON file of the work directory; a damaged one raises CorruptFileError naming it."""
  try:
    return json.loads(epath.Path(path).read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise CorruptFileError(
      f"{path}: not valid JSON ({e}); the file is truncated or damaged: "
      "delete its stage folder (or use --config.recompute) to recompute it"
    ) from None
