"""Pallas attention kernels for TPU, and whether a model uses them (`use_pallas`).

On TPU the training and scoring forward pass (causal attention over the call's own tokens, no
cache, a multiple of 128 of them) runs Pallas flash attention
(`jax.experimental.pallas.ops.tpu.flash_attention`): the [T, T] scores never reach HBM. A decode
step runs the ragged decode kernel below when its 128-slot blocks tile the cache. Everywhere
else, and for the cached prefill, the XLA attention in `glore_jax.model.attention` runs: it is
the reference, and the CPU program is left exactly as it was. `glore_jax.model.ops.select_ops`
asks `use_pallas` once, when a model is built.

`LlamaConfig.pallas_attention` overrides the choice: False keeps XLA attention on TPU (the plan
compares the two), True asks for the kernel elsewhere, where it runs only in Pallas interpret
mode (`jax.experimental.pallas.tpu.force_tpu_interpret_mode`; the tests compare it to XLA so).
"""

from __future__ import annotations

import functools
import math

import einops
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from glore_jax.model.config import LlamaConfig
from glore_jax.model.sharding import BATCH, current_mesh, fit_spec

_BLOCK = 128  # the kernel's tile along queries and keys


def use_pallas(cfg: LlamaConfig) -> bool:
  """Whether a model built from `cfg` attends with the Pallas kernels where they fit
  (`glore_jax.model.ops.select_ops` asks once, when the model is built)."""
  if cfg.pallas_attention is not None:
    return cfg.pallas_attention
  return cfg.target_platform == "tpu"


def flash_fits(seq: int) -> bool:
  """Whether flash attention's key tiles (multiples of 128 tokens, with padding masks) cover a
  cache-free pass over `seq` tokens."""
  return seq % _BLOCK == 0


def use_flash_attention(cfg: LlamaConfig, seq: int) -> bool:
  """Flash attention for a cache-free pass over `seq` tokens: on the Pallas platforms, when the
  kernel's tiles fit (`flash_fits`)."""
  return use_pallas(cfg) and flash_fits(seq)


def _block_sizes():
  from jax.experimental.pallas.ops.tpu import flash_attention as fa

  b = _BLOCK
  return fa.BlockSizes(
    block_q=b,
    block_k_major=b,
    block_k=b,
    block_b=1,
    block_q_major_dkv=b,
    block_k_major_dkv=b,
    block_k_dkv=b,
    block_q_dkv=b,
    block_k_major_dq=b,
    block_k_dq=b,
    block_q_dq=b,
  )


def flash_attention(
  q_btkgh: jax.Array, k_bkhs: jax.Array, v_bksh: jax.Array, mask_bts: jax.Array
) -> jax.Array:
  """Causal grouped-query attention of a cache-free forward pass with Pallas flash attention.

  Args:
    q_btkgh: queries [B, T, K, G, H] (K kv heads, G query heads per kv head).
    k_bkhs: keys [B, K, H, T], as the model lays them out.
    v_bksh: values [B, K, T, H], as the model lays them out.

    mask_bts: the model's mask [B, T, T]: causal and key padding. Its last query row is each
      row's key validity; tokens attend within their validity class (real tokens to real keys
      at or before them, exactly as the mask says; padding queries, whose outputs no loss reads,
      to padding keys).

  Returns:
    [B, T, K, G, H] in the queries' dtype. Batch shards over (data, fsdp), heads over tensor
    (a shard_map around the kernel, which sees one device's block).
  """
  from jax.experimental.pallas.ops.tpu import flash_attention as fa

  k_heads, groups, h = q_btkgh.shape[2:]
  dt = q_btkgh.dtype
  q_bnth = einops.rearrange(q_btkgh, "b t k g h -> b (k g) t h")
  # every query head reads its kv head: repeat kv heads G times (head n = k * G + g)
  k_bnth = einops.repeat(k_bkhs.astype(dt), "b k h t -> b (k g) t h", g=groups)
  v_bnth = einops.repeat(v_bksh.astype(dt), "b k t h -> b (k g) t h", g=groups)
  valid_bt = mask_bts[:, -1, :].astype(jnp.int32)
  block_sizes = _block_sizes()
  scale = 1.0 / math.sqrt(h)

  def kernel(q, k, v, seg):
    return fa.flash_attention(
      q,
      k,
      v,
      segment_ids=fa.SegmentIds(seg, seg),
      causal=True,
      sm_scale=scale,
      block_sizes=block_sizes,
    )

  mesh = current_mesh()
  if mesh is not None and mesh.size > 1:
    heads = fit_spec(P(BATCH, "tensor", None, None), q_bnth.shape, mesh)
    rows = P(heads[0], None)
    kernel = jax.shard_map(
      kernel, mesh=mesh, in_specs=(heads, heads, heads, rows), out_specs=heads, check_vma=False
    )
  out_bnth = kernel(q_bnth, k_bnth, v_bnth, valid_bt)
  return einops.rearrange(out_bnth, "b (k g) t h -> b t k g h", k=k_heads).astype(dt)


# ---- decode: one query per row over the KV cache, ragged by each row's valid slots ------------

_DECODE_BLOCK = 128  # cache slots per step of the kernel's reduction


