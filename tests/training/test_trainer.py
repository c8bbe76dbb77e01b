"""The training loop on a tiny Llama: learning, resume, sharding, divergence, checkpoints."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from glore_jax.model import create_model, load_hf, make_mesh, preset
from glore_jax.training import (
  SFTExample,
  TrainConfig,
  TrainingDivergedError,
  ValueExample,
  make_batches,
  train,
)
from glore_jax.training.checkpoint import Checkpoints


def progression_task(n, seed):
  """[BOS, 3+k, a] then a+k, a+2k, ... (mod 120, offset 8): the step k must be read from the
  prompt, so the model has to attend, not just count."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    k, a = int(rng.integers(1, 4)), int(rng.integers(8, 128))
    seq = [1, 3 + k, a]
    for _ in range(9):
      seq.append(8 + (seq[-1] - 8 + k) % 120)
    out.append(SFTExample(seq, 3))
  return out


def value_task(n, seed):
  """Label of a step = whether the token that ends it is even."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    ids = [1] + rng.integers(8, 128, size=11).tolist()
    ends = [3, 7, 11]
    labels = [float(ids[e] % 2 == 0) for e in ends]
    out.append(ValueExample(ids, ends, labels, soft=[0.25 + 0.5 * y for y in labels]))
  return out


def params_of(model):
  return {
    jax.tree_util.keystr(p): np.asarray(x)
    for p, x in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
  }


def quiet(**kw):
  base = dict(progress=False, log_every=5, async_checkpoint=True)
  base.update(kw)
  return TrainConfig(**base)


def test_tiny_llama_learns_the_synthetic_task(tmp_path):
  train_b = make_batches(progression_task(512, 0), batch_size=16, kind="lm")
  eval_b = make_batches(progression_task(64, 1), batch_size=32, kind="lm", shuffle=False)
  model = create_model(preset("tiny"), seed=0)
  cfg = quiet(
    learning_rate=3e-3,
    warmup_steps=5,
    total_steps=80,
    eval_every=40,
    checkpoint_every=40,
    export_hf=True,
  )
  model, metrics = train(model, train_b, cfg, tmp_path, eval_batches=eval_b)
  losses_ = [h["train/loss"] for h in metrics["history"]]
  assert metrics["complete"] and metrics["step"] == 80
  assert losses_[-1] < 0.5 * losses_[0], losses_
  start = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
  assert start["step"] == 1
  evals = [
    json.loads(l)
    for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
    if "eval/lm_accuracy" in l
  ]
  assert len(evals) == 2 and evals[-1]["eval/lm_accuracy"] > 0.8 > 0.1
  assert metrics["eval"]["eval/lm_accuracy"] > 0.8
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert metrics["best_checkpoint"].endswith("/80")
  # the exported HF folder holds the trained weights
  reloaded = load_hf(metrics["hf_dir"])
  a, b = params_of(model), params_of(reloaded)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  # calling train again on a finished workdir is a no-op that returns the same model
  again, m2 = train(create_model(preset("tiny"), seed=0), train_b, cfg, tmp_path)
  assert m2["step"] == 80
  for k, v in params_of(again).items():
    np.testing.assert_array_equal(v, a[k])


class KilledAfter:
  """A batch sequence whose reader 'dies' when asked for more than `n` batches."""

  def __init__(self, batches, n):
    self.batches, self.n, self.reads = batches, n, 0

  def __len__(self):
    return len(self.batches)

  def __getitem__(self, i):
    self.reads += 1
    if self.reads > self.n:
      raise KeyboardInterrupt("killed")
    return self.batches[i]


def test_resume_equals_uninterrupted_training(tmp_path):
  batches = make_batches(progression_task(40, 2), batch_size=8, kind="lm")  # 5 batches: epochs wrap
  cfg = quiet(
    learning_rate=1e-2,
    warmup_steps=2,
    total_steps=8,
    checkpoint_every=4,
    grad_accum=2,
    weight_decay=0.1,
  )
  straight, _ = train(create_model(preset("tiny"), seed=1), batches, cfg, tmp_path / "straight")

  with pytest.raises(KeyboardInterrupt):
    train(create_model(preset("tiny"), seed=1), KilledAfter(batches, 4), cfg, tmp_path / "resumed")
  assert Checkpoints(tmp_path / "resumed" / "checkpoints").latest_step() == 4
  resumed, metrics = train(create_model(preset("tiny"), seed=1), batches, cfg, tmp_path / "resumed")
  assert metrics["step"] == 8
  a, b = params_of(straight), params_of(resumed)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sharded_training_equals_single_device(tmp_path):
  assert jax.device_count() == 8
  batches = make_batches(progression_task(64, 3), batch_size=16, kind="lm")
  cfg = quiet(learning_rate=3e-3, total_steps=3, grad_accum=2)
  single, _ = train(create_model(preset("tiny"), seed=2), batches, cfg, tmp_path / "one")
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  sharded, _ = train(
    create_model(preset("tiny"), seed=2, mesh=mesh), batches, cfg, tmp_path / "eight", mesh=mesh
  )
  q = sharded.layers[0].attn.q[...]
  assert len(q.sharding.device_set) == 8  # really sharded, not replicated
  a, b = params_of(single), params_of(sharded)
  moved = 0
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=2e-5, rtol=1e-4, err_msg=k)
    moved += not np.allclose(a[k], params_of(create_model(preset("tiny"), seed=2))[k])
  assert moved > 10


def test_value_head_training_frozen_backbone_and_metrics(tmp_path):
  model = create_model(preset("tiny", value_head=True), seed=4)
  before = params_of(model)
  batches = make_batches(value_task(256, 0), batch_size=32, kind="value", value_targets="soft")
  evals = make_batches(value_task(64, 1), batch_size=32, kind="value", shuffle=False)
  cfg = quiet(
    loss="value",
    value_targets="soft",
    train_backbone=False,
    learning_rate=3e-2,
    total_steps=30,
    checkpoint_every=15,
  )
  model, metrics = train(model, batches, cfg, tmp_path, eval_batches=evals)
  after = params_of(model)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert changed == {"['value_bias'].value", "['value_head'].value"}, changed
  ev = metrics["eval"]
  assert set(ev) >= {"eval/value_loss", "eval/value_accuracy", "eval/value_auroc"}
  assert 0.0 <= ev["eval/value_auroc"] <= 1.0 and ev["eval/value_steps"] == 64 * 3
  # only the head is checkpointed when the backbone is frozen: small checkpoints
  ckpt = Checkpoints(tmp_path / "checkpoints")
  assert ckpt.latest_step() == 30


def test_nan_stops_with_step_and_last_good_checkpoint(tmp_path):
  batches = make_batches(value_task(64, 2), batch_size=16, kind="value")
  poisoned = [dict(b) for b in batches]
  poisoned[2]["value_target"] = np.full_like(poisoned[2]["value_target"], np.nan)
  model = create_model(preset("tiny", value_head=True), seed=5)
  cfg = quiet(loss="value", learning_rate=1e-3, total_steps=4, checkpoint_every=2, shuffle=False)
  with pytest.raises(TrainingDivergedError, match=r"step 3 .*checkpoints/2") as err:
    train(model, poisoned, cfg, tmp_path)
  assert err.value.step == 3 and err.value.last_checkpoint.endswith("checkpoints/2")
  # the model handed back holds the last good (finite) parameters
  assert all(np.isfinite(v).all() for v in params_of(model).values())


def test_interrupted_save_never_becomes_latest(tmp_path):
  batches = make_batches(progression_task(16, 4), batch_size=8, kind="lm")
  cfg = quiet(total_steps=2, checkpoint_every=1, keep_last=1)
  train(create_model(preset("tiny"), seed=0), batches, cfg, tmp_path)
  ckdir = tmp_path / "checkpoints"
  assert sorted(p.name for p in ckdir.iterdir() if p.name.isdigit()) == ["2"]
  # a save killed half-way leaves orbax's temporary folder behind
  broken = ckdir / "3.orbax-checkpoint-tmp-1234567"
  (broken / "state").mkdir(parents=True)
  (broken / "state" / "garbage").write_text("half a file")
  assert Checkpoints(ckdir).latest_step() == 2


def test_grad_accumulation_matches_one_big_batch_and_bf16_remat_run(tmp_path):
  """Loss sums and counts accumulate over micro-batches, so 2 x 8 rows == 16 rows; and the
  bf16-compute, rematerialised configuration trains with fp32 master weights."""
  batches = make_batches(progression_task(48, 5), batch_size=16, kind="lm", shuffle=False)
  runs = {}
  for accum in (1, 2):
    cfg = quiet(learning_rate=3e-3, total_steps=2, grad_accum=accum, shuffle=False)
    runs[accum], _ = train(
      create_model(preset("tiny"), seed=6), batches, cfg, tmp_path / f"accum{accum}"
    )
  a, b = params_of(runs[1]), params_of(runs[2])
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-4, err_msg=k)
  cfg = quiet(learning_rate=3e-3, total_steps=3, compute_dtype="bfloat16", remat=True)
  model, metrics = train(create_model(preset("tiny"), seed=6), batches, cfg, tmp_path / "bf16")
  assert model.cfg.dtype == "float32" and not model.cfg.remat  # the caller's model is unchanged
  assert all(v.dtype == np.float32 for v in params_of(model).values())
  assert np.isfinite(metrics["train_loss"])
