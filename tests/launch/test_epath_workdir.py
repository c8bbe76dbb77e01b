"""Work directories anywhere: the stage outputs and the model folders go through etils.epath, so
`gs://bucket/run` behaves like a local folder.

There is no GCS here, so `fake_gcs` serves gs:// paths from a local folder through epath's own
mock backend, with object-store rules: a folder cannot be renamed. Code that bypassed epath
(open(), pathlib, os.path on the gs:// string) would fail or leave a stray local "gs:" folder in
the current directory, which the fixture checks for."""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing
from flax import nnx

from glore_jax import workdir as wd
from glore_jax.data.tokenizer import load_tokenizer
from glore_jax.defaults import get_config
from glore_jax.model import create_model, preset
from glore_jax.stages import models
from glore_jax.stages.common import Context


@contextlib.contextmanager
def fake_gcs(root):
  root = os.fspath(root)

  def local(path):
    path = os.fspath(path)
    return os.path.join(root, path[len("gs://") :]) if path.startswith("gs://") else path

  def back(path, remote):
    return "gs://" + os.path.relpath(path, root) if remote else path

  def one(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def two(fn, src, dst, **kwargs):
    return fn(local(src), local(dst), **kwargs)

  def rename(fn, src, dst):
    if os.fspath(src).startswith("gs://") and os.path.isdir(local(src)):
      raise OSError(f"{src}: object stores cannot rename a folder")
    return fn(local(src), local(dst))

  def glob(fn, pattern):
    remote = os.fspath(pattern).startswith("gs://")
    return [back(p, remote) for p in fn(local(pattern))]

  def walk(fn, top, **kwargs):
    remote = os.fspath(top).startswith("gs://")
    for dirpath, dirs, files in fn(local(top), **kwargs):
      yield back(dirpath, remote), dirs, files

  with epath_testing.mock_epath(
    open=one,
    exists=one,
    isdir=one,
    listdir=one,
    makedirs=one,
    mkdir=one,
    remove=one,
    rmtree=one,
    stat=one,
    copy=two,
    replace=two,
    rename=rename,
    glob=glob,
    walk=walk,
  ):
    yield


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  root = tmp_path / "bucket-root"
  root.mkdir()
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv("GLORE_CACHE", str(tmp_path / "cache"))
  with fake_gcs(root):
    yield root
  assert not (cwd / "gs:").exists(), "something wrote gs:// paths to the local disk"


def test_fake_gcs_is_an_object_store(bucket):
  d = epath.Path("gs://b/x")
  d.mkdir(parents=True)
  (d / "f.txt").write_text("hi")
  assert (bucket / "b" / "x" / "f.txt").read_text() == "hi"
  assert [p.name for p in d.iterdir()] == ["f.txt"]
  with pytest.raises(OSError, match="cannot rename a folder"):
    d.rename("gs://b/y")


def test_sharded_stage_round_trip_on_gs(bucket):
  stage_dir = epath.Path("gs://bucket/run") / "sample"
  items = list(range(10))
  stage = wd.ShardedStage(stage_dir, "sample", config={"k": 1}, num_items=10, shard_size=4)
  assert stage.run(items, lambda chunk: [{"x": x, "sq": x * x} for x in chunk]) == [0, 1, 2]
  rows = wd.read_all(stage_dir)
  assert [r["sq"] for r in rows] == [x * x for x in items]
  wd.mark_done(stage_dir, {"n": 10})
  assert wd.stage_done("gs://bucket/run/sample")
  assert (bucket / "bucket" / "run" / "sample" / "shard-00002-of-00003.jsonl").exists()
  assert not [p for p in (bucket / "bucket" / "run" / "sample").iterdir() if ".tmp-" in p.name]
  # a rerun resumes (nothing left) and a changed config is refused
  again = wd.ShardedStage(stage_dir, "sample", config={"k": 1}, num_items=10, shard_size=4)
  assert again.run(items, lambda chunk: pytest.fail("finished shards are skipped")) == []
  with pytest.raises(wd.FingerprintMismatchError, match="k"):
    wd.ShardedStage(stage_dir, "sample", config={"k": 2}, num_items=10, shard_size=4)


def _ctx(workdir) -> Context:
  return Context(config=get_config(), workdir=epath.Path(workdir), mesh=None)


def _tiny():
  tokenizer = load_tokenizer("embedded")
  cfg = preset("tiny").replace(
    vocab_size=len(tokenizer),
    bos_token_id=tokenizer.bos_token_id,
    eos_token_id=tokenizer.eos_token_id,
  )
  return create_model(cfg, seed=3), tokenizer


def _same_weights(a, b):
  sa, sb = nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)
  la, lb = jax.tree.leaves(sa), jax.tree.leaves(sb)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("where", ["gs", "local"])
