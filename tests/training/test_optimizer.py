"""FusedAdamW is optax's clip_by_global_norm + adamw, in one in-place pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glore_jax.training.optimizer import FusedAdamW

SCHEDULE = optax.warmup_cosine_decay_schedule(
  0.0, 3e-2, warmup_steps=2, decay_steps=10, end_value=3e-3
)


def _params(seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {
    "w": jax.random.normal(k[0], (5, 7)),
    "b": jax.random.normal(k[1], (7,)),
    "layer": {"kernel": jax.random.normal(k[2], (3, 4, 2))},
  }


def _grads(step, scale):
  p = _params(100 + step)
  return jax.tree.map(lambda g: g * scale, p)


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


@pytest.mark.parametrize("clip, grad_size", [(1.0, 5.0), (1.0, 0.01), (None, 3.0)])
def test_matches_optax_chain_over_steps(clip, grad_size):
  ref_tx = optax.chain(
    *([optax.clip_by_global_norm(clip)] if clip else []),
    optax.adamw(SCHEDULE, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=_decay_mask),
  )
  ours = FusedAdamW(
    SCHEDULE, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, decay_mask=_decay_mask, clip_norm=clip
  )
  ref_p = _params()
  ref_s = ref_tx.init(ref_p)
  p, s = _params(), ours.init(_params())
  denom = 4.0
  for step in range(6):
    raw = _grads(step, grad_size * denom)  # sums over `denom` targets
    g = jax.tree.map(lambda x: x / denom, raw)
    updates, ref_s = ref_tx.update(g, ref_s, ref_p)
    ref_p = optax.apply_updates(ref_p, updates)
    p, s, ok, norm = jax.jit(ours.update)(raw, s, p, grad_scale=1.0 / denom)
    assert bool(ok) and float(norm) == pytest.approx(float(optax.global_norm(g)), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), p, ref_p)
  assert int(s.count) == 6
  # the untouched vector never decays; the matrices did (weight decay moved them)
  no_decay = FusedAdamW(SCHEDULE, b1=0.9, b2=0.95, weight_decay=0.0, clip_norm=clip)
  p2, _, _, _ = no_decay.update(_grads(0, 1.0), no_decay.init(_params()), _params())
  p3, _, _, _ = ours.update(_grads(0, 1.0), ours.init(_params()), _params())
  np.testing.assert_array_equal(p2["b"], p3["b"])


@pytest.mark.parametrize("bad", ["nan_grad", "inf_grad", "skip"])
def test_refused_step_leaves_everything_bit_identical(bad):
  ours = FusedAdamW(
    SCHEDULE, b1=0.9, b2=0.95, weight_decay=0.1, decay_mask=_decay_mask, clip_norm=1.0
  )
  p, s = _params(), ours.init(_params())
  p, s, ok, _ = ours.update(_grads(0, 1.0), s, p)  # one good step: non-zero moments
  assert bool(ok)
  g = _grads(1, 1.0)
  if bad == "nan_grad":
    g["w"] = g["w"].at[0, 0].set(jnp.nan)
  elif bad == "inf_grad":
    g["layer"]["kernel"] = g["layer"]["kernel"].at[0, 0, 0].set(jnp.inf)
  new_p, new_s, ok, _ = jax.jit(ours.update)(g, s, p, skip=(bad == "skip"))
  assert not bool(ok)
  assert int(new_s.count) == int(s.count) == 1
  for a, b in zip(jax.tree.leaves((new_p, new_s)), jax.tree.leaves((p, s))):
    np.testing.assert_array_equal(a, b)


def test_nan_learning_rate_refuses_the_step():
  ours = FusedAdamW(lambda count: jnp.float32(jnp.nan), clip_norm=1.0)
  p, s = _params(), ours.init(_params())
  new_p, new_s, ok, _ = ours.update(_grads(0, 1.0), s, p)
  assert int(new_s.count) == 0
  assert not bool(ok)
  for a, b in zip(jax.tree.leaves(new_p), jax.tree.leaves(p)):
    np.testing.assert_array_equal(a, b)


def test_update_needs_no_parameter_sized_temporaries():
  """Compiled with the state and gradients donated, the whole update runs in place."""
  ours = FusedAdamW(SCHEDULE, weight_decay=0.1, decay_mask=_decay_mask, clip_norm=1.0)
  params = {"w": jnp.zeros((1024, 1024)), "v": jnp.zeros((4096, 256))}
  fn = jax.jit(lambda p, s, g: ours.update(g, s, p, grad_scale=0.5)[:2], donate_argnums=(0, 1))
  mem = fn.lower(params, ours.init(params), params).compile().memory_analysis()
  param_bytes = sum(x.size * 4 for x in jax.tree.leaves(params))
  assert mem.temp_size_in_bytes < 0.05 * param_bytes, mem
