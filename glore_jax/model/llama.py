"""Llama-2 in Flax NNX: RMSNorm, HF-convention RoPE, grouped-query attention, SwiGLU, LM head,
an optional scalar value head, and a KV cache for prefill and per-row decode.

Parameters are stored head-split ([D, N, H] rather than [D, N*H]) so every projection is a
named einsum; `hf.py` reshapes HF tensors on the way in and out. Rotate-half RoPE is the HF
convention, so HF weights load without permuting q/k rows.

The layers read as the math on every platform: the few operations whose fastest form depends
on the platform (fused projections and few-row decode on XLA:CPU, Pallas kernels on TPU) are
chosen once, when the model is built (`glore_jax.model.ops.select_ops`), and `forward` picks
the attention mode of a call in one place (`_attention_mode`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from glore_jax.model import cpu_paths
from glore_jax.model.attention import KVLayer
from glore_jax.model.attention_layer import Attention
from glore_jax.model.config import LlamaConfig
from glore_jax.model.layers import (
  INIT_STD,
  pack_rows,
  param,
  rms_norm,
  rope,
  rope_tables,
  unpack_rows,
)
from glore_jax.model.ops import Ops, select_ops
from glore_jax.model.sharding import RULES, constrain

# the functional pieces have lived here; callers import them from this module
__all__ = [
  "INIT_STD",
  "KVCache",
  "Llama",
  "create_model",
  "pack_rows",
  "rms_norm",
  "rope",
  "rope_tables",
  "unpack_rows",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Keys [B, K, H, S] and values [B, K, S, H] per layer, plus per-row slot bookkeeping.

  Head-major, and laid out so that a decode step's two reductions over the cache run along its
  major axis with the minor one in vector lanes: scores sum over H with S in lanes, the output
  sums over S with H in lanes (no per-step transposes; the attention of a batch-32 decode step
  runs ~17% faster than with keys as [B, K, S, H]).

  Row b holds real tokens in slots [start[b], length[b]); slots before `start` are left
  padding. The next token of row b is written at slot length[b] with position
  length[b] - start[b]. Because validity is derived from (start, length), a rollout from a
  shorter prefix of a row only needs a smaller `length`: stale slots beyond it are masked
  and then overwritten.

  Attributes:
    k: one [B, K, H, S] key array per layer.
    v: one [B, K, S, H] value array per layer.
    start: [B] int32, each row's first real slot (its left-padding count).
    length: [B] int32, each row's next free slot.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  start: jax.Array  # [B] int32
  length: jax.Array  # [B] int32

  @property
  def size(self) -> int:
    """S, the number of slots per row."""
    return self.v[0].shape[2]

  @property
  def batch(self) -> int:
    """B, the number of rows."""
    return self.k[0].shape[0]

  def map_rows(self, fn: Callable[[jax.Array], jax.Array]) -> KVCache:
    """Applies `fn` to every per-row array (e.g. a gather that replicates rows K ways).

    Args:
      fn: maps an array with rows on axis 0 to one with the new rows.
    """
    return KVCache(
      tuple(fn(x) for x in self.k), tuple(fn(x) for x in self.v), fn(self.start), fn(self.length)
    )


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: LlamaConfig, ops: Ops, *, rngs: nnx.Rngs):
    self.cfg, self.ops = cfg, ops
    d, f, pd = cfg.hidden_size, cfg.intermediate_size, cfg.param_dtype
    self.gate = param(rngs, (d, f), pd, RULES.mlp_in)
    self.up = param(rngs, (d, f), pd, RULES.mlp_in)
    self.down = param(rngs, (f, d), pd, RULES.mlp_out)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    dt = x_btd.dtype
    gate_btf, up_btf = self.ops.project_gate_up(
      x_btd, self.gate[...].astype(dt), self.up[...].astype(dt)
    )
    hidden_btf = constrain(jax.nn.silu(gate_btf) * up_btf, RULES.act_btf)
    return constrain(
      jnp.einsum("BTF,FD->BTD", hidden_btf, self.down[...].astype(dt)), RULES.act_btd
    )


class Block(nnx.Module):
  """Pre-norm decoder layer: x + attention(norm(x)), then + mlp(norm(x))."""

  def __init__(self, cfg: LlamaConfig, ops: Ops, *, rngs: nnx.Rngs):
    self.eps = cfg.rms_norm_eps
    self.attn_norm = nnx.Param(
      jnp.ones((cfg.hidden_size,), cfg.param_dtype), partition=tuple(RULES.norm)
    )
    self.attn = Attention(cfg, ops, rngs=rngs)
    self.mlp_norm = nnx.Param(
      jnp.ones((cfg.hidden_size,), cfg.param_dtype), partition=tuple(RULES.norm)
    )
    self.mlp = MLP(cfg, ops, rngs=rngs)

  def __call__(
    self, x_btd: jax.Array, rope_bth: tuple[jax.Array, jax.Array], mask_bts: jax.Array
  ) -> jax.Array:
    """The cache-free causal pass (`Attention.__call__`)."""
    x_btd = x_btd + self.attn(rms_norm(x_btd, self.attn_norm[...], self.eps), rope_bth, mask_bts)
    return self._mlp_residual(x_btd)

  def cached(
    self, mode: Callable[..., tuple[jax.Array, KVLayer]], x_btd: jax.Array, *cache_args: Any
  ) -> tuple[jax.Array, KVLayer]:
    """A pass that reads and writes the KV cache.

    Args:
      mode: the Attention method to run (`Attention.prefill`, `prefill_packed` or `decode`).
      x_btd: the layer's input ([B, T, D], or [1, N, D] for `prefill_packed`).
      *cache_args: that method's arguments after its input (rope, mask, kv_layer, ...).

    """
    attn_out, kv = mode(self.attn, rms_norm(x_btd, self.attn_norm[...], self.eps), *cache_args)
    return self._mlp_residual(x_btd + attn_out), kv

  def _mlp_residual(self, x_btd: jax.Array) -> jax.Array:
    return x_btd + self.mlp(rms_norm(x_btd, self.mlp_norm[...], self.eps))


class Llama(nnx.Module):
  """Decoder-only Llama. `model(tokens)` gives logits; `forward` gives hidden states (and an
  updated cache), from which `logits` and `values` read only the positions a caller needs."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    """Args:
    cfg: shapes, dtypes and the platform the model's programs are built for.
    rngs: random streams for the initial weights (`create_model` seeds them).
    """
    self.cfg = cfg
    self.ops = ops = select_ops(cfg)  # the platform's operations, chosen once
    pd = cfg.param_dtype
    self.embedding = param(rngs, (cfg.vocab_size, cfg.hidden_size), pd, RULES.embedding)
    self.layers = nnx.List([Block(cfg, ops, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = nnx.Param(jnp.ones((cfg.hidden_size,), pd), partition=tuple(RULES.norm))
    if not cfg.tie_word_embeddings:
      self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), pd, RULES.lm_head)
    if cfg.value_head:
      self.value_head = param(rngs, (cfg.hidden_size, 1), pd, RULES.value_head)
      self.value_bias = nnx.Param(jnp.zeros((1,), pd), partition=tuple(RULES.value_bias))

  def __call__(
    self,
    tokens_bt: jax.Array,
    *,
    positions_bt: jax.Array | None = None,
    attention_mask_bt: jax.Array | None = None,
  ) -> jax.Array:
    """fp32 logits [B, T, V] of a cache-free causal pass (arguments as `forward`)."""
    hidden_btd, _ = self.forward(
      tokens_bt, positions_bt=positions_bt, attention_mask_bt=attention_mask_bt
    )
    return self.logits(hidden_btd)

  def forward(
    self,
    tokens_bt: jax.Array,
    *,
    positions_bt: jax.Array | None = None,
    attention_mask_bt: jax.Array | None = None,
    cache: KVCache | None = None,
    packed_n: jax.Array | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Final hidden states [B, T, D] (after the last RMSNorm) and the updated cache.

    Args:
      tokens_bt: [B, T] int32 token ids.
      positions_bt: without a cache, each token's position (default 0..T-1); ignored with one.
      attention_mask_bt: without a cache, 1 = real token: hides padding keys; ignored with one.
      cache: with a cache, the T tokens of row b go to slots length[b]..length[b]+T-1 at
        positions slot - start[b]; keys are every valid slot up to the query's own. T == 1 is
        a decode step.
      packed_n: (with a cache, for a prefill) flat positions b * T + t of the tokens worth
        computing (not padding), indices past B * T fill the bucket; the position-wise layers
        run on those N tokens only and the other hidden states come back as zeros.

    Returns:
      (hidden [B, T, D], the cache with `length` advanced by T, or None without a cache).
    """
    if cache is None:
      if packed_n is not None:
        raise ValueError("packed_n is a prefill option: it needs a cache")
      return self._forward_causal(tokens_bt, positions_bt, attention_mask_bt), None
    return self._forward_cached(tokens_bt, cache, packed_n)

  def _forward_causal(self, tokens_bt, positions_bt, attention_mask_bt) -> jax.Array:
    """Training and scoring: causal attention among the call's tokens, no cache."""
    cfg = self.cfg
    b, t = tokens_bt.shape
    tokens_bt = constrain(tokens_bt, RULES.act_bt)
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    causal_tt = jnp.tril(jnp.ones((t, t), bool))
    mask_bts = jnp.broadcast_to(causal_tt, (b, t, t))
    if attention_mask_bt is not None:
      mask_bts = mask_bts & attention_mask_bt.astype(bool)[:, None, :]
    rope_bth = rope_tables(positions_bt, cfg.head_dim, cfg.rope_theta)
    x_btd = self._embed(tokens_bt)
    block = nnx.remat(Block.__call__) if cfg.remat else Block.__call__
    for layer in self.layers:
      x_btd = block(layer, x_btd, rope_bth, mask_bts)
    return rms_norm(x_btd, self.final_norm[...], cfg.rms_norm_eps)

  def _forward_cached(self, tokens_bt, cache: KVCache, packed_n) -> tuple[jax.Array, KVCache]:
    """Prefill or decode: this call's tokens written into the cache, attending over it."""
    cfg = self.cfg
    b, t = tokens_bt.shape
    tokens_bt = constrain(tokens_bt, RULES.act_bt)
    query_slot_bt = cache.length[:, None] + jnp.arange(t, dtype=jnp.int32)
    positions_bt = query_slot_bt - cache.start[:, None]
    key_slot_s = jnp.arange(cache.size, dtype=jnp.int32)
    mask_bts = (key_slot_s[None, None, :] <= query_slot_bt[:, :, None]) & (
      key_slot_s[None, None, :] >= cache.start[:, None, None]
    )
    rope_bth = rope_tables(positions_bt, cfg.head_dim, cfg.rope_theta)
    x_btd = self._embed(tokens_bt)
    if packed_n is not None:
      x_btd = pack_rows(x_btd, packed_n)
    mode = self._attention_mode(t, packed_n)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      x_btd, (k, v) = layer.cached(
        mode, x_btd, rope_bth, mask_bts, (cache.k[i], cache.v[i]), cache.length
      )
      new_k.append(k)
      new_v.append(v)
    hidden_btd = rms_norm(x_btd, self.final_norm[...], cfg.rms_norm_eps)
    if packed_n is not None:
      hidden_btd = unpack_rows(hidden_btd, packed_n, b, t)
    return hidden_btd, KVCache(tuple(new_k), tuple(new_v), cache.start, cache.length + t)

  @staticmethod
  def _attention_mode(
    t: int, packed_n: jax.Array | None
  ) -> Callable[..., tuple[jax.Array, KVLayer]]:
    """The Attention method of a cached call of T tokens per row: the one place modes are picked."""
    if packed_n is not None:
      return functools.partial(Attention.prefill_packed, packed_n=packed_n)
    return Attention.decode if t == 1 else Attention.prefill

  def _embed(self, tokens_bt: jax.Array) -> jax.Array:
    x_btd = jnp.take(self.embedding[...], tokens_bt, axis=0).astype(self.cfg.compute_dtype)
    return constrain(x_btd, RULES.act_btd)

  def logits(self, hidden_xd: jax.Array) -> jax.Array:
    """LM logits in fp32 for any leading shape [..., D] -> [..., V].

    Args:
      hidden_xd: final hidden states from `forward` (any positions, e.g. only those sampled).
    """
    dt = hidden_xd.dtype
    if self.cfg.tie_word_embeddings:
      logits = jnp.einsum("...D,VD->...V", hidden_xd, self.embedding[...].astype(dt))
    else:
      logits = jnp.einsum("...D,DV->...V", hidden_xd, self.lm_head[...].astype(dt))
    return logits.astype(jnp.float32)

  def logits_vocab_major(self, hidden_rd: jax.Array) -> jax.Array:
    """LM logits in fp32 as [V, R] for rows [R, D] (`cpu_paths.logits_vocab_major`: faster on
    XLA:CPU for a batch of decode rows; the sampler decides when to call it).

    Args:
      hidden_rd: final hidden states [R, D].
    """
    if self.cfg.tie_word_embeddings:
      return cpu_paths.logits_vocab_major(hidden_rd, embedding_vd=self.embedding[...])
    return cpu_paths.logits_vocab_major(hidden_rd, lm_head_dv=self.lm_head[...])

  def values(self, hidden_xd: jax.Array) -> jax.Array:
    """Scalar value-head logits (pre-sigmoid) per position in fp32, [..., D] -> [...].

    Args:
      hidden_xd: final hidden states from `forward`.

    Raises:
      ValueError: the model was built without a value head.
    """
    if not self.cfg.value_head:
      raise ValueError("this model has no value head; build it with LlamaConfig(value_head=True)")
    dt = hidden_xd.dtype
    v = jnp.einsum("...D,DO->...O", hidden_xd, self.value_head[...].astype(dt))
    return (v + self.value_bias[...].astype(dt))[..., 0].astype(jnp.float32)

  def init_cache(
    self,
    batch: int,
    size: int,
    *,
    start_b: jax.Array | None = None,
    dtype: jnp.dtype | str | None = None,
  ) -> KVCache:
    """An empty cache of `size` slots per row.

    Args:
      batch: B, the rows.
      size: S, the slots per row.
      start_b: each row's left-padding count (default 0): a left-padded prompt batch is
        prefilled from slot 0 and its padding slots stay masked.
      dtype: the cache's dtype (default the compute dtype).
    """
    cfg = self.cfg
    dtype = dtype or cfg.compute_dtype
    k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, size)
    v_shape = (batch, cfg.num_kv_heads, size, cfg.head_dim)
    zeros = lambda shape: constrain(jnp.zeros(shape, dtype), RULES.cache_kv)
    start = jnp.zeros((batch,), jnp.int32) if start_b is None else start_b.astype(jnp.int32)
    return KVCache(
      tuple(zeros(k_shape) for _ in range(cfg.num_layers)),
      tuple(zeros(v_shape) for _ in range(cfg.num_layers)),
      start,
      jnp.zeros((batch,), jnp.int32),
    )


def create_model(
  cfg: LlamaConfig, *, seed: int = 0, mesh: jax.sharding.Mesh | None = None
) -> Llama:
  """A randomly initialised model; with a mesh, every parameter is created already sharded
  (abstract init, then a jitted init with out_shardings), so no host holds the whole model.

  Args:
    cfg: the architecture (e.g. `preset('tiny')`).
    seed: seeds the initial weights.
    mesh: a ('data', 'fsdp', 'tensor') mesh to create the parameters on, or None (one device).
  """
  if mesh is None:
    return Llama(cfg, rngs=nnx.Rngs(seed))
  from glore_jax.model.sharding import tree_shardings

  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(seed))))
  shardings = tree_shardings(abstract_state, mesh)
  init_state = jax.jit(lambda: nnx.state(Llama(cfg, rngs=nnx.Rngs(seed))), out_shardings=shardings)
  return nnx.merge(graphdef, init_state())
