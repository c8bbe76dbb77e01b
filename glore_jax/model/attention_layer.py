"""The grouped-query attention layer: one method per way it reaches its keys (causal without a
cache, prefill, packed prefill, decode); the platform's operations come from `ops.Ops`.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from glore_jax.model.attention import AttentionFn, KVLayer, write_cache
from glore_jax.model.config import LlamaConfig
from glore_jax.model.layers import pack_rows, param, rope, unpack_rows
from glore_jax.model.ops import Ops
from glore_jax.model.sharding import RULES, constrain


class Attention(nnx.Module):
  """Grouped-query attention with RoPE. One method per mode: `__call__` (causal over the call's
  own tokens, no cache: training and scoring), `prefill` and `prefill_packed` (T tokens per row
  written into the cache, attending over it), `decode` (one token per row). The platform's
  projections and attention kernels come from `ops`, chosen when the model is built."""

  def __init__(self, cfg: LlamaConfig, ops: Ops, *, rngs: nnx.Rngs):
    """Args:
    cfg: the model's shapes and dtypes.
    ops: the platform's implementations (`glore_jax.model.ops.select_ops(cfg)`).
    rngs: random streams for the initial weights.
    """
    d, n, k, h, pd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.param_dtype
    self.cfg, self.ops = cfg, ops
    self.q = param(rngs, (d, n, h), pd, RULES.q_proj)
    self.k = param(rngs, (d, k, h), pd, RULES.kv_proj)
    self.v = param(rngs, (d, k, h), pd, RULES.kv_proj)
    self.o = param(rngs, (n, h, d), pd, RULES.o_proj)

  # ---- modes ----------------------------------------------------------------------------------

  def __call__(
    self, x_btd: jax.Array, rope_bth: tuple[jax.Array, jax.Array], mask_bts: jax.Array
  ) -> jax.Array:
    """Causal attention among the call's own T tokens (S == T, no cache).

    Args:
      x_btd: the normed inputs [B, T, D].
      rope_bth: (cos, sin) [B, T, H] from `rope_tables`.
      mask_bts: [B, T, T], causal and key padding.

    Returns:
      [B, T, D], the output projection's result.
    """
    q_btnh, k_btkh, v_btkh = self._rope(*self._project(x_btd), rope_bth)
    out_btkgh = self.ops.causal_attention(
      self._group(q_btnh), _keys_bkhs(k_btkh), _values_bksh(v_btkh), mask_bts
    )
    return self._output(_merge_heads(out_btkgh))

  def prefill(
    self,
    x_btd: jax.Array,
    rope_bth: tuple[jax.Array, jax.Array],
    mask_bts: jax.Array,
    kv_layer: KVLayer,
    write_slot_b: jax.Array,
  ) -> tuple[jax.Array, KVLayer]:
    """T tokens per row written into the cache at slots write_slot[b]..+T-1, each attending
    over the cache.

    Args:
      x_btd: the normed inputs [B, T, D].
      rope_bth: (cos, sin) [B, T, H] from `rope_tables`.
      mask_bts: [B, T, S], the cache slots each query may read.

      kv_layer: this layer's cache (keys [B, K, H, S], values [B, K, S, H]).
      write_slot_b: [B] int32, each row's first slot to write.

    Returns:
      ([B, T, D], the updated kv_layer).
    """
    out_bte, kv = self._over_cache(
      *self._project(x_btd), rope_bth, mask_bts, kv_layer, write_slot_b, self.ops.prefill_attention
    )
    return self._output(out_bte), kv

  def prefill_packed(
    self,
    x_1nd: jax.Array,
    rope_bth: tuple[jax.Array, jax.Array],
    mask_bts: jax.Array,
    kv_layer: KVLayer,
    write_slot_b: jax.Array,
    packed_n: jax.Array,
  ) -> tuple[jax.Array, KVLayer]:
    """`prefill` with the projections run on the N tokens worth computing only: x is [1, N, D],
    the tokens at flat positions `packed_n` (b * T + t) of the [B, T] rows (`pack_rows`).

    Returns:
      ([1, N, D], the updated kv_layer); the cache and attention work on the rows.
    """
    b, t = mask_bts.shape[:2]
    q_btnh, k_btkh, v_btkh = (unpack_rows(y, packed_n, b, t) for y in self._project(x_1nd))
    # one token per row attends as a decode step does (as `Llama.forward` dispatches unpacked)
    attention = self.ops.decode_attention if t == 1 else self.ops.prefill_attention
    out_bte, kv = self._over_cache(
      q_btnh, k_btkh, v_btkh, rope_bth, mask_bts, kv_layer, write_slot_b, attention
    )
    return self._output(pack_rows(out_bte, packed_n)), kv

  def decode(
    self,
    x_b1d: jax.Array,
    rope_b1h: tuple[jax.Array, jax.Array],
    mask_b1s: jax.Array,
    kv_layer: KVLayer,
    write_slot_b: jax.Array,
  ) -> tuple[jax.Array, KVLayer]:
    """One token per row written at slot write_slot[b], attending over the cache (the
    platform's decode-step attention). Arguments as `prefill` with T == 1."""
    out_b1e, kv = self._over_cache(
      *self._project(x_b1d), rope_b1h, mask_b1s, kv_layer, write_slot_b, self.ops.decode_attention
    )
    return self._output(out_b1e), kv

  # ---- the steps the modes share -------------------------------------------------------------

  def _project(self, x_btd: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [B, T, N, H], k and v [B, T, K, H] in the compute dtype."""
    dt = x_btd.dtype
    return self.ops.project_qkv(
      x_btd, self.q[...].astype(dt), self.k[...].astype(dt), self.v[...].astype(dt)
    )

  def _rope(self, q_btnh, k_btkh, v_btkh, rope_bth):
    return constrain(rope(q_btnh, rope_bth), RULES.act_btnh), rope(k_btkh, rope_bth), v_btkh

  def _group(self, q_btnh: jax.Array) -> jax.Array:
    """[B, T, N, H] -> [B, T, K, G, H]: query head n = k * G + g reads kv head k."""
    return einops.rearrange(q_btnh, "b t (k g) h -> b t k g h", k=self.cfg.num_kv_heads)

  def _over_cache(
    self,
    q_btnh,
    k_btkh,
    v_btkh,
    rope_bth,
    mask_bts,
    kv_layer: KVLayer,
    write_slot_b,
    attention: AttentionFn,
  ) -> tuple[jax.Array, KVLayer]:
    """RoPE, this call's keys/values into the cache, `attention` over it: ([B, T, N*H], cache)."""
    q_btnh, k_btkh, v_btkh = self._rope(q_btnh, k_btkh, v_btkh, rope_bth)
    cache_k, cache_v = kv_layer
    k_bkhs = write_cache(cache_k, _keys_bkhs(k_btkh), write_slot_b, slot_axis=2)
    v_bksh = write_cache(cache_v, _values_bksh(v_btkh), write_slot_b, slot_axis=1)
    out_btkgh = attention(self._group(q_btnh), k_bkhs, v_bksh, mask_bts)
    return _merge_heads(out_btkgh), (k_bkhs, v_bksh)

  def _output(self, out_bte: jax.Array) -> jax.Array:
    # [B, T, N*H] @ [N*H, D]: a plain matmul over the weight as stored (an einsum over (N, H)
    # let XLA:CPU re-lay-out the weight on every decode step)
    o_ed = einops.rearrange(self.o[...].astype(out_bte.dtype), "n h d -> (n h) d")
    return constrain(jnp.einsum("BTE,ED->BTD", out_bte, o_ed), RULES.act_btd)


def _keys_bkhs(k_btkh: jax.Array) -> jax.Array:
  return einops.rearrange(k_btkh, "b t k h -> b k h t")


def _values_bksh(v_btkh: jax.Array) -> jax.Array:
  return einops.rearrange(v_btkh, "b t k h -> b k t h")


def _merge_heads(out_btkgh: jax.Array) -> jax.Array:
  return einops.rearrange(out_btkgh, "b t k g h -> b t (k g h)")