def decode_fits(cache_slots: int) -> bool:
  """Whether the decode kernel's 128-slot blocks tile a cache of `cache_slots` slots."""
  return cache_slots % _DECODE_BLOCK == 0


def use_decode_kernel(cfg: LlamaConfig, cache_slots: int) -> bool:
  """The Pallas decode kernel for a one-token step over `cache_slots` slots, on the Pallas
  platforms, when its blocks tile the cache (`decode_fits`)."""
  return use_pallas(cfg) and decode_fits(cache_slots)


def _decode_kernel(
  first_ref,
  last_ref,
  q_ref,
  k_ref,
  v_ref,
  o_ref,
  m_ref,
  l_ref,
  acc_ref,
  *,
  scale: float,
  block: int,
):
  """Grid (row b, kv head k, slot block j): online softmax over the row's valid slots
  [first[b], last[b]]; blocks past them are skipped (and not fetched: see the index maps)."""
  from jax.experimental import pallas as pl

  b, j = pl.program_id(0), pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  first, last = first_ref[b], last_ref[b]

  @pl.when((j * block <= last) & ((j + 1) * block > first))
  def _block():
    q = q_ref[...].astype(jnp.float32)  # [G, H]
    k = k_ref[...].astype(jnp.float32)  # [H, block]
    v = v_ref[...].astype(jnp.float32)  # [block, H]
    s = (
      jax.lax.dot_general(q, k, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
      * scale
    )  # [G, block]
    slot = j * block + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
    s = jnp.where((slot >= first) & (slot <= last), s, -jnp.inf)
    m_prev = m_ref[...]
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    p = jnp.exp(s - m_new)
    correction = jnp.exp(m_prev - m_new)
    l_ref[...] = correction * l_ref[...] + jnp.sum(p, axis=1, keepdims=True)
    acc_ref[...] = correction * acc_ref[...] + jax.lax.dot_general(
      p, v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
    m_ref[...] = m_new

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    o_ref[...] = (acc_ref[...] / l_ref[...]).astype(o_ref.dtype)


def _decode_call(q_bkgh, k_bkhs, v_bksh, first_b, last_b):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import tpu as pltpu

  b, k_heads, groups, h = q_bkgh.shape
  slots = k_bkhs.shape[-1]
  block = _DECODE_BLOCK

  def kv_block(bi, ki, j, first, last):
    # clamp to the row's valid blocks: a repeated block index is not fetched again
    return jnp.clip(j, first[bi] // block, last[bi] // block)

  kernel = functools.partial(_decode_kernel, scale=1.0 / math.sqrt(h), block=block)
  return pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct(q_bkgh.shape, q_bkgh.dtype),
    grid_spec=pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(b, k_heads, slots // block),
      in_specs=[
        pl.BlockSpec((None, None, groups, h), lambda bi, ki, j, f, l: (bi, ki, 0, 0)),
        pl.BlockSpec(
          (None, None, h, block), lambda bi, ki, j, f, l: (bi, ki, 0, kv_block(bi, ki, j, f, l))
        ),
        pl.BlockSpec(
          (None, None, block, h), lambda bi, ki, j, f, l: (bi, ki, kv_block(bi, ki, j, f, l), 0)
        ),
      ],
      out_specs=pl.BlockSpec((None, None, groups, h), lambda bi, ki, j, f, l: (bi, ki, 0, 0)),
      scratch_shapes=[
        pltpu.VMEM((groups, 1), jnp.float32),
        pltpu.VMEM((groups, 1), jnp.float32),
        pltpu.VMEM((groups, h), jnp.float32),
      ],
    ),
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
  )(first_b, last_b, q_bkgh, k_bkhs, v_bksh)


def decode_attention(
  q_b1kgh: jax.Array, k_bkhs: jax.Array, v_bksh: jax.Array, mask_b1s: jax.Array
) -> jax.Array:
  """A decode step's attention with the Pallas decode kernel: each row reads only the cache
  blocks holding its valid slots (ragged by row).

  Args:
    q_b1kgh: the step's queries [B, 1, K, G, H].
    k_bkhs: the cache's keys [B, K, H, S], as the model keeps them.
    v_bksh: the cache's values [B, K, S, H], as the model keeps them.

    mask_b1s: [B, 1, S], the model's mask: a contiguous run of valid slots per row (start ..
      the query's own slot).

  Returns:
    [B, 1, K, G, H] in the queries' dtype; fp32 softmax and accumulation as the XLA path.
  """
  mask_bs = mask_b1s[:, 0, :]
  slots = mask_bs.shape[-1]
  index = jnp.arange(slots, dtype=jnp.int32)
  first_b = jnp.min(jnp.where(mask_bs, index, slots), axis=-1).astype(jnp.int32)
  last_b = jnp.max(jnp.where(mask_bs, index, -1), axis=-1).astype(jnp.int32)
  q_bkgh = q_b1kgh[:, 0]
  call = _decode_call
  mesh = current_mesh()
  if mesh is not None and mesh.size > 1:
    heads = fit_spec(P(BATCH, "tensor", None, None), k_bkhs.shape, mesh)
    rows = P(heads[0])
    call = jax.shard_map(
      call, mesh=mesh, in_specs=(heads, heads, heads, rows, rows), out_specs=heads, check_vma=False
    )
  return call(q_bkgh, k_bkhs, v_bksh, first_b, last_b)[:, None]
