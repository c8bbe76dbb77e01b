"""XLA:CPU fast paths: the same math as the reference in `attention` and `layers`, arranged the
way XLA:CPU runs fastest (measured on the 2-core VM the project's CPU figures come from).
`glore_jax.model.ops.select_ops` picks them when a model is built for the CPU.

* `fused_qkv`, `fused_gate_up`: q/k/v and gate/up each as ONE wide matmul over weights
  concatenated at run time (narrow matmuls run well below XLA:CPU's peak; on TPU the
  concatenated copies would only cost memory).
* `attend_one_query`: a decode step with few rows as multiply-and-sum.
* `logits_vocab_major`: the LM head with its weight as the left operand.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp

from glore_jax.model import attention
from glore_jax.model.layers import project_heads

# from this many rows on, a decode step's attention runs as batched dots (measured on XLA:CPU:
# 8 and 32 rows faster as dots, 1 row faster as multiply-and-sum)
DOT_ATTENTION_MIN_ROWS = 8


def attend_one_query(
  q_b1kgh: jax.Array, k_bkhs: jax.Array, v_bksh: jax.Array, mask_b1s: jax.Array
) -> jax.Array:
  """`attention.attend_one_query` (fp32, over the cache as laid out). Few rows: multiply-and-sum,
  since XLA:CPU runs B*K tiny [G, H] x [H, S] dots slower than that; many rows: batched dots."""
  if q_b1kgh.shape[0] >= DOT_ATTENTION_MIN_ROWS:
    return attention.attend_one_query(q_b1kgh, k_bkhs, v_bksh, mask_b1s)
  dt = q_b1kgh.dtype
  q_bkgh = q_b1kgh[:, 0].astype(jnp.float32)
  k_bkhs, v_bksh = k_bkhs.astype(jnp.float32), v_bksh.astype(jnp.float32)
  scores_bkgs = jnp.sum(q_bkgh[..., None] * k_bkhs[:, :, None], axis=3)
  probs_bkgs = attention.probabilities(scores_bkgs[:, :, :, None, :], mask_b1s, q_bkgh.shape[-1])[
    :, :, :, 0
  ]
  out_bkgh = jnp.sum(probs_bkgs[..., None] * v_bksh[:, :, None], axis=3)
  return out_bkgh[:, None].astype(dt)


def fused_qkv(
  x_btd: jax.Array, q_dnh: jax.Array, k_dkh: jax.Array, v_dkh: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q [B, T, N, H], k and v [B, T, K, H] as ONE matmul: each kv head's G query heads, key and
  value side by side ([D, K, G+2, H], concatenated on an unsharded axis, so tensor shards stay
  local)."""
  k_heads = k_dkh.shape[1]
  groups = q_dnh.shape[1] // k_heads
  w_dkjh = jnp.concatenate(
    [
      einops.rearrange(q_dnh, "d (k g) h -> d k g h", k=k_heads),
      k_dkh[:, :, None],
      v_dkh[:, :, None],
    ],
    axis=2,
  )
  qkv_btkjh = einops.rearrange(
    project_heads(x_btd, einops.rearrange(w_dkjh, "d k j h -> d (k j) h")),
    "b t (k j) h -> b t k j h",
    k=k_heads,
  )
  # split, not indexing: its gradient is one concatenation rather than a zero-padded copy of
  # the whole projection per part
  q_btkgh, k_btk1h, v_btk1h = jnp.split(qkv_btkjh, [groups, groups + 1], axis=3)
  return (
    einops.rearrange(q_btkgh, "b t k g h -> b t (k g) h"),
    k_btk1h[:, :, :, 0],
    v_btk1h[:, :, :, 0],
  )


def fused_gate_up(
  x_btd: jax.Array, gate_df: jax.Array, up_df: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The MLP's gate and up projections [B, T, F] as one [D, 2, F] matmul (concatenated on an
  unsharded axis)."""
  w_d2f = jnp.stack([gate_df, up_df], axis=1)
  gate_bt1f, up_bt1f = jnp.split(jnp.einsum("BTD,DJF->BTJF", x_btd, w_d2f), 2, axis=2)
  return gate_bt1f[:, :, 0], up_bt1f[:, :, 0]


def logits_vocab_major(
  hidden_rd: jax.Array, embedding_vd: jax.Array | None = None, lm_head_dv: jax.Array | None = None
) -> jax.Array:
  """LM logits in fp32 as [V, R] for rows [R, D]: the head's weight is the left operand, which
  XLA:CPU runs ~25% faster than [R, D] x [D, V] when R is a batch of decode rows.

  Args:
    hidden_rd: final hidden states [R, D].
    embedding_vd: the tied embedding [V, D] when the model ties its head, else None;
    lm_head_dv: the untied LM head [D, V] otherwise.
  """
  dt = hidden_rd.dtype
  if embedding_vd is not None:
    logits = jnp.einsum("VD,RD->VR", embedding_vd.astype(dt), hidden_rd)
  else:
    logits = jnp.einsum("DV,RD->VR", lm_head_dv.astype(dt), hidden_rd)
  return logits.astype(jnp.float32)
