"""Damaged outputs are found when read, named, and recomputed or refused (issue 14, items 3, 4,
7). Before: a shard cut at a line boundary was read as 42 of 48 samples; NaN or truncated
weights, a bit-flipped orbax checkpoint and a truncated manifest went unnoticed or ended in a
bare traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from glore_jax import workdir as wd
from glore_jax.model import create_model, load_hf, preset, save_hf

from .conftest import make_ctx, micro_config

ITEMS = [{"x": i, "y": f"line {i}"} for i in range(12)]


def _stage(tmp_path):
  return wd.ShardedStage(
    tmp_path / "sample", "sample", config={"k": 1}, num_items=len(ITEMS), shard_size=4
  )


def _cut_last_line(path):
  lines = path.read_bytes().splitlines(keepends=True)
  path.write_bytes(b"".join(lines[:-1]))  # still valid JSONL, one record short


def test_shard_cut_at_a_line_boundary_is_refused_then_recomputed(tmp_path):
  stage = _stage(tmp_path)
  stage.run(ITEMS, lambda chunk: chunk)
  wd.mark_done(stage.dir)
  manifest = wd.read_manifest(stage.dir)
  assert manifest["records"] == 12 and len(manifest["shard_checks"]) == 3
  good = (stage.dir / wd.shard_name(1, 3)).read_bytes()
  _cut_last_line(stage.dir / wd.shard_name(1, 3))
  with pytest.raises(
    wd.CorruptShardError,
    match=r"shard-00001-of-00003.jsonl: 3 records .* "
    r"written with 4 records",
  ):
    wd.read_all(stage.dir)
  assert wd.damaged_shards(stage.dir)[0][0] == wd.shard_name(1, 3)
  # a rerun of the stage recomputes the damaged shard (and only it)
  calls = []
  _stage(tmp_path).run(ITEMS, lambda chunk: calls.append(chunk) or chunk)
  assert calls == [ITEMS[4:8]]
  assert (stage.dir / wd.shard_name(1, 3)).read_bytes() == good
  assert wd.read_all(stage.dir) == ITEMS


def test_finished_stage_with_damaged_shard_is_repaired_by_its_stage(tmp_path):
  from glore_jax import fingerprint as fp
  from glore_jax.stages import outputs

  ctx = make_ctx(tmp_path, micro_config())
  stage = wd.ShardedStage(
    ctx.path("sample"),
    "sample",
    config=fp.record(ctx.config, "sample"),
    num_items=len(ITEMS),
    shard_size=4,
  )
  stage.run(ITEMS, lambda chunk: chunk)
  wd.mark_done(stage.dir)
  assert outputs.start(ctx, "sample") is True  # finished, current, intact: skipped
  _cut_last_line(stage.dir / wd.shard_name(2, 3))
  with pytest.raises(Exception, match="shard-00002-of-00003.jsonl") as e:
    outputs.require(ctx, "sample", "label") and wd.read_all(ctx.path("sample"))
  assert e.value.__class__.__name__ == "CorruptShardError"
  assert outputs.start(ctx, "sample") is False  # the stage recomputes it
  assert not (stage.dir / wd.shard_name(2, 3)).exists() and not wd.stage_done(stage.dir)


def test_truncated_manifest_names_the_file(tmp_path):
  stage = _stage(tmp_path)
  stage.run(ITEMS, lambda chunk: chunk)
  text = (stage.dir / "manifest.json").read_text()
  (stage.dir / "manifest.json").write_text(text[: len(text) // 2])
  with pytest.raises(wd.CorruptFileError, match=r"sample/manifest.json: not valid JSON"):
    wd.read_all(stage.dir)


# ---- model folders and weights ----------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
  """A tiny model saved by the stages' own `models.save` (manifest included)."""
  from glore_jax.data.tokenizer import load_tokenizer
  from glore_jax.stages import models

  root = tmp_path_factory.mktemp("models")
  ctx = make_ctx(root, micro_config())
  folder = ctx.path("policy")
  models.save(ctx, create_model(preset("tiny"), seed=0), load_tokenizer("embedded"), folder)
  return ctx, Path(folder)


