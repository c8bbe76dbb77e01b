"""glore_jax.model.ops: the platform's operations chosen once per model, and the XLA:CPU fast
paths (`cpu_paths`) equal to the XLA reference through the whole model and every attention mode."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glore_jax.model import attention, cpu_paths
from glore_jax.model.attention_layer import Attention
from glore_jax.model.config import preset
from glore_jax.model.llama import Llama, create_model
from glore_jax.model.ops import select_ops


def test_selection_by_platform_and_overrides():
  cpu = select_ops(preset("tiny", platform="cpu"))
  assert cpu.fused_projections and not cpu.pallas and cpu.one_query is cpu_paths.attend_one_query
  gpu = select_ops(preset("tiny", platform="gpu"))  # no fast path: the XLA reference
  assert (
    not gpu.fused_projections and not gpu.pallas and gpu.one_query is attention.attend_one_query
  )
  assert not select_ops(preset("tiny", platform="cpu", fuse_projections=False)).fused_projections
  assert select_ops(preset("tiny", platform="cpu", pallas_attention=True)).pallas
  # a model built from the config carries what was chosen
  assert create_model(preset("tiny", platform="cpu")).ops.fused_projections


def test_cached_calls_pick_their_attention_mode_in_one_place():
  assert Llama._attention_mode(1, None) is Attention.decode
  assert Llama._attention_mode(7, None) is Attention.prefill
  packed = Llama._attention_mode(7, jnp.arange(3))
  assert packed.func is Attention.prefill_packed


def _pair(**changes):
  """The same weights in a model built for the CPU (fast paths) and in one built for a platform
  without fast paths (the XLA reference), both run here."""
  fast = create_model(preset("tiny", platform="cpu", **changes), seed=11)
  reference = nnx.merge(
    nnx.graphdef(create_model(preset("tiny", platform="gpu", **changes))), nnx.state(fast)
  )
  assert fast.ops.fused_projections and not reference.ops.fused_projections
  return fast, reference


@pytest.mark.parametrize("rows", [2, cpu_paths.DOT_ATTENTION_MIN_ROWS])
def test_cpu_fast_paths_equal_the_reference_in_every_mode(rows):
  fast, reference = _pair()
  rng = np.random.default_rng(rows)
  tokens = jnp.asarray(rng.integers(3, 128, size=(rows, 9)), jnp.int32)
  mask = jnp.asarray(np.arange(9)[None, :] >= rng.integers(0, 4, size=(rows, 1)), jnp.int32)
  causal = [m.forward(tokens, attention_mask_bt=mask)[0] for m in (fast, reference)]
  assert causal[0].shape == (rows, 9, 64)
  np.testing.assert_allclose(causal[0], causal[1], atol=2e-5)

  start = jnp.asarray(rng.integers(0, 3, size=(rows,)), jnp.int32)
  real_bt = np.arange(6)[None, :] >= np.asarray(start)[:, None]
  packed_n = jnp.asarray(np.flatnonzero(real_bt.reshape(-1)), jnp.int32)
  outs = []
  for m in (fast, reference):
    hidden, cache = m.forward(tokens[:, :6], cache=m.init_cache(rows, 12, start_b=start))
    packed, _ = m.forward(
      tokens[:, :6], cache=m.init_cache(rows, 12, start_b=start), packed_n=packed_n
    )
    steps = []
    for t in range(6, 9):  # decode steps: one token per row
      step, cache = m.forward(tokens[:, t : t + 1], cache=cache)
      steps.append(step)
    outs.append((hidden, packed, jnp.concatenate(steps, axis=1), cache.k[0], cache.v[-1]))
  for got, want in zip(*outs):
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_vocab_major_logits_are_the_transposed_logits():
  for tied in (False, True):
    model = create_model(preset("tiny", tie_word_embeddings=tied), seed=2)
    hidden_rd = jnp.asarray(np.random.default_rng(0).normal(size=(5, 64)), jnp.float32)
    got = model.logits_vocab_major(hidden_rd)
    assert got.shape == (128, 5) and got.dtype == jnp.float32
    np.testing.assert_allclose(got.T, model.logits(hidden_rd), rtol=1e-5, atol=1e-5)
