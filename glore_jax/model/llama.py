"""Llama-2 in Flax NNX: RMSNorm, HF-convention RoPE, grouped-query attention, SwiGLU, LM head,
an optional scalar value head, and a KV cache for prefill and per-row decode.

Parameters are stored head-split ([D, N, H] rather than [D, N*H]) so every projection is a
named einsum; `hf.py` reshapes HF tensors on the way in and out. Rotate-half RoPE is the HF
convention, so HF weights load without permuting q/k rows.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from glore_jax.model import kernels
from glore_jax.model.config import LlamaConfig
from glore_jax.model.sharding import RULES, constrain

_INIT_STD = 0.02


def _param(rngs: nnx.Rngs, shape, dtype, spec: P, *, std: float = _INIT_STD) -> nnx.Param:
  value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value.astype(dtype), partition=tuple(spec))


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
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  start: jax.Array  # [B] int32
  length: jax.Array  # [B] int32

  @property
  def size(self) -> int:
    return self.v[0].shape[2]

  @property
  def batch(self) -> int:
    return self.k[0].shape[0]

  def map_rows(self, fn) -> "KVCache":
    """Applies `fn` to every per-row array (e.g. a gather that replicates rows K ways)."""
    return KVCache(tuple(fn(x) for x in self.k), tuple(fn(x) for x in self.v),
                   fn(self.start), fn(self.length))


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  # fp32 statistics whatever the compute dtype, as HF does
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale.astype(x.dtype) * y.astype(x.dtype)


def rope_tables(positions_bt: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) [B, T, H] of the rotary angles: computed once per forward pass and shared by
  every layer, as they depend only on the positions."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq
  angles_bth = jnp.concatenate([angles_bth, angles_bth], axis=-1)
  return jnp.cos(angles_bth), jnp.sin(angles_bth)


def rope(x_btnh: jax.Array, cos_sin_bth: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Rotate-half rotary embedding (HF convention), computed in fp32."""
  cos, sin = (c[:, :, None, :] for c in cos_sin_bth)
  x = x_btnh.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_btnh.dtype)


def pack_rows(x_bt: jax.Array, index_n: jax.Array) -> jax.Array:
  """[B, T, ...] -> [1, N, ...]: the entries at flat positions `index_n` (b * T + t); an index
  past the end (a filler that rounds N up to its bucket) gives zeros."""
  b, t = x_bt.shape[:2]
  flat = x_bt.reshape(b * t, *x_bt.shape[2:])
  return flat.at[index_n].get(mode="fill", fill_value=0)[None]


def unpack_rows(x_1n: jax.Array, index_n: jax.Array, b: int, t: int) -> jax.Array:
  """The inverse of `pack_rows`: [1, N, ...] -> [B, T, ...], zeros where nothing was packed."""
  flat = jnp.zeros((b * t, *x_1n.shape[2:]), x_1n.dtype).at[index_n].set(x_1n[0], mode="drop")
  return flat.reshape(b, t, *x_1n.shape[2:])


def _project_heads(x_btd: jax.Array, w_dnh: jax.Array) -> jax.Array:
  """x @ w as one [D] x [D, N*H] matmul over the weight as stored, then split into heads."""
  d, n, h = w_dnh.shape
  y_bte = jnp.einsum("BTD,DE->BTE", x_btd, w_dnh.reshape(d, n * h))
  return y_bte.reshape(*x_btd.shape[:2], n, h)


def _attend(q_btkgh, k_bkhs, v_bksh, mask_bts):
  """Grouped-query attention of T queries over S keys, [B, T, K, G, H] -> [B, T, K, G, H]."""
  b, t, k_heads, groups, h = q_btkgh.shape
  dt = q_btkgh.dtype
  # queries as [B, K, G*T, H]: one batched matmul per kv head with the group's queries as rows
  # (a query-major [B, T, K, G, H] operand made XLA:CPU transpose around every dot)
  q_bkmh = jnp.transpose(q_btkgh, (0, 2, 3, 1, 4)).reshape(b, k_heads, groups * t, h)
  scores_bkms = jnp.einsum("BKMH,BKHS->BKMS", q_bkmh, k_bkhs.astype(dt))
  probs_bkgts = _probabilities(scores_bkms.reshape(b, k_heads, groups, t, -1), mask_bts, h)
  out_bkmh = jnp.einsum("BKMS,BKSH->BKMH", probs_bkgts.astype(dt).reshape(scores_bkms.shape),
                        v_bksh.astype(dt))
  return jnp.transpose(out_bkmh.reshape(b, k_heads, groups, t, h), (0, 3, 1, 2, 4))


