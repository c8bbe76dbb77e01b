"""Resumable sharded stage outputs: skip finished shards, refuse config changes, hide temp files."""

from __future__ import annotations

import dataclasses
import fnmatch
import json

import pytest
from etils import epath

from glore_jax import workdir as wd
from glore_jax.atomic_io import temp_pattern, write_text_atomic
from glore_jax.workdir import (
  FingerprintMismatchError,
  MissingStageError,
  ShardedStage,
  fingerprint,
  mark_done,
  read_all,
  read_json,
  shard_name,
  shards_for_process,
  stage_done,
  write_json_atomic,
)

CONFIG = {"sorm": {"num_rollouts": 8, "consistency": True}, "seed": 0}
ITEMS = list(range(23))  # shard_size 5 -> 5 shards, the last one short


def square(chunk):
  return [{"x": x, "y": x * x} for x in chunk]


def make(tmp_path, *, config=CONFIG, items=ITEMS, p=0, n=1, name="label"):
  return ShardedStage(
    tmp_path / name,
    name,
    config=config,
    num_items=len(items),
    shard_size=5,
    process_index=p,
    process_count=n,
  )


def shard_files(stage_dir):
  names = (path.name for path in epath.Path(stage_dir).iterdir())
  return sorted(name for name in names if name.startswith("shard-"))


def test_layout_and_full_run(tmp_path):
  stage = make(tmp_path)
  assert stage.num_shards == 5
  bounds = [stage.shard_bounds(i) for i in range(5)]
  assert bounds == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
  assert stage.run(ITEMS, square) == [0, 1, 2, 3, 4]
  assert shard_files(stage.dir) == [shard_name(i, 5) for i in range(5)]
  assert shard_name(3, 10) == "shard-00003-of-00010.jsonl"
  assert read_all(stage.dir) == square(ITEMS)
  manifest = read_json(stage.dir / "manifest.json")
  assert manifest["stage"] == "label" and manifest["fingerprint"] == fingerprint(CONFIG)
  assert manifest["config"] == CONFIG and manifest["done"] is False


def test_rerun_skips_finished_shards_and_matches_an_uninterrupted_run(tmp_path):
  calls = []

  def crash_on_shard_3(chunk):
    if chunk[0] == 15:
      raise RuntimeError("preempted")
    calls.append(chunk[0])
    return square(chunk)

  stage = make(tmp_path)
  with pytest.raises(RuntimeError, match="preempted"):
    stage.run(ITEMS, crash_on_shard_3)
  assert calls == [0, 5, 10]
  assert make(tmp_path).pending_shards() == [3, 4]

  def record(chunk):
    calls.append(chunk[0])
    return square(chunk)

  progress = []
  assert make(tmp_path).run(ITEMS, record, on_shard=lambda i, k: progress.append((i, k))) == [3, 4]
  assert calls == [0, 5, 10, 15, 20]  # finished shards were not recomputed
  assert progress == [(3, 5), (4, 3)]
  assert make(tmp_path).run(ITEMS, record) == []  # a third run has nothing to do

  clean = make(tmp_path / "clean")
  clean.run(ITEMS, square)
  for i in range(5):
    name = shard_name(i, 5)
    assert (stage.dir / name).read_bytes() == (clean.dir / name).read_bytes()


def test_config_change_is_an_error_naming_stage_and_fix(tmp_path):
  make(tmp_path).run(ITEMS, square)
  changed = {"sorm": {"num_rollouts": 16, "consistency": True}, "seed": 0}
  with pytest.raises(FingerprintMismatchError) as e:
    make(tmp_path, config=changed)
  msg = str(e.value)
  assert "'label'" in msg and "sorm.num_rollouts" in msg
  assert "new --workdir" in msg and f"delete {tmp_path / 'label'}" in msg
  with pytest.raises(FingerprintMismatchError, match="num_items: 23 -> 30"):
    make(tmp_path, items=list(range(30)))
  # The same config written differently (key order, tuples) is the same config.
  make(tmp_path, config={"seed": 0, "sorm": {"consistency": True, "num_rollouts": 8}})
  assert fingerprint({"a": (1, 2)}) == fingerprint({"a": [1, 2]})
  with pytest.raises(TypeError, match="JSON-serialisable"):
    fingerprint({"a": object()})


def test_missing_outputs_say_which_stage_to_run(tmp_path):
  with pytest.raises(MissingStageError, match="run stage 'sample' first"):
    read_all(tmp_path / "sample")
  stage = make(tmp_path)
  stage.write_shard(0, square(ITEMS[0:5]))
  stage.write_shard(2, square(ITEMS[10:15]))
  with pytest.raises(
    MissingStageError, match=r"3 of 5 shards missing \(1, 3, 4\); run stage 'label'"
  ):
    read_all(stage.dir)
  with pytest.raises(MissingStageError, match="cannot mark stage 'label' done"):
    mark_done(stage.dir)


def test_temp_files_are_never_visible_as_shards(tmp_path, monkeypatch):
  stage = make(tmp_path)
  seen_before_rename = []
  real_replace = type(stage.dir).replace

  def spy_replace(self, target):
    seen_before_rename.append((self.name, shard_files(stage.dir)))
    return real_replace(self, target)

  monkeypatch.setattr(type(stage.dir), "replace", spy_replace)
  stage.write_shard(0, square(ITEMS[0:5]))
  tmp_name, visible = seen_before_rename[-1]
  assert tmp_name.startswith(".shard-00000-of-00005.jsonl.tmp-")
  assert visible == []  # the complete data exists only under the temp name

  def failing_replace(self, target):
    raise OSError("disk full")

  monkeypatch.setattr(type(stage.dir), "replace", failing_replace)
  with pytest.raises(OSError, match="disk full"):
    stage.write_shard(1, square(ITEMS[5:10]))
  assert sorted(path.name for path in stage.dir.iterdir()) == [
    "check-00000-of-00005.json",
    "manifest.json",
    shard_name(0, 5),
  ]