def test_model_save_and_load_through_epath(bucket, tmp_path, where):
  workdir = "gs://bucket/run" if where == "gs" else epath.Path(tmp_path / "local-run")
  ctx = _ctx(workdir)
  model, tokenizer = _tiny()
  folder = ctx.path("policy")
  models.save(ctx, model, tokenizer, folder)
  assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
  assert (folder / "tokenizer_config.json").exists()
  # saving again replaces the folder (no rename on gs://: files are copied, config.json last)
  models.save(ctx, model, tokenizer, folder)
  leftovers = [p.name for p in folder.parent.iterdir() if p.name != folder.name]
  assert leftovers == [], leftovers
  loaded = models.load(ctx, folder)
  _same_weights(model, loaded)
  # the tokenizer saved beside the model (read from the local copy of a gs:// folder)
  from glore_jax.stages.common import tokenizer_for

  assert tokenizer_for(ctx.config, folder).get_vocab() == tokenizer.get_vocab()
  if where == "gs":
    from glore_jax.stages.local_files import is_local, local_copy

    cached = local_copy(folder)
    assert is_local(cached) and (cached / "config.json").exists()
    assert local_copy(folder) == cached  # reused, not copied again
  else:
    from glore_jax.stages.local_files import local_copy

    assert local_copy(folder) == folder


@pytest.fixture
def orbax_bucket(bucket, monkeypatch):
  """`bucket`, also for orbax: it writes arrays through TensorStore's own GCS driver, which
  epath's mock cannot reach, so that driver is pointed at the fake bucket's folder (a plain,
  non-hierarchical bucket). Everything else orbax does goes through epath."""
  from orbax.checkpoint._src.path import gcs_utils

  def kvstore(path):
    name, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(os.fspath(bucket), name, key)}

  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  return bucket


def test_training_checkpoints_on_gs_and_resumes(orbax_bucket, tmp_path):
  import json

  from glore_jax.training import SFTExample, TrainConfig, make_batches, train

  rng = np.random.default_rng(0)
  examples = [SFTExample([1] + rng.integers(8, 64, size=11).tolist(), 3) for _ in range(32)]
  batches = make_batches(examples, batch_size=8, kind="lm", shuffle=False)
  cfg = TrainConfig(
    total_steps=4,
    checkpoint_every=2,
    log_every=1,
    learning_rate=3e-3,
    shuffle=False,
    progress=False,
  )
  workdir = "gs://bucket/run/train"
  root = orbax_bucket / "bucket" / "run" / "train"
  # interrupted after 2 steps (the data runs out), then resumed with all of it
  _, first = train(create_model(preset("tiny"), seed=0), iter(batches[:2]), cfg, workdir)
  assert first["step"] == 2 and first["checkpoint"] == f"{workdir}/checkpoints/2"
  assert (root / "checkpoints" / "2").is_dir()
  resumed, metrics = train(create_model(preset("tiny"), seed=0), batches, cfg, workdir)
  assert metrics["complete"] and metrics["history"][0]["step"] == 3  # continued, not restarted
  assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["2", "4"]
  # metrics.jsonl holds both runs (rewritten whole: object stores do not append)
  rows = [json.loads(l) for l in (root / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  # the TensorBoard events were written locally and copied into the bucket
  assert len(list((root / "tensorboard").glob("events.out.tfevents.*"))) == 2
  # the same weights as an uninterrupted local run
  straight, _ = train(create_model(preset("tiny"), seed=0), batches, cfg, tmp_path / "local")
  _same_weights(straight, resumed)


# ---- inputs on gs://: the GSM8K folder (data.path) and the HF checkpoint (model.checkpoint)

GSM8K_LINES = [
  {
    "question": "Tom has 3 apples and buys 4 more. How many apples?",
    "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7",
  },
  {
    "question": "A box holds 6 eggs. How many eggs are in 2 boxes?",
    "answer": "2 boxes hold 2 * 6 = <<2*6=12>>12 eggs.\n#### 12",
  },
]


def _gsm8k_folder(root) -> None:
  import json

  root.mkdir(parents=True, exist_ok=True)
  for split in ("train", "test"):
    (root / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in GSM8K_LINES))


def test_gsm8k_data_path_on_gs(bucket, tmp_path):
  from glore_jax.config_check import validate
  from glore_jax.stages.common import problems

  _gsm8k_folder(bucket / "b" / "gsm8k")
  _gsm8k_folder(tmp_path / "gsm8k-local")
  config = get_config()
  config.data.update(source="gsm8k", path="gs://b/gsm8k", train_size=10)
  validate(config)  # the folder is found through epath
  remote = problems(config, "train")
  config.data.path = str(tmp_path / "gsm8k-local")
  local = problems(config, "train")
  assert [p.id for p in remote] == [p.id for p in local] == ["gsm8k-train-0", "gsm8k-train-1"]
  assert [(p.question, p.answer) for p in remote] == [(p.question, p.answer) for p in local]


def test_missing_gs_inputs_fail_validation(bucket):
  from glore_jax.config_check import ConfigError, validate

  config = get_config()
  config.data.update(source="gsm8k", path="gs://b/nothing-here")
  with pytest.raises(ConfigError, match="data.path"):
    validate(config)
  config = get_config()
  config.model.checkpoint = "gs://b/no-model"
  with pytest.raises(ConfigError, match="model.checkpoint"):
    validate(config)


def test_policy_from_a_gs_checkpoint(bucket, tmp_path):
  from glore_jax.stages.common import tokenizer_for

  model, tokenizer = _tiny()
  models.save(_ctx(tmp_path / "unused"), model, tokenizer, epath.Path("gs://b/ckpt"))
  config = get_config()
  config.model.checkpoint = "gs://b/ckpt"
  ctx = Context(config=config, workdir=epath.Path("gs://b/run"), mesh=None)
  loaded_tokenizer = tokenizer_for(config)
  assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
  _same_weights(model, models.new_policy(ctx, loaded_tokenizer))
