"""Grouped-query attention math in plain XLA: the reference every faster path (`cpu_paths`,
`kernels`) is tested against, and the cache write. The layer that uses it is
`attention_layer.Attention`.

Layouts (letters as in the einsums): queries [B, T, K, G, H] (K kv heads, G query heads per kv
head), keys [B, K, H, S] and values [B, K, S, H] (the KV cache's layout), mask [B, T, S] (True:
the query may read the key).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import einops
import jax
import jax.numpy as jnp

from glore_jax.model.sharding import RULES, constrain

# one layer's cache: keys [B, K, H, S], values [B, K, S, H]
KVLayer = tuple[jax.Array, jax.Array]
AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def probabilities(scores_bkgts: jax.Array, mask_bts: jax.Array, head_dim: int) -> jax.Array:
  """fp32 softmax of scaled scores [B, K, G, T, S] over the keys the mask allows."""
  scores_bkgts = scores_bkgts.astype(jnp.float32) / math.sqrt(head_dim)
  # finite fill: a fully masked (padding) query gets uniform weights instead of NaN
  scores_bkgts = jnp.where(mask_bts[:, None, None, :, :], scores_bkgts, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores_bkgts, axis=-1)


def attend(
  q_btkgh: jax.Array, k_bkhs: jax.Array, v_bksh: jax.Array, mask_bts: jax.Array
) -> jax.Array:
  """T queries over S keys, [B, T, K, G, H] -> [B, T, K, G, H]: scores in the compute dtype,
  softmax in fp32."""
  groups, h = q_btkgh.shape[3:]
  dt = q_btkgh.dtype
  # queries as [B, K, G*T, H]: one batched matmul per kv head with the group's queries as rows
  # (a query-major [B, T, K, G, H] operand made XLA:CPU transpose around every dot)
  q_bkmh = einops.rearrange(q_btkgh, "b t k g h -> b k (g t) h")
  scores_bkms = jnp.einsum("BKMH,BKHS->BKMS", q_bkmh, k_bkhs.astype(dt))
  scores_bkgts = einops.rearrange(scores_bkms, "b k (g t) s -> b k g t s", g=groups)
  probs_bkgts = probabilities(scores_bkgts, mask_bts, h)
  out_bkmh = jnp.einsum(
    "BKMS,BKSH->BKMH", probs_bkgts.astype(dt).reshape(scores_bkms.shape), v_bksh.astype(dt)
  )
  return einops.rearrange(out_bkmh, "b k (g t) h -> b t k g h", g=groups)


def attend_one_query(
  q_b1kgh: jax.Array, k_bkhs: jax.Array, v_bksh: jax.Array, mask_b1s: jax.Array
) -> jax.Array:
  """A decode step (one query per row) over the cache as laid out, as batched dots, in fp32."""
  dt = q_b1kgh.dtype
  q_bkgh = q_b1kgh[:, 0].astype(jnp.float32)
  k_bkhs, v_bksh = k_bkhs.astype(jnp.float32), v_bksh.astype(jnp.float32)
  scores_bkgs = jnp.einsum("BKGH,BKHS->BKGS", q_bkgh, k_bkhs)
  probs_bkgs = probabilities(scores_bkgs[:, :, :, None, :], mask_b1s, q_bkgh.shape[-1])[:, :, :, 0]
  out_bkgh = jnp.einsum("BKGS,BKSH->BKGH", probs_bkgs, v_bksh)
  return out_bkgh[:, None].astype(dt)


def write_cache(
  cache: jax.Array, new: jax.Array, write_slot_b: jax.Array, slot_axis: int
) -> jax.Array:
  """Row b's new entries into its cache at slots write_slot[b] onwards along `slot_axis` (of the
  per-row array)."""
  at_slot = lambda c, x, at: jax.lax.dynamic_update_slice_in_dim(c, x, at, axis=slot_axis)
  return constrain(jax.vmap(at_slot)(cache, new.astype(cache.dtype), write_slot_b), RULES.cache_kv)
