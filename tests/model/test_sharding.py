"""Sharded on 8 simulated CPU devices equals unsharded, and parameters really are split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glore_jax.model import LlamaConfig, create_model, load_hf, make_mesh

CFG = LlamaConfig(
  vocab_size=128,
  hidden_size=64,
  intermediate_size=128,
  num_layers=2,
  num_heads=8,
  num_kv_heads=4,
  value_head=True,
)


@pytest.fixture(scope="module")
def reference():
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, size=(8, 16)))
  model = create_model(CFG, seed=0)
  hidden, _ = model.forward(tokens)
  return tokens, np.asarray(model.logits(hidden)), np.asarray(model.values(hidden))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (1, 2, 4)])
def test_sharded_forward_equals_unsharded(reference, shape):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 host devices"
  tokens, ref_logits, ref_values = reference
  mesh = make_mesh(*shape)
  model = create_model(CFG, seed=0, mesh=mesh)
  _, fsdp, tensor = shape
  q = model.layers[0].attn.q[...]  # [D, N, H] split (fsdp, tensor, -)
  assert q.sharding.shard_shape(q.shape) == (64 // fsdp, 8 // tensor, 8)
  down = model.layers[1].mlp.down[...]  # [F, D] split (tensor, fsdp)
  assert down.sharding.shard_shape(down.shape) == (128 // tensor, 64 // fsdp)

  with jax.set_mesh(mesh):

    @jax.jit
    def run(tokens):
      hidden, _ = model.forward(tokens)
      return model.logits(hidden), model.values(hidden)

    logits, values = run(tokens)
  np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-5)
  np.testing.assert_allclose(np.asarray(values), ref_values, atol=1e-5)


def test_heads_that_do_not_divide_the_tensor_axis_are_replicated():
  mesh = make_mesh(1, 2, 4)
  model = create_model(CFG.replace(num_heads=6, num_kv_heads=3, hidden_size=48), mesh=mesh)
  k = model.layers[0].attn.k[...]  # 3 kv heads on tensor=4: replicated over tensor
  assert k.sharding.shard_shape(k.shape) == (24, 3, 8)


def test_load_hf_places_tensors_in_their_shards(tmp_path):
  pytest.importorskip("torch")
  from tests.model.hf_reference import hf_logits, make_hf_llama

  hf_model = make_hf_llama(tmp_path, heads=8, kv_heads=4)
  mesh = make_mesh(1, 2, 4)
  model = load_hf(tmp_path, mesh=mesh)
  up = model.layers[0].mlp.up[...]
  assert up.sharding.shard_shape(up.shape) == (32, 32)
  tokens = np.random.default_rng(0).integers(0, 128, size=(4, 12))
  with jax.set_mesh(mesh):
    got = np.asarray(jax.jit(lambda t: model(t))(jnp.asarray(tokens)))
  assert np.abs(got - hf_logits(hf_model, tokens)).max() <= 1e-4


def test_mesh_that_does_not_match_devices_names_both():
  with pytest.raises(ValueError, match=r"data=2 x fsdp=2 x tensor=1 = 4 devices, but 8 devices"):
    make_mesh(2, 2, 1)