def test_stale_temp_files_from_a_killed_run_are_ignored_and_cleaned(tmp_path):
  stage = make(tmp_path)
  stale = stage.dir / f".{shard_name(1, 5)}.tmp-999-deadbeef"
  stale.write_text('{"x": 5, "y": "half written')
  assert stage.pending_shards() == [0, 1, 2, 3, 4]
  with pytest.raises(MissingStageError):
    read_all(stage.dir)
  make(tmp_path).run(ITEMS, square)
  assert not stale.exists()
  assert read_all(stage.dir) == square(ITEMS)


def test_multi_process_shard_assignment(tmp_path):
  assert shards_for_process(7, 0, 3) == [0, 3, 6]
  assert shards_for_process(7, 1, 3) == [1, 4]
  assert shards_for_process(7, 2, 3) == [2, 5]
  with pytest.raises(ValueError, match="process_index 3"):
    shards_for_process(7, 3, 3)

  items = list(range(33))  # 7 shards of 5
  done = {p: make(tmp_path, items=items, p=p, n=3).run(items, square) for p in (0, 1)}
  assert done == {0: [0, 3, 6], 1: [1, 4]}
  with pytest.raises(MissingStageError, match=r"\(2, 5\)"):
    read_all(tmp_path / "label")
  assert make(tmp_path, items=items, p=2, n=3).run(items, square) == [2, 5]
  assert read_all(tmp_path / "label") == square(items)


def test_mark_done_and_stage_done(tmp_path):
  stage = make(tmp_path)
  assert not stage_done(stage.dir)
  stage.run(ITEMS, square)
  mark_done(stage.dir, summary={"num_labels": 23})
  assert stage_done(stage.dir)
  manifest = read_json(stage.dir / "manifest.json")
  assert manifest["completed_shards"] == [0, 1, 2, 3, 4]
  assert manifest["summary"] == {"num_labels": 23}
  assert make(tmp_path).run(ITEMS, square) == []  # reopening a finished stage is fine
  assert not stage_done(tmp_path / "nothing-here")


@dataclasses.dataclass
class Rec:
  a: int
  b: list[str]


class WithToJson:
  def to_json(self):
    return {"kind": "custom"}


def test_records_parse_and_empty_stage(tmp_path):
  stage = ShardedStage(tmp_path / "mixed", "mixed", config={}, num_items=2, shard_size=5)
  stage.write_shard(0, [Rec(1, ["x"]), WithToJson()])
  assert read_all(stage.dir) == [{"a": 1, "b": ["x"]}, {"kind": "custom"}]
  assert read_all(stage.dir, parse=lambda d: d.get("a")) == [1, None]
  empty = ShardedStage(tmp_path / "empty", "empty", config={}, num_items=0, shard_size=5)
  assert empty.run([], square) == [0]
  assert read_all(empty.dir) == []
  with pytest.raises(ValueError, match="laid out for 0 items, got 1"):
    empty.run([1], square)
  with pytest.raises(ValueError, match="shard_size must be >= 1"):
    ShardedStage(tmp_path / "x", "x", config={}, num_items=1, shard_size=0)


def test_corrupt_shard_names_file_and_line(tmp_path):
  stage = make(tmp_path)
  stage.run(ITEMS, square)
  (stage.dir / shard_name(2, 5)).write_text('{"x": 10}\n{broken\n')
  with pytest.raises(ValueError, match=r"shard-00002-of-00005.jsonl:2: not valid JSON"):
    read_all(stage.dir)


def test_write_json_atomic(tmp_path):
  path = tmp_path / "results.json"
  write_json_atomic(path, {"b": 1, "a": [1.5]})
  assert json.loads(path.read_text()) == {"a": [1.5], "b": 1}
  with pytest.raises(ValueError):
    write_json_atomic(path, {"a": float("nan")})  # JSON has no NaN; the old file survives
  assert json.loads(path.read_text()) == {"a": [1.5], "b": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
  assert wd.MANIFEST == "manifest.json"


def test_temp_pattern_matches_exactly_the_temp_files_of_its_path(tmp_path, monkeypatch):
  # ShardedStage cleans a killed run's temps with temp_pattern: it must match the name the
  # atomic write really used, and neither the finished file nor another file's temps.
  path = epath.Path(tmp_path) / "shard-00001-of-00005.jsonl"
  used = []
  real_replace = type(path).replace

  def spy_replace(self, target):
    used.append(self.name)
    return real_replace(self, target)

  monkeypatch.setattr(type(path), "replace", spy_replace)
  write_text_atomic(path, "{}\n")
  assert path.read_text() == "{}\n"
  assert len(used) == 1 and used[0] != path.name
  assert fnmatch.fnmatchcase(used[0], temp_pattern(path))
  assert not fnmatch.fnmatchcase(path.name, temp_pattern(path))
  other = ".shard-00001-of-00005.jsonl.check.tmp-1-deadbeef"
  assert not fnmatch.fnmatchcase(other, temp_pattern(path))
  assert fnmatch.fnmatchcase(
    ".check-00001-of-00005.json.tmp-1-deadbeef",
    temp_pattern(path.parent / "check-00001-of-00005.json"),
  )
