"""Resumable, sharded stage outputs in the work directory (local or gs://, via etils.epath).

Layout of one stage:

    <workdir>/<stage>/manifest.json                 stage name, config fingerprint, shard layout
    <workdir>/<stage>/shard-00003-of-00010.jsonl    items [3*S, 4*S), one JSON record per line

A shard file appears only once complete: it is written to a hidden temp name and renamed (on GCS
the object appears only when the copy finishes), so *the shard files are the record of finished
work*. The manifest is written once when the stage starts and once more by `mark_done`; a shared
"completed shards" list updated by several processes would lose updates, so it is listed only at the
end. A rerun with the same config skips finished shards; with another config it stops with an error
instead of mixing outputs of two configurations. Process p of n handles shards i with i % n == p.

Atomic writes and JSON reads are glore_jax.atomic_io's (re-exported here: read_json,
write_json_atomic, CorruptFileError).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from etils import epath

from glore_jax.atomic_io import (
  CorruptFileError,
  PathLike,
  read_json,
  temp_pattern,
  write_json_atomic,
  write_text_atomic,
)
from glore_jax.errors import InputError

__all__ = [
  "MANIFEST",
  "CorruptFileError",
  "CorruptShardError",
  "FingerprintMismatchError",
  "MissingStageError",
  "ShardedStage",
  "damaged_shards",
  "fingerprint",
  "iter_all",
  "mark_done",
  "mark_undone",
  "read_all",
  "read_json",
  "read_manifest",
  "shard_name",
  "shards_for_process",
  "stage_done",
  "write_json_atomic",
]

MANIFEST = "manifest.json"
T = TypeVar("T")


class FingerprintMismatchError(InputError):
  """The stage folder holds outputs of a different configuration."""


class MissingStageError(InputError, FileNotFoundError):
  """A stage's outputs are absent or incomplete."""


class CorruptShardError(CorruptFileError):
  """A shard does not match the record count / checksum written beside it."""


# --------------------------------------------------------------------------------------------
# Small helpers


def _canonical(config: Any) -> Any:
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    config = config.to_dict()
  try:
    return json.loads(json.dumps(config, sort_keys=True, allow_nan=False))
  except (TypeError, ValueError) as e:
    raise TypeError(
      f"stage config must be JSON-serialisable (plain numbers, strings, lists, "
      f"dicts) to fingerprint it: {e}"
    ) from e


def fingerprint(config: Any) -> str:
  """sha256 of the canonical JSON of a config: equal configs, equal fingerprints."""
  text = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shard_name(index: int, num_shards: int) -> str:
  """The file name of shard `index`, zero-padded to sort in order.

  Args:
    index: the shard's index.
    num_shards: the stage's shard count (sets the padding width).
  """
  return f"shard-{index:05d}-of-{num_shards:05d}.jsonl"


