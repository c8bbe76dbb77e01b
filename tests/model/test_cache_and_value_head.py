"""KV-cache prefill + decode against the full forward pass; the value head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glore_jax.model import create_model, preset


def _left_pad(rows, pad_id=0):
  width = max(len(r) for r in rows)
  tokens = np.full((len(rows), width), pad_id, np.int32)
  for i, r in enumerate(rows):
    tokens[i, width - len(r) :] = r
  return tokens, np.array([width - len(r) for r in rows], np.int32)


def test_prefill_then_decode_equals_full_forward_on_ragged_left_padded_rows():
  model = create_model(preset("tiny", num_kv_heads=2), seed=1)
  rng = np.random.default_rng(0)
  full_rows = [rng.integers(3, 128, size=n).tolist() for n in (13, 6, 9)]
  prompt_len = [7, 3, 5]  # each row: prompt = first k tokens, then decode the rest one by one
  prompts, pads = _left_pad([r[:k] for r, k in zip(full_rows, prompt_len)])
  cache = model.init_cache(3, 32, start_b=jnp.asarray(pads))
  hidden, cache = model.forward(jnp.asarray(prompts), cache=cache)
  # row-wise reference: each row alone, unpadded, full causal forward
  for i, row in enumerate(full_rows):
    ref = np.asarray(model(jnp.asarray([row])))[0]
    got = np.asarray(model.logits(hidden[i, pads[i] :]))
    assert np.abs(got - ref[: prompt_len[i]]).max() < 1e-5
  # decode: each step feeds every row its next real token (rows may run past their end)
  decode = jax.jit(lambda state, tok, cache: _step(graphdef, state, tok, cache))
  graphdef, state = nnx.split(model)
  for step in range(6):
    nxt = np.array(
      [[r[min(k + step, len(r) - 1)]] for r, k in zip(full_rows, prompt_len)], np.int32
    )
    logits, cache = decode(state, jnp.asarray(nxt), cache)
    for i, (row, k) in enumerate(zip(full_rows, prompt_len)):
      if k + step < len(row):
        ref = np.asarray(model(jnp.asarray([row[: k + step + 1]])))[0, -1]
        assert np.abs(np.asarray(logits[i]) - ref).max() < 1e-5, (i, step)
  assert cache.length.tolist() == [prompts.shape[1] + 6] * 3


def test_packed_prefill_equals_the_padded_one():
  """A prefill that runs the position-wise layers only on the prompt tokens (packed, with
  fillers) gives the same hidden states at those tokens and the same cache as the padded one."""
  from glore_jax.model.llama import pack_rows, unpack_rows

  model = create_model(preset("tiny", num_kv_heads=2), seed=5)
  rng = np.random.default_rng(3)
  prompts, pads = _left_pad([rng.integers(3, 128, size=n).tolist() for n in (9, 2, 16, 5)])
  b, t = prompts.shape
  real_bt = np.arange(t)[None, :] >= pads[:, None]
  index_n = np.flatnonzero(real_bt.reshape(-1))
  packed_n = jnp.asarray(np.concatenate([index_n, np.full(40 - len(index_n), b * t)]), jnp.int32)
  fresh = lambda: model.init_cache(b, t, start_b=jnp.asarray(pads))
  plain_h, plain_c = model.forward(jnp.asarray(prompts), cache=fresh())
  packed_h, packed_c = model.forward(jnp.asarray(prompts), cache=fresh(), packed_n=packed_n)
  np.testing.assert_allclose(np.asarray(packed_h)[real_bt], np.asarray(plain_h)[real_bt], atol=1e-5)
  assert not np.asarray(packed_h)[~real_bt].any()  # padding is not computed
  for layer in range(model.cfg.num_layers):  # keys [B, K, H, S], values [B, K, S, H] at real slots
    keys = lambda c, i=layer: np.moveaxis(np.asarray(c.k[i]), 3, 1)[real_bt]  # [real tokens, K, H]
    values = lambda c, i=layer: np.moveaxis(np.asarray(c.v[i]), 2, 1)[real_bt]
    np.testing.assert_allclose(keys(packed_c), keys(plain_c), atol=1e-5)
    np.testing.assert_allclose(values(packed_c), values(plain_c), atol=1e-5)
  assert packed_c.length.tolist() == plain_c.length.tolist()
  # pack / unpack are inverse at the packed positions; fillers read zeros and write nothing
  x_bt = jnp.asarray(rng.normal(size=(b, t, 3)), jnp.float32)
  packed = pack_rows(x_bt, packed_n)
  assert packed.shape == (1, 40, 3) and not np.asarray(packed)[0, len(index_n) :].any()
  unpacked = np.asarray(unpack_rows(packed, packed_n, b, t))
  np.testing.assert_array_equal(unpacked[real_bt], np.asarray(x_bt)[real_bt])
  with pytest.raises(ValueError, match="needs a cache"):
    model.forward(jnp.asarray(prompts), packed_n=packed_n)


def _step(graphdef, state, tok, cache):
  model = nnx.merge(graphdef, state)
  hidden, cache = model.forward(tok, cache=cache)
  return model.logits(hidden[:, -1]), cache


def test_shorter_prefix_of_a_cached_row_continues_exactly():
  """A rollout from prefix P_i reuses the first slots of the draft's cache (fan-out (b))."""
  model = create_model(preset("tiny"), seed=2)
  draft = np.random.default_rng(1).integers(3, 128, size=12).tolist()
  cache = model.init_cache(1, 16)
  _, cache = model.forward(jnp.asarray([draft]), cache=cache)
  cut = 5
  cache.length = jnp.asarray([cut])  # keep slots [0, 5): the prefix draft[:5]
  hidden, _ = model.forward(jnp.asarray([[7]]), cache=cache)
  ref = np.asarray(model(jnp.asarray([draft[:cut] + [7]])))[0, -1]
  assert np.abs(np.asarray(model.logits(hidden[0, -1])) - ref).max() < 1e-5


