"""Attention kernels by platform, chosen in one place (`use_pallas`).

On TPU the training and scoring forward pass (causal attention over the call's own tokens, no
cache, a multiple of 128 of them) runs Pallas flash attention (`jax.experimental.pallas.ops.tpu.flash_attention`): the
[T, T] scores never reach HBM. Everywhere else, and for the cached prefill and decode steps, the
XLA attention in `glore_jax.model.llama` runs; it is the reference, and the CPU program is left
exactly as it was.

`LlamaConfig.pallas_attention` overrides the choice: False keeps XLA attention on TPU (the plan
compares the two), True asks for the kernel elsewhere, where it runs only in Pallas interpret
mode (`jax.experimental.pallas.tpu.force_tpu_interpret_mode`; the tests compare it to XLA so).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from glore_jax.model.sharding import BATCH, current_mesh, fit_spec

_BLOCK = 128  # the kernel's tile along queries and keys


def use_pallas(cfg) -> bool:
  """Whether a model built from `cfg` attends with the Pallas kernels (no cache)."""
  if cfg.pallas_attention is not None:
    return cfg.pallas_attention
  return cfg.target_platform == "tpu"


def use_flash_attention(cfg, seq: int) -> bool:
  """Flash attention for a cache-free pass over `seq` tokens: on the Pallas platforms, when the
  kernel's key tiles (multiples of 128 tokens, with padding masks) cover the sequence."""
  return use_pallas(cfg) and seq % _BLOCK == 0


def _block_sizes():
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  b = _BLOCK
  return fa.BlockSizes(block_q=b, block_k_major=b, block_k=b, block_b=1, block_q_major_dkv=b,
                       block_k_major_dkv=b, block_k_dkv=b, block_q_dkv=b, block_k_major_dq=b,
                       block_k_dq=b, block_q_dq=b)


def flash_attention(q_btkgh: jax.Array, k_bkhs: jax.Array, v_bksh: jax.Array,
                    mask_bts: jax.Array) -> jax.Array:
  """Causal grouped-query attention of a cache-free forward pass with Pallas flash attention.

  Args:
    q_btkgh: queries [B, T, K, G, H] (K kv heads, G query heads per kv head).
    k_bkhs: keys [B, K, H, T] and v_bksh: values [B, K, T, H], as the model lays them out.
    mask_bts: the model's mask [B, T, T]: causal and key padding. Its last query row is each
      row's key validity; tokens attend within their validity class (real tokens to real keys
      at or before them, exactly as the mask says; padding queries, whose outputs no loss reads,
      to padding keys).

  Returns:
    [B, T, K, G, H] in the queries' dtype. Batch shards over (data, fsdp), heads over tensor
    (a shard_map around the kernel, which sees one device's block).
  """
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  b, t, k_heads, groups, h = q_btkgh.shape
  dt = q_btkgh.dtype
  q_bnth = jnp.transpose(q_btkgh, (0, 2, 3, 1, 4)).reshape(b, k_heads * groups, t, h)
  # every query head reads its kv head: repeat kv heads G times (head n = k * G + g)
  k_bnth = jnp.repeat(jnp.swapaxes(k_bkhs, 2, 3).astype(dt), groups, axis=1)
  v_bnth = jnp.repeat(v_bksh.astype(dt), groups, axis=1)
  valid_bt = mask_bts[:, -1, :].astype(jnp.int32)
  block_sizes = _block_sizes()
  scale = 1.0 / math.sqrt(h)

  def kernel(q, k, v, seg):
    return fa.flash_attention(q, k, v, segment_ids=fa.SegmentIds(seg, seg), causal=True,
                              sm_scale=scale, block_sizes=block_sizes)

  mesh = current_mesh()
  if mesh is not None and mesh.size > 1:
    heads = fit_spec(P(BATCH, "tensor", None, None), q_bnth.shape, mesh)
    rows = P(heads[0], None)
    kernel = jax.shard_map(kernel, mesh=mesh, in_specs=(heads, heads, heads, rows),
                           out_specs=heads, check_vma=False)
  out_bnth = kernel(q_bnth, k_bnth, v_bnth, valid_bt)
  return jnp.transpose(out_bnth.reshape(b, k_heads, groups, t, h), (0, 3, 1, 2, 4)).astype(dt)