# from this many rows on, a decode step's attention runs as batched dots (measured on XLA:CPU:
# 8 and 32 rows faster as dots, 1 row faster as multiply-and-sum)
DOT_ATTENTION_MIN_ROWS = 8


def _attend_one_query(q_b1kgh, k_bkhs, v_bksh, mask_b1s):
  """A decode step's attention over the cache as laid out. Few rows: multiply-and-sum, since
  XLA:CPU runs B*K tiny [G, H] x [H, S] dots slower than that; many rows: batched dots."""
  dt = q_b1kgh.dtype
  q_bkgh = q_b1kgh[:, 0].astype(jnp.float32)
  k_bkhs, v_bksh = k_bkhs.astype(jnp.float32), v_bksh.astype(jnp.float32)
  as_dots = q_bkgh.shape[0] >= DOT_ATTENTION_MIN_ROWS
  if as_dots:
    scores_bkgs = jnp.einsum("BKGH,BKHS->BKGS", q_bkgh, k_bkhs)
  else:
    scores_bkgs = jnp.sum(q_bkgh[..., None] * k_bkhs[:, :, None], axis=3)
  probs_bkgs = _probabilities(scores_bkgs[:, :, :, None, :], mask_b1s, q_bkgh.shape[-1])[:, :, :, 0]
  if as_dots:
    out_bkgh = jnp.einsum("BKGS,BKSH->BKGH", probs_bkgs, v_bksh)
  else:
    out_bkgh = jnp.sum(probs_bkgs[..., None] * v_bksh[:, :, None], axis=3)
  return out_bkgh[:, None].astype(dt)


def _probabilities(scores_bkgts: jax.Array, mask_bts: jax.Array, head_dim: int) -> jax.Array:
  """fp32 softmax of scaled scores over the keys the mask allows."""
  scores_bkgts = scores_bkgts.astype(jnp.float32) / math.sqrt(head_dim)
  # finite fill: a fully masked (padding) query gets uniform weights instead of NaN
  scores_bkgts = jnp.where(mask_bts[:, None, None, :, :], scores_bkgts, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores_bkgts, axis=-1)