def shards_for_process(num_shards: int, process_index: int, process_count: int) -> list[int]:
  """Shards of process p of n: i % n == p, so every shard has exactly one owner.

  Args:
    num_shards: the stage's shard count.
    process_index: this process's index p.
    process_count: the number of processes n.

  Raises:
    ValueError: `process_index` is not in [0, process_count).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return list(range(process_index, num_shards, process_count))


def _to_json(record: Any) -> Any:
  if hasattr(record, "to_json"):
    return record.to_json()
  if dataclasses.is_dataclass(record) and not isinstance(record, type):
    return dataclasses.asdict(record)
  return record


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two JSON-like configs."""
  if isinstance(old, dict) and isinstance(new, dict):
    out: list[str] = []
    for k in sorted(set(old) | set(new), key=str):
      out += _changed_keys(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")
    return out
  return [] if old == new else [prefix.rstrip(".") or "<config>"]


# --------------------------------------------------------------------------------------------
# Stages


def read_manifest(stage_dir: PathLike) -> dict[str, Any] | None:
  """The stage's manifest, or None when the stage has none yet."""
  path = epath.Path(stage_dir) / MANIFEST
  return read_json(path) if path.exists() else None


def _stage_name(stage_dir: epath.Path, manifest: Mapping[str, Any] | None) -> str:
  return (manifest or {}).get("stage") or stage_dir.name


class ShardedStage:
  """One stage's sharded output folder.

  Usage (each process runs the loop; process 0 then merges):

      stage = ShardedStage(workdir / "label", "label", config=cfg, num_items=len(items),
                           shard_size=64, process_index=p, process_count=n)
      stage.run(items, lambda chunk: [label(x) for x in chunk])
      if p == 0:  # after all processes finished (a barrier)
          rows = read_all(stage.dir); mark_done(stage.dir)
  """

  def __init__(
    self,
    stage_dir: PathLike,
    name: str,
    *,
    config: Any,
    num_items: int,
    shard_size: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if shard_size < 1:
      raise ValueError(f"stage {name!r}: shard_size must be >= 1, got {shard_size}")
    if num_items < 0:
      raise ValueError(f"stage {name!r}: num_items must be >= 0, got {num_items}")
    self.dir = epath.Path(stage_dir)
    self.name = name
    self.num_items = num_items
    self.shard_size = shard_size
    self.num_shards = max(1, -(-num_items // shard_size))  # an empty stage still has shard 0
    self.process_index = process_index
    self.process_count = process_count
    self.my_shards = shards_for_process(self.num_shards, process_index, process_count)
    self.config = _canonical(config)
    self.fingerprint = fingerprint(self.config)
    self._open()

  def _open(self) -> None:
    """Create the manifest, or check that the existing one matches this config and layout."""
    self.dir.mkdir(parents=True, exist_ok=True)
    want = {
      "stage": self.name,
      "fingerprint": self.fingerprint,
      "config": self.config,
      "num_items": self.num_items,
      "shard_size": self.shard_size,
      "num_shards": self.num_shards,
    }
    have = read_manifest(self.dir)
    if have is None:
      write_json_atomic(self.dir / MANIFEST, {**want, "done": False})
      return
    self._check(have, want)
    self._remove_stale_temps()

  def _remove_stale_temps(self) -> None:
    """Delete temp files a killed run left for this process's shards (only the owner writes),
    and this process's shards that fail their checksum, so that they are computed again."""
    for i in self.my_shards:
      path = self.shard_path(i)
      for pattern in (temp_pattern(path), temp_pattern(_check_path(path))):
        for tmp in self.dir.glob(pattern):
          tmp.unlink()
      if path.exists():
        try:
          _verify_shard(path, path.read_bytes())
        except CorruptShardError as e:
          print(f"[{self.name}] {e}; recomputing it", flush=True)
          path.unlink()

  def _check(self, have: Mapping[str, Any], want: Mapping[str, Any]) -> None:
    layout = ("stage", "fingerprint", "num_items", "shard_size", "num_shards")
    diffs = [k for k in layout if have.get(k) != want[k]]
    if diffs:
      changed = _changed_keys(have.get("config"), self.config) if "fingerprint" in diffs else []
      detail = ", ".join(
        f"{k}: {have.get(k)!r} -> {want[k]!r}" for k in diffs if k != "fingerprint"
      )
      if changed:
        keys = f"changed config keys: {', '.join(changed)}"
        detail = f"{keys}, {detail}" if detail else keys
      raise FingerprintMismatchError(
        f"stage {self.name!r} in {self.dir} was started with a different configuration "
        f"({detail or 'fingerprint differs'}). Use a new --workdir, or delete {self.dir} "
        f"to recompute stage {self.name!r} with the new configuration."
      )

  def shard_path(self, index: int) -> epath.Path:
    """The file of shard `index`."""
    return self.dir / shard_name(index, self.num_shards)

  def shard_bounds(self, index: int) -> tuple[int, int]:
    """Items [start, stop) of shard `index`: fixed by the layout, not by who runs it."""
    if not 0 <= index < self.num_shards:
      raise IndexError(f"stage {self.name!r}: shard {index} not in [0, {self.num_shards})")
    start = index * self.shard_size
    return start, min(start + self.shard_size, self.num_items)

  def is_complete(self, index: int) -> bool:
    """Whether shard `index` has its finished file."""
    return self.shard_path(index).exists()

  def pending_shards(self) -> list[int]:
    """This process's shards that have no finished file yet."""
    return [i for i in self.my_shards if not self.is_complete(i)]

  def write_shard(self, index: int, records: Iterable[Any]) -> int:
    """Write one shard atomically (records: dicts, dataclasses, or objects with `to_json`).

    Args:
      index: the shard's index.
      records: the shard's records, in item order.

    Returns:
      The number of records written.
    """
    self.shard_bounds(index)  # validates the index
    lines = [json.dumps(_to_json(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records]
    text = "".join(lines)
    # the check first: a shard file never exists without the record count and checksum
    check = json.dumps(_shard_check(text.encode("utf-8"), len(lines)), sort_keys=True) + "\n"
    write_text_atomic(_check_path(self.shard_path(index)), check)
    write_text_atomic(self.shard_path(index), text)
    return len(lines)

  def run(
    self,
    items: Sequence[T],
    fn: Callable[[Sequence[T]], Iterable[Any]],
    on_shard: Callable[[int, int], None] | None = None,
  ) -> list[int]:
    """Process this process's pending shards with `fn(items[start:stop]) -> records`.

    Returns the shards processed now; `on_shard(index, num_records)` is called after each
    (for progress bars). Finished shards are skipped, so a rerun resumes where it stopped.

    Args:
      items: all of the stage's items (this process takes its shards' slices).
      fn: computes the records of one shard's items.
      on_shard: called as on_shard(index, num_records) after each shard; None: not called.

    Raises:
      ValueError: `items` is not as long as the stage was laid out for.
    """
    if len(items) != self.num_items:
      raise ValueError(
        f"stage {self.name!r} was laid out for {self.num_items} items, got {len(items)}"
      )
    done = []
    for i in self.pending_shards():
      start, stop = self.shard_bounds(i)
      n = self.write_shard(i, fn(items[start:stop]))
      done.append(i)
      if on_shard is not None:
        on_shard(i, n)
    return done


def _check_path(shard: epath.Path) -> epath.Path:
  """`check-00003-of-00010.json`: the record count and sha256 of shard-00003-of-00010.jsonl."""
  return shard.parent / (
    "check-" + shard.name.removeprefix("shard-").removesuffix(".jsonl") + ".json"
  )


def _shard_check(data: bytes, records: int) -> dict[str, Any]:
  return {"records": records, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _verify_shard(path: epath.Path, data: bytes) -> None:
  """Raises CorruptShardError naming `path` when its bytes do not match its check file."""
  check = _check_path(path)
  if not check.exists():
    raise CorruptShardError(f"{path}: no {check.name} (record count and checksum)")
  try:
    want = json.loads(check.read_text(encoding="utf-8"))
    want_records, want_sha = int(want["records"]), str(want["sha256"])
  except (ValueError, KeyError, TypeError) as e:
    raise CorruptShardError(f"{check}: unreadable record count and checksum ({e})") from None
  records = sum(1 for line in data.split(b"\n") if line.strip())
  if records != want_records or hashlib.sha256(data).hexdigest() != want_sha:
    raise CorruptShardError(
      f"{path}: {records} records and {len(data)} bytes, but it was written with "
      f"{want_records} records and {want.get('bytes')} bytes (checksum differs): the file is "
      "damaged or was edited"
    )


def damaged_shards(stage_dir: PathLike) -> list[tuple[str, str]]:
  """(shard name, why) of every present shard that fails its record count or checksum."""
  stage_dir = epath.Path(stage_dir)
  manifest = read_manifest(stage_dir)
  if manifest is None:
    return []
  n = manifest["num_shards"]
  bad = []
  for i in range(n):
    path = stage_dir / shard_name(i, n)
    if path.exists():
      try:
        _verify_shard(path, path.read_bytes())
      except CorruptShardError as e:
        bad.append((path.name, str(e).removeprefix(f"{path}: ")))
  return bad


def mark_undone(stage_dir: PathLike) -> None:
  """Marks a stage unfinished again (some of its shards are to be recomputed)."""
  stage_dir = epath.Path(stage_dir)
  manifest = read_manifest(stage_dir)
  if manifest is not None and manifest.get("done"):
    manifest["done"] = False
    manifest.pop("completed_shards", None)
    write_json_atomic(stage_dir / MANIFEST, manifest)


def _shard_status(stage_dir: epath.Path) -> tuple[dict[str, Any], str, int, list[int]]:
  """(manifest, stage name, number of shards, missing shard indices); no manifest is an error."""
  manifest = read_manifest(stage_dir)
  name = _stage_name(stage_dir, manifest)
  if manifest is None:
    raise MissingStageError(f"no output of stage {name!r} in {stage_dir}: run stage {name!r} first")
  n = manifest["num_shards"]
  return manifest, name, n, [i for i in range(n) if not (stage_dir / shard_name(i, n)).exists()]


def iter_all(stage_dir: PathLike) -> Iterator[dict[str, Any]]:
  """Yield every record of a stage, shard by shard in order (see `read_all`)."""
  stage_dir = epath.Path(stage_dir)
  _, name, n, missing = _shard_status(stage_dir)
  if missing:
    shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
    raise MissingStageError(
      f"stage {name!r} in {stage_dir} is incomplete: {len(missing)} of {n} shards missing "
      f"({shown}); run stage {name!r} first (it resumes where it stopped)"
    )
  for i in range(n):
    path = stage_dir / shard_name(i, n)
    data = path.read_bytes()
    records = []
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise CorruptShardError(
        f"{path}: not valid UTF-8 at byte {e.start}; rerun stage {name!r} "
        "to recompute the damaged shard"
      ) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise CorruptShardError(
            f"{path}:{lineno}: not valid JSON ({e.msg}); delete this shard and rerun stage {name!r}"
          ) from None
    try:
      _verify_shard(path, data)
    except CorruptShardError as e:
      raise CorruptShardError(
        f"{e}; rerun stage {name!r} (--config.stages={name}) to recompute the damaged shard"
      ) from None
    yield from records


def read_all(stage_dir: PathLike, parse: Callable[[dict[str, Any]], T] | None = None) -> list[Any]:
  """All records of a finished stage in item order; fails naming the stage if any shard is
  missing. `parse` (e.g. `MyRecord.from_json`) converts each JSON object.

  Args:
    stage_dir: the stage's folder.
    parse: converts each record's JSON object; None: the dicts themselves.

  Raises:
    MissingStageError: the stage has no output or a shard is missing.
    CorruptShardError: a shard fails its record count or checksum.
  """
  return [parse(r) if parse else r for r in iter_all(stage_dir)]


def stage_done(stage_dir: PathLike) -> bool:
  """Whether `mark_done` has been called for this stage (all shards merged and checked)."""
  manifest = read_manifest(stage_dir)
  return bool(manifest and manifest.get("done"))


def mark_done(stage_dir: PathLike, summary: Mapping[str, Any] | None = None) -> None:
  """Record that the stage finished (call from process 0 after all shards exist).

  Checks every shard is present, then rewrites the manifest with done = true, the list of
  completed shards and an optional JSON summary (the stage's figures).

  Args:
    stage_dir: the stage's folder.
    summary: JSON-ready figures of the stage; None: none.

  Raises:
    MissingStageError: a shard is missing.
    CorruptShardError: a shard fails its record count or checksum.
  """
  stage_dir = epath.Path(stage_dir)
  manifest, name, n, missing = _shard_status(stage_dir)
  if missing:
    raise MissingStageError(
      f"cannot mark stage {name!r} done: shards {missing} of {n} missing "
      f"in {stage_dir}; run stage {name!r} on every process first"
    )
  bad = damaged_shards(stage_dir)
  if bad:
    raise CorruptShardError(
      f"cannot mark stage {name!r} done: {stage_dir / bad[0][0]}: {bad[0][1]}"
    )
  checks = [read_json(_check_path(stage_dir / shard_name(i, n))) for i in range(n)]
  manifest.update(
    done=True,
    completed_shards=list(range(n)),
    records=sum(c["records"] for c in checks),
    shard_checks={shard_name(i, n): c for i, c in enumerate(checks)},
  )
  if summary is not None:
    manifest["summary"] = _canonical(summary)
  write_json_atomic(stage_dir / MANIFEST, manifest)