def test_value_head_shape_and_gradients_reach_head_and_backbone():
  model = create_model(preset("tiny", value_head=True), seed=0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, size=(2, 10)))
  values = model.values(model.forward(tokens)[0])
  assert values.shape == (2, 10) and values.dtype == jnp.float32

  def loss(m):
    return jnp.mean(jax.nn.softplus(-m.values(m.forward(tokens)[0])))

  grads = nnx.grad(loss)(model)
  for path in (("value_head",), ("value_bias",), ("layers", 0, "attn", "q"), ("embedding",)):
    g = grads
    for key in path:
      g = g[key]
    assert float(jnp.abs(g[...]).max()) > 0, path


def test_bf16_compute_with_fp32_params_stays_close():
  cfg = preset("tiny")
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, size=(2, 16)))
  ref = np.asarray(create_model(cfg, seed=4)(tokens))
  low = create_model(cfg.replace(dtype="bfloat16"), seed=4)
  assert low.embedding[...].dtype == jnp.float32
  got = np.asarray(low(tokens))
  assert got.dtype == np.float32 and np.abs(got - ref).max() < 0.05


def test_fused_and_separate_projections_agree():
  """The XLA:CPU fused q/k/v and gate/up matmuls compute the same function (and gradients) as
  the separate ones the TPU program uses."""
  fused = create_model(preset("tiny", num_kv_heads=2, fuse_projections=True), seed=3)
  graphdef_sep = nnx.graphdef(create_model(preset("tiny", num_kv_heads=2, fuse_projections=False)))
  separate = nnx.merge(graphdef_sep, nnx.state(fused))
  assert fused.ops.fused_projections and not separate.ops.fused_projections
  tokens = jnp.asarray(np.random.default_rng(1).integers(3, 128, size=(2, 11)), jnp.int32)
  np.testing.assert_allclose(fused(tokens), separate(tokens), atol=2e-5)

  def loss(state, graphdef):
    return jnp.mean(nnx.merge(graphdef, state)(tokens) ** 2)

  g_fused = jax.grad(loss)(nnx.state(fused), nnx.graphdef(fused))
  g_sep = jax.grad(loss)(nnx.state(fused), graphdef_sep)
  for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_sep)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # decode through the cache too
  caches = [m.init_cache(2, 16) for m in (fused, separate)]
  outs = [m.forward(tokens[:, :5], cache=c) for m, c in zip((fused, separate), caches)]
  outs = [m.forward(tokens[:, 5:6], cache=o[1])[0] for m, o in zip((fused, separate), outs)]
  np.testing.assert_allclose(outs[0], outs[1], atol=2e-5)


def test_decode_attention_as_dots_equals_multiply_and_sum_row_by_row():
  """From DOT_ATTENTION_MIN_ROWS rows a decode step attends with batched dots; each row must
  equal the same row attended alone (multiply-and-sum), masked slots included."""
  from glore_jax.model import cpu_paths

  rows, k_heads, groups, h, s = cpu_paths.DOT_ATTENTION_MIN_ROWS, 2, 3, 16, 24
  rng = np.random.default_rng(4)
  q = jnp.asarray(rng.normal(size=(rows, 1, k_heads, groups, h)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(rows, k_heads, h, s)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(rows, k_heads, s, h)), jnp.float32)
  mask = jnp.asarray(np.arange(s)[None, None, :] < rng.integers(1, s + 1, size=(rows, 1, 1)))
  together = cpu_paths.attend_one_query(q, k, v, mask)
  alone = jnp.concatenate(
    [
      cpu_paths.attend_one_query(q[i : i + 1], k[i : i + 1], v[i : i + 1], mask[i : i + 1])
      for i in range(rows)
    ]
  )
  np.testing.assert_allclose(together, alone, atol=1e-5)
  # and both equal a plain softmax attention in numpy
  scores = np.einsum("bkgh,bkhs->bkgs", np.asarray(q)[:, 0], np.asarray(k)) / np.sqrt(h)
  scores = np.where(np.asarray(mask)[:, :, None, :], scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(
    together[:, 0], np.einsum("bkgs,bksh->bkgh", probs, np.asarray(v)), atol=1e-5
  )