class Attention(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    d, n, k, h, pd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.weight_dtype
    self.cfg = cfg
    self.q = _param(rngs, (d, n, h), pd, RULES.q_proj)
    self.k = _param(rngs, (d, k, h), pd, RULES.kv_proj)
    self.v = _param(rngs, (d, k, h), pd, RULES.kv_proj)
    self.o = _param(rngs, (n, h, d), pd, RULES.o_proj)

  def _fused_qkv(self, x_btd):
    """q, k and v as ONE matmul: each kv head's G query heads, key and value side by side
    ([D, K, G+2, H], concatenated on an unsharded axis, so tensor shards stay local)."""
    dt = x_btd.dtype
    d, n, h = self.q.shape
    k_heads = self.cfg.num_kv_heads
    groups = n // k_heads
    w_dkjh = jnp.concatenate([self.q[...].astype(dt).reshape(d, k_heads, groups, h),
                              self.k[...].astype(dt)[:, :, None], self.v[...].astype(dt)[:, :, None]],
                             axis=2)
    qkv_btkjh = _project_heads(x_btd, w_dkjh.reshape(d, k_heads * (groups + 2), h)).reshape(
        *x_btd.shape[:2], k_heads, groups + 2, h)
    # split, not indexing: its gradient is one concatenation rather than a zero-padded copy of
    # the whole projection per part
    q_btkgh, k_btk1h, v_btk1h = jnp.split(qkv_btkjh, [groups, groups + 1], axis=3)
    return q_btkgh.reshape(*x_btd.shape[:2], n, h), k_btk1h[:, :, :, 0], v_btk1h[:, :, :, 0]

  def __call__(self, x_btd, rope_bth, mask_bts, kv_layer=None, write_slot_b=None, packed_n=None):
    """Attends from T queries to S keys. Without a cache S == T (keys are this call's tokens);
    with one, this call's keys/values are written at per-row slots and S is the cache size.
    With `packed_n`, x is [1, N, D]: the tokens at those flat positions of the [B, T] rows."""
    cfg, dt = self.cfg, x_btd.dtype
    if cfg.fused_projections:
      q_btnh, k_btkh, v_btkh = self._fused_qkv(x_btd)
    else:
      q_btnh = _project_heads(x_btd, self.q[...].astype(dt))
      k_btkh = _project_heads(x_btd, self.k[...].astype(dt))
      v_btkh = _project_heads(x_btd, self.v[...].astype(dt))
    if packed_n is not None:  # rows again for the cache and attention
      b, t = mask_bts.shape[:2]
      q_btnh, k_btkh, v_btkh = (unpack_rows(x, packed_n, b, t) for x in (q_btnh, k_btkh, v_btkh))
    q_btnh = constrain(rope(q_btnh, rope_bth), RULES.act_btnh)
    k_btkh = rope(k_btkh, rope_bth)

    if kv_layer is not None:
      cache_k, cache_v = kv_layer  # [B, K, H, S], [B, K, S, H]
      # row b's T new keys/values go to slots write_slot[b] .. + T - 1 along its slot axis
      def write(cache, new, slot_axis):
        at_slot = lambda c, x, at: jax.lax.dynamic_update_slice_in_dim(c, x, at, axis=slot_axis)
        return constrain(jax.vmap(at_slot)(cache, new.astype(cache.dtype), write_slot_b),
                         RULES.cache_kv)
      k_bkhs = write(cache_k, jnp.transpose(k_btkh, (0, 2, 3, 1)), slot_axis=2)
      v_bksh = write(cache_v, jnp.swapaxes(v_btkh, 1, 2), slot_axis=1)
      new_kv = (k_bkhs, v_bksh)
    else:
      k_bkhs, v_bksh, new_kv = jnp.transpose(k_btkh, (0, 2, 3, 1)), jnp.swapaxes(v_btkh, 1, 2), None

    b, t, n, h = q_btnh.shape
    q_btkgh = q_btnh.reshape(b, t, cfg.num_kv_heads, n // cfg.num_kv_heads, h)
    if t == 1 and kv_layer is not None:
      if kernels.use_decode_kernel(cfg, k_bkhs.shape[-1]):  # TPU: the Pallas decode kernel
        out_btkgh = kernels.decode_attention(q_btkgh, k_bkhs, v_bksh, mask_bts)
      else:
        out_btkgh = _attend_one_query(q_btkgh, k_bkhs, v_bksh, mask_bts)
    elif kv_layer is None and kernels.use_flash_attention(cfg, t):  # TPU: flash attention
      out_btkgh = kernels.flash_attention(q_btkgh, k_bkhs, v_bksh, mask_bts)
    else:
      out_btkgh = _attend(q_btkgh, k_bkhs, v_bksh, mask_bts)
    # [B, T, N*H] @ [N*H, D]: a plain matmul over the weight as stored (an einsum over (N, H)
    # let XLA:CPU re-lay-out the weight on every decode step)
    out_bte = out_btkgh.reshape(b, t, cfg.num_heads * h)
    if packed_n is not None:
      out_bte = pack_rows(out_bte, packed_n)
    o_ed = self.o[...].astype(dt).reshape(cfg.num_heads * h, -1)
    out_btd = jnp.einsum("BTE,ED->BTD", out_bte, o_ed)
    return constrain(out_btd, RULES.act_btd), new_kv


class MLP(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, f, pd = cfg.hidden_size, cfg.intermediate_size, cfg.weight_dtype
    self.gate = _param(rngs, (d, f), pd, RULES.mlp_in)
    self.up = _param(rngs, (d, f), pd, RULES.mlp_in)
    self.down = _param(rngs, (f, d), pd, RULES.mlp_out)

  def __call__(self, x_btd):
    dt = x_btd.dtype
    if self.cfg.fused_projections:
      # gate and up as one [D, 2, F] matmul (concatenated on an unsharded axis)
      w_d2f = jnp.stack([self.gate[...].astype(dt), self.up[...].astype(dt)], axis=1)
      gate_bt1f, up_bt1f = jnp.split(jnp.einsum("BTD,DJF->BTJF", x_btd, w_d2f), 2, axis=2)
      gate_btf, up_btf = gate_bt1f[:, :, 0], up_bt1f[:, :, 0]
    else:
      gate_btf = jnp.einsum("BTD,DF->BTF", x_btd, self.gate[...].astype(dt))
      up_btf = jnp.einsum("BTD,DF->BTF", x_btd, self.up[...].astype(dt))
    hidden_btf = constrain(jax.nn.silu(gate_btf) * up_btf, RULES.act_btf)
    return constrain(jnp.einsum("BTF,FD->BTD", hidden_btf, self.down[...].astype(dt)), RULES.act_btd)


class Block(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.eps = cfg.rms_norm_eps
    self.attn_norm = nnx.Param(jnp.ones((cfg.hidden_size,), cfg.weight_dtype), partition=tuple(RULES.norm))
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = nnx.Param(jnp.ones((cfg.hidden_size,), cfg.weight_dtype), partition=tuple(RULES.norm))
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x_btd, rope_bth, mask_bts, kv_layer=None, write_slot_b=None, packed_n=None):
    attn_out, new_kv = self.attn(rms_norm(x_btd, self.attn_norm[...], self.eps), rope_bth,
                                 mask_bts, kv_layer, write_slot_b, packed_n)
    x_btd = x_btd + attn_out
    x_btd = x_btd + self.mlp(rms_norm(x_btd, self.mlp_norm[...], self.eps))
    return x_btd, new_kv


class Llama(nnx.Module):
  """Decoder-only Llama. `model(tokens)` gives logits; `forward` gives hidden states (and an
  updated cache), from which `logits` and `values` read only the positions a caller needs."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embedding = _param(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.weight_dtype, RULES.embedding)
    self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = nnx.Param(jnp.ones((cfg.hidden_size,), cfg.weight_dtype), partition=tuple(RULES.norm))
    if not cfg.tie_word_embeddings:
      self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), cfg.weight_dtype, RULES.lm_head)
    if cfg.value_head:
      self.value_head = _param(rngs, (cfg.hidden_size, 1), cfg.weight_dtype, RULES.value_head)
      self.value_bias = nnx.Param(jnp.zeros((1,), cfg.weight_dtype), partition=tuple(RULES.value_bias))

  def __call__(self, tokens_bt, *, positions_bt=None, attention_mask_bt=None):
    hidden_btd, _ = self.forward(tokens_bt, positions_bt=positions_bt, attention_mask_bt=attention_mask_bt)
    return self.logits(hidden_btd)

  def forward(self, tokens_bt, *, positions_bt=None, attention_mask_bt=None,
              cache: KVCache | None = None, packed_n: jax.Array | None = None):
    """Final hidden states [B, T, D] (after the last RMSNorm) and the updated cache.

    Without a cache: a causal pass over `tokens_bt`; `attention_mask_bt` (1 = real token)
    hides padding keys; positions default to 0..T-1.
    With a cache: the T tokens of row b go to slots length[b]..length[b]+T-1 at positions
    slot - start[b]; keys are every valid slot up to the query's own.
    `packed_n` (with a cache, for a prefill): flat positions b * T + t of the tokens worth
    computing (not padding), indices past B * T fill the bucket; the position-wise layers run on
    those N tokens only and the other hidden states come back as zeros.
    """
    cfg = self.cfg
    b, t = tokens_bt.shape
    tokens_bt = constrain(tokens_bt, RULES.act_bt)
    if cache is None:
      if positions_bt is None:
        positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      causal_tt = jnp.tril(jnp.ones((t, t), bool))
      mask_bts = jnp.broadcast_to(causal_tt, (b, t, t))
      if attention_mask_bt is not None:
        mask_bts = mask_bts & attention_mask_bt.astype(bool)[:, None, :]
      write_slot_b = None
    else:
      write_slot_b = cache.length
      query_slot_bt = cache.length[:, None] + jnp.arange(t, dtype=jnp.int32)
      positions_bt = query_slot_bt - cache.start[:, None]
      key_slot_s = jnp.arange(cache.size, dtype=jnp.int32)
      mask_bts = ((key_slot_s[None, None, :] <= query_slot_bt[:, :, None])
                  & (key_slot_s[None, None, :] >= cache.start[:, None, None]))
    rope_bth = rope_tables(positions_bt, cfg.head_dim, cfg.rope_theta)
    x_btd = jnp.take(self.embedding[...], tokens_bt, axis=0).astype(cfg.compute_dtype)
    x_btd = constrain(x_btd, RULES.act_btd)
    if packed_n is not None:
      if cache is None:
        raise ValueError("packed_n is a prefill option: it needs a cache")
      x_btd = pack_rows(x_btd, packed_n)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      kv_layer = None if cache is None else (cache.k[i], cache.v[i])
      if cfg.remat and cache is None:
        x_btd, kv = nnx.remat(Block.__call__)(layer, x_btd, rope_bth, mask_bts)
      else:
        x_btd, kv = layer(x_btd, rope_bth, mask_bts, kv_layer, write_slot_b, packed_n)
      if kv is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
    hidden_btd = rms_norm(x_btd, self.final_norm[...], cfg.rms_norm_eps)
    if packed_n is not None:
      hidden_btd = unpack_rows(hidden_btd, packed_n, b, t)
    if cache is not None:
      cache = KVCache(tuple(new_k), tuple(new_v), cache.start, cache.length + t)
    return hidden_btd, cache

  def logits(self, hidden_xd: jax.Array) -> jax.Array:
    """LM logits in fp32 for any leading shape [..., D] -> [..., V]."""
    dt = hidden_xd.dtype
    if self.cfg.tie_word_embeddings:
      logits = jnp.einsum("...D,VD->...V", hidden_xd, self.embedding[...].astype(dt))
    else:
      logits = jnp.einsum("...D,DV->...V", hidden_xd, self.lm_head[...].astype(dt))
    return logits.astype(jnp.float32)

  def logits_vocab_major(self, hidden_rd: jax.Array) -> jax.Array:
    """LM logits in fp32 as [V, R] for rows [R, D]: the head's weight is the left operand, which
    XLA:CPU runs ~25% faster than [R, D] x [D, V] when R is a batch of decode rows."""
    dt = hidden_rd.dtype
    if self.cfg.tie_word_embeddings:
      logits = jnp.einsum("VD,RD->VR", self.embedding[...].astype(dt), hidden_rd)
    else:
      logits = jnp.einsum("DV,RD->VR", self.lm_head[...].astype(dt), hidden_rd)
    return logits.astype(jnp.float32)

  def values(self, hidden_xd: jax.Array) -> jax.Array:
    """Scalar value-head logits (pre-sigmoid) per position, [..., D] -> [...]."""
    if not self.cfg.value_head:
      raise ValueError("this model has no value head; build it with LlamaConfig(value_head=True)")
    dt = hidden_xd.dtype
    v = jnp.einsum("...D,DO->...O", hidden_xd, self.value_head[...].astype(dt))
    return (v + self.value_bias[...].astype(dt))[..., 0].astype(jnp.float32)

  def init_cache(self, batch: int, size: int, *, start_b: jax.Array | None = None,
                 dtype=None) -> KVCache:
    """An empty cache of `size` slots. `start_b` is each row's left-padding count: a left-padded
    prompt batch is prefilled from slot 0 and its padding slots stay masked."""
    cfg = self.cfg
    dtype = dtype or cfg.compute_dtype
    k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, size)
    v_shape = (batch, cfg.num_kv_heads, size, cfg.head_dim)
    zeros = lambda shape: constrain(jnp.zeros(shape, dtype), RULES.cache_kv)
    start = jnp.zeros((batch,), jnp.int32) if start_b is None else start_b.astype(jnp.int32)
    return KVCache(tuple(zeros(k_shape) for _ in range(cfg.num_layers)),
                   tuple(zeros(v_shape) for _ in range(cfg.num_layers)),
                   start, jnp.zeros((batch,), jnp.int32))


def create_model(cfg: LlamaConfig, *, seed: int = 0, mesh: jax.sharding.Mesh | None = None) -> Llama:
  """A randomly initialised model; with a mesh, every parameter is created already sharded
  (abstract init, then a jitted init with out_shardings), so no host holds the whole model."""
  if mesh is None:
    return Llama(cfg, rngs=nnx.Rngs(seed))
  from glore_jax.model.sharding import tree_shardings
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(seed))))
  shardings = tree_shardings(abstract_state, mesh)
  init_state = jax.jit(lambda: nnx.state(Llama(cfg, rngs=nnx.Rngs(seed))), out_shardings=shardings)
  return nnx.merge(graphdef, init_state())
