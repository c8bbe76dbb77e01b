"""Losses, masks, collation and metrics against numpy references (no training)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glore_jax.model import create_model, preset
from glore_jax.training import (
  SFTExample,
  TrainConfig,
  ValueExample,
  auroc,
  bucket_length,
  collate_lm,
  collate_value,
  lm_loss,
  losses,
  make_batches,
  padding_fraction,
  value_loss,
)
from glore_jax.training.trainer import make_loss_fn, trainable_filter


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_lm_loss_matches_numpy_and_averages_over_all_tokens():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
  targets = rng.integers(0, 11, size=(2, 6))
  mask = np.array([[0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 1, 0]], np.float32)  # 4 tokens vs 1 token
  nll = -np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
  want = (nll * mask).sum() / mask.sum()  # per token, not mean of per-row means
  np.testing.assert_allclose(lm_loss(logits, targets, mask), want, rtol=1e-5)


def test_masked_targets_and_logits_do_not_change_lm_loss():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 8, 13)).astype(np.float32)
  targets = rng.integers(0, 13, size=(3, 8))
  mask = (rng.random((3, 8)) > 0.4).astype(np.float32)
  base = lm_loss(logits, targets, mask)
  targets2 = np.where(mask > 0, targets, rng.integers(0, 13, size=(3, 8)))
  targets2 = np.where(mask > 0, targets2, 10**6)  # even out-of-range ids are ignored
  logits2 = np.where(mask[..., None] > 0, logits, np.nan)
  assert float(lm_loss(logits2, targets2, mask)) == pytest.approx(float(base), rel=1e-6)


def test_collate_lm_shifts_the_target_mask():
  batch = collate_lm([SFTExample([1, 5, 6, 7, 8], 2), SFTExample([1, 9, 10], 1)], batch_size=3)
  assert batch["tokens"].shape == (3, 16)
  # row 0: targets are tokens 2..4 (7, ... ), predicted at positions 1..3
  np.testing.assert_array_equal(batch["target_mask"][0, :6], [0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(batch["target_mask"][1, :4], [1, 1, 0, 0])
  np.testing.assert_array_equal(batch["attention_mask"][0, :6], [1, 1, 1, 1, 1, 0])
  assert batch["target_mask"][2].sum() == 0 and batch["attention_mask"][2].sum() == 0  # filler
  targets = np.asarray(losses.shift_targets(jnp.asarray(batch["tokens"])))
  scored = targets[0][batch["target_mask"][0] > 0]
  np.testing.assert_array_equal(scored, [6, 7, 8])  # exactly the non-prompt tokens


def test_prompt_tokens_are_not_trained_on_in_the_model_loss():
  """Whole-model LM loss scores exactly the non-prompt tokens, each predicted one position back."""
  model = create_model(preset("tiny"), seed=0)
  cfg = TrainConfig(loss="lm")
  graphdef, params, frozen, _ = nnx.split(model, trainable_filter(cfg), nnx.Param, ...)
  loss_sums = jax.jit(make_loss_fn(graphdef, cfg))
  batch = collate_lm([SFTExample([1, 20, 21, 22, 30, 31, 32], 4)])
  total, count = loss_sums(params, frozen, batch)
  assert float(count) == 3
  # the same computation by hand, scoring only tokens 4..6
  logits = np.asarray(model(jnp.asarray(batch["tokens"])))[0]
  nll = -np_log_softmax(logits)[np.arange(3, 6), [30, 31, 32]]
  np.testing.assert_allclose(float(total), nll.sum(), rtol=1e-4)


def np_bce(z, y):
  z, y = np.float64(z), np.float64(y)
  p = 1.0 / (1.0 + np.exp(-z))
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_value_loss_matches_numpy_on_known_step_ends(targets):
  model = create_model(preset("tiny", value_head=True), seed=3)
  # give the head non-trivial weights so logits spread
  model.value_head[...] = 0.2 * jax.random.normal(jax.random.key(0), model.value_head.shape)
  model.value_bias[...] = jnp.array([0.3])
  records = [
    ValueExample(
      [1, 10, 11, 12, 13, 14, 15, 16], step_ends=[2, 5, 7], labels=[1, 0, 0], soft=[0.75, 0.25, 0.0]
    ),
    ValueExample([1, 40, 41, 42, 43], step_ends=[1, 4], labels=[1, 1], soft=[1.0, 0.5]),
  ]
  batch = collate_value(records, targets=targets)
  assert batch["value_index"].tolist()[1][:3] == [1, 4, -1]
  cfg = TrainConfig(loss="value", value_targets=targets)
  graphdef, params, frozen, _ = nnx.split(model, trainable_filter(cfg), nnx.Param, ...)
  total, count = jax.jit(make_loss_fn(graphdef, cfg))(params, frozen, batch)

  hidden, _ = model.forward(jnp.asarray(batch["tokens"]))
  values_bt = np.asarray(model.values(hidden))  # every position, then pick by hand
  want = []
  for row, r in enumerate(records):
    ys = r.soft if targets == "soft" else r.labels
    want += [np_bce(values_bt[row, e], y) for e, y in zip(r.step_ends, ys)]
  assert float(count) == 5
  np.testing.assert_allclose(float(total) / float(count), np.mean(want), rtol=1e-4)
  # the pure function too
  z = np.asarray(losses.gather_steps(jnp.asarray(values_bt), jnp.asarray(batch["value_index"])))
  np.testing.assert_allclose(
    value_loss(z, batch["value_target"], batch["value_index"] >= 0), np.mean(want), rtol=1e-4
  )


def test_value_loss_ignores_padded_steps_and_is_stable():
  z = np.array([[50.0, -50.0, np.nan]], np.float32)
  y = np.array([[1.0, 0.0, 0.7]], np.float32)
  mask = np.array([[1, 1, 0]])
  assert float(value_loss(z, y, mask)) == pytest.approx(0.0, abs=1e-6)
  assert np.isfinite(float(value_loss(np.array([[-200.0]]), np.array([[1.0]]), np.array([[1]]))))


def test_auroc_matches_pairwise_count():
  rng = np.random.default_rng(0)
  scores = np.round(rng.normal(size=200), 1)  # many ties
  labels = rng.random(200) > 0.6
  pos, neg = scores[labels], scores[~labels]
  pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  assert auroc(scores, labels) == pytest.approx(pairs / (len(pos) * len(neg)))
  assert np.isnan(auroc([0.1, 0.2], [1, 1]))


def test_bucketing_and_make_batches():
  assert [bucket_length(n) for n in (1, 16, 17, 100, 129)] == [16, 16, 32, 128, 256]
  assert bucket_length(100, multiple=64) == 128 and bucket_length(10, multiple=64, minimum=8) == 64
  rng = np.random.default_rng(0)
  records = [SFTExample(list(range(1, n + 1)), 2) for n in rng.integers(5, 200, size=300)]
  batches = make_batches(records, batch_size=8, kind="lm", seed=0)
  assert all(b["tokens"].shape[0] == 8 for b in batches)
  assert sum(int((b["attention_mask"].sum(1) > 0).sum()) for b in batches) == 300
  assert len({b["tokens"].shape[1] for b in batches}) <= 5  # few compiled programs
  grouped, ungrouped = (
    padding_fraction(batches),
    padding_fraction(make_batches(records, batch_size=8, kind="lm", seed=0, group_window=0)),
  )
  assert grouped < ungrouped
  # truncation keeps whole steps and their labels, drops what has nothing left
  vals = [
    ValueExample(list(range(40)), [9, 19, 39], [1, 1, 0]),
    ValueExample(list(range(40)), [35], [0]),
  ]
  vb = make_batches(vals, batch_size=2, kind="value", max_length=32, shuffle=False)
  assert len(vb) == 1 and vb[0]["tokens"].shape[1] == 32
  assert vb[0]["value_index"][0].tolist()[:3] == [9, 19, -1]
  with pytest.raises(ValueError, match="soft"):
    collate_value(vals, targets="soft")