def _copy(folder, dst):
  import shutil

  shutil.copytree(folder, dst)
  return dst


def test_model_folder_manifest_and_mode(model_folder):
  _, folder = model_folder
  manifest = json.loads((folder / "glore_manifest.json").read_text())
  entry = manifest["files"]["model.safetensors"]
  assert entry["bytes"] == (folder / "model.safetensors").stat().st_size
  assert entry["tensors"] == len(load_file(folder / "model.safetensors"))
  assert os.stat(folder).st_mode & 0o077, "model folder created mode 0700 (private to one user)"
  assert not list(folder.parent.glob(".model.partial-*"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_model_folder_is_refused_naming_the_file(model_folder, tmp_path, damage):
  from glore_jax.stages import models

  ctx, folder = model_folder
  bad = _copy(folder, tmp_path / "policy" / "model")
  weights = bad / "model.safetensors"
  data = bytearray(weights.read_bytes())
  if damage == "truncate":
    weights.write_bytes(bytes(data[: len(data) - 100]))
  elif damage == "flip":
    data[len(data) // 2] ^= 0x10
    weights.write_bytes(bytes(data))
  else:
    weights.unlink()
  with pytest.raises(Exception, match=r"model.safetensors") as e:
    models.load(ctx, bad)
  assert getattr(e.value, "exit_code", None) == 3
  assert "--config.recompute=policy" in str(e.value)


def test_nan_weights_are_refused_at_load(tmp_path):
  folder = tmp_path / "hf"
  save_hf(create_model(preset("tiny"), seed=0), folder)
  tensors = load_file(folder / "model.safetensors")
  tensors["model.layers.0.mlp.up_proj.weight"][3, 5] = np.nan
  save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(
    Exception,
    match=r"model.safetensors: tensor 'model.layers.0.mlp.up_proj"
    r".weight': 1 of \d+ values are NaN or Inf",
  ) as e:
    load_hf(folder)
  assert "learning rate" not in str(e.value)


def test_truncated_safetensors_without_manifest_names_the_file(tmp_path):
  folder = tmp_path / "hf"
  save_hf(create_model(preset("tiny"), seed=0), folder)
  path = folder / "model.safetensors"
  path.write_bytes(path.read_bytes()[:50])
  with pytest.raises(Exception, match=r"model.safetensors: not a readable safetensors file"):
    load_hf(folder)


def test_weight_map_entries_stay_inside_the_folder(tmp_path):
  folder = tmp_path / "hf"
  save_hf(create_model(preset("tiny"), seed=0), folder)
  (tmp_path / "outside.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
  (folder / "model.safetensors").unlink()
  (folder / "model.safetensors.index.json").write_text(
    json.dumps({"weight_map": {"model.norm.weight": "../outside.safetensors"}})
  )
  with pytest.raises(Exception, match=r"weight_map entry '../outside.safetensors' is not"):
    load_hf(folder)


# ---- orbax train-state checkpoints ------------------------------------------------------------


def test_bit_flipped_orbax_checkpoint_is_refused(tmp_path):
  import jax.numpy as jnp

  from glore_jax.training.checkpoint import Checkpoints

  state = {"w": jnp.arange(4096, dtype=jnp.float32) / 7.0, "step": jnp.int32(3)}
  ckpt = Checkpoints(tmp_path / "ck", async_save=False)
  ckpt.save(3, state, {"data_position": 3})
  ckpt.wait()
  restored, meta = ckpt.restore(3, state)
  assert np.array_equal(restored["w"], state["w"]) and len(meta["checksums"]) == 2
  ckpt.close()
  files = sorted(
    (p for p in (tmp_path / "ck" / "3" / "state").rglob("*") if p.is_file()),
    key=lambda p: p.stat().st_size,
  )
  target = files[-1]  # the array data
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0x04
  target.write_bytes(bytes(data))
  ckpt = Checkpoints(tmp_path / "ck", async_save=False)
  with pytest.raises(Exception, match=r"checkpoint .*ck/3") as e:
    ckpt.restore(3, state)
  assert getattr(e.value, "exit_code", None) == 3
  ckpt.close()
