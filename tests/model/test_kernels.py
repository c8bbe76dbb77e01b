"""glore_jax.model.kernels: the TPU attention kernel against the XLA reference, run on CPU in
Pallas interpret mode, and the choice by platform."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glore_jax.model import kernels
from glore_jax.model.config import preset
from glore_jax.model.llama import Llama
from glore_jax.training import losses


def _cfg(**changes):
  return preset(
    "tiny",
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    hidden_size=128,
    dtype="float32",
    param_dtype="float32",
    **changes,
  )


def test_choice_by_platform():
  assert not kernels.use_pallas(_cfg())  # CPU: XLA attention, the CPU program unchanged
  assert kernels.use_pallas(_cfg(platform="tpu"))
  assert not kernels.use_pallas(_cfg(platform="tpu", pallas_attention=False))
  assert kernels.use_pallas(_cfg(pallas_attention=True))
  # the kernel tiles keys by 128: other lengths keep XLA attention
  assert kernels.use_flash_attention(_cfg(platform="tpu"), 256)
  assert not kernels.use_flash_attention(_cfg(platform="tpu"), 64)
  assert kernels.flash_fits(256) and not kernels.flash_fits(64)


def test_model_built_for_tpu_selects_the_pallas_kernels():
  """The choice is made once, when the model is built, and travels in its graph definition."""
  from glore_jax.model import attention

  tpu = nnx.eval_shape(lambda: Llama(_cfg(platform="tpu"), rngs=nnx.Rngs(0)))
  assert tpu.ops.pallas and not tpu.ops.fused_projections
  assert tpu.ops.one_query is attention.attend_one_query  # the reference where no kernel fits
  assert tpu.layers[0].attn.ops is tpu.ops and tpu.layers[0].mlp.ops is tpu.ops
  xla = nnx.eval_shape(
    lambda: Llama(_cfg(platform="tpu", pallas_attention=False), rngs=nnx.Rngs(0))
  )
  assert not xla.ops.pallas
  assert nnx.graphdef(tpu) != nnx.graphdef(xla)  # programs compiled for one are not reused


def _batch(rows=2, seq=128, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 128, size=(rows, seq)).astype(np.int32)
  mask = np.ones((rows, seq), np.int32)
  mask[1, 90:] = 0  # right padding, as training batches are padded
  return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.slow
def test_flash_attention_matches_xla_attention():
  """Same weights, the forward pass and the LM loss's gradient through Pallas flash attention
  (interpret mode) and through the XLA path: equal at every real token. (Interpret mode runs
  the kernel through host callbacks, which remat cannot trace; with remat the kernel is
  compiled for TPU in tests/scale/test_aot.py.)"""
  from jax.experimental.pallas import tpu as pltpu

  ref = Llama(_cfg(), rngs=nnx.Rngs(0))
  flash = nnx.merge(
    nnx.graphdef(Llama(_cfg(pallas_attention=True), rngs=nnx.Rngs(0))), nnx.state(ref)
  )
  tokens, mask = _batch()

  def loss(model):
    hidden, _ = model.forward(tokens, attention_mask_bt=mask)
    total, count = losses.lm_loss_sums(model.logits(hidden), losses.shift_targets(tokens), mask)
    return total / count, hidden

  grad_fn = nnx.value_and_grad(loss, has_aux=True)
  (ref_loss, ref_hidden), ref_grads = grad_fn(ref)
  with pltpu.force_tpu_interpret_mode():
    (flash_loss, flash_hidden), flash_grads = grad_fn(flash)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(
    np.asarray(flash_hidden)[real], np.asarray(ref_hidden)[real], rtol=2e-5, atol=2e-5
  )
  np.testing.assert_allclose(float(flash_loss), float(ref_loss), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(flash_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


@pytest.mark.slow
def test_flash_attention_under_a_mesh_matches():
  """Sharded over (data, fsdp) and tensor: the kernel runs per device inside a shard_map."""
  from jax.experimental.pallas import tpu as pltpu

  from glore_jax.model.sharding import make_mesh

  mesh = make_mesh(1, 4, 2, devices=jax.devices()[:8])
  ref = Llama(_cfg(), rngs=nnx.Rngs(1))
  flash = nnx.merge(
    nnx.graphdef(Llama(_cfg(pallas_attention=True), rngs=nnx.Rngs(1))), nnx.state(ref)
  )
  tokens, mask = _batch(rows=4, seed=1)
  forward = lambda m: m.forward(tokens, attention_mask_bt=mask)[0]
  want = forward(ref)
  with jax.set_mesh(mesh), pltpu.force_tpu_interpret_mode():
    got = nnx.jit(forward)(flash)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=2e-5, atol=2e-5)


def _decode_inputs(seed=0, rows=3, k_heads=2, groups=2, h=32, slots=256):
  r = np.random.default_rng(seed)
  q = jnp.asarray(r.normal(size=(rows, 1, k_heads, groups, h)), jnp.float32)
  k = jnp.asarray(r.normal(size=(rows, k_heads, h, slots)), jnp.float32)
  v = jnp.asarray(r.normal(size=(rows, k_heads, slots, h)), jnp.float32)
  return q, k, v


@pytest.mark.slow
def test_decode_kernel_matches_xla_decode_attention():
  """Rows with different valid runs (left padding, a run crossing a block, one ending at the
  last slot): the ragged Pallas decode kernel (interpret mode) equals the XLA decode step."""
  from jax.experimental.pallas import tpu as pltpu

  from glore_jax.model import attention

  q, k, v = _decode_inputs()
  slots = k.shape[-1]
  start, query_slot = np.array([0, 5, 130]), np.array([10, 200, slots - 1])
  slot = np.arange(slots)
  mask = jnp.asarray((slot >= start[:, None]) & (slot <= query_slot[:, None]))[:, None, :]
  want = attention.attend_one_query(q, k, v, mask)
  with pltpu.force_tpu_interpret_mode():
    got = jax.jit(kernels.decode_attention)(q, k, v, mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_decode_kernel_choice():
  assert kernels.decode_fits(512) and not kernels.decode_fits(80)
  assert kernels.use_decode_kernel(_cfg(platform="tpu"), 512)
  assert not kernels.use_decode_kernel(_cfg(platform="tpu"), 80)  # not 128-slot blocks
  assert not kernels.use_decode_kernel(_cfg(), 512)  # CPU: the XLA step, unchanged
