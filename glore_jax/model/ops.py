"""The platform-specific operations of a model, chosen ONCE when it is built (`select_ops`).

The layers in `attention` and `llama` call `Ops` for the few operations whose best form depends
on the platform and never ask the platform themselves (as MaxText's `attention_op` dispatches
kernels). Three implementations are combined here:

* the XLA reference (`attention.attend`, `attention.attend_one_query`, one matmul per
  projection): every platform without a faster path, and the numerics the others are tested to;
* the XLA:CPU fast paths (`cpu_paths`): fused projections, few-row decode steps;
* the Pallas TPU kernels (`kernels`): flash attention for the cache-free pass and the ragged
  decode kernel, where their tiles fit the shapes (else the reference runs).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from glore_jax.model import attention, cpu_paths, kernels
from glore_jax.model.attention import AttentionFn
from glore_jax.model.config import LlamaConfig
from glore_jax.model.layers import project_heads


@dataclasses.dataclass(frozen=True)
class Ops:
  """How a model runs its platform-dependent operations (hashable: it is part of the model's
  static graph definition).

  Attributes:
    platform: the backend the programs are built for ('cpu', 'tpu', 'gpu').
    fused_projections: q/k/v and gate/up each as one wide matmul (`cpu_paths`).
    pallas: the Pallas kernels (`kernels`) where their tiles fit the shapes.
    one_query: the XLA decode-step attention (reference or the CPU's few-row form).
  """

  platform: str
  fused_projections: bool
  pallas: bool
  one_query: AttentionFn

  def project_qkv(
    self, x_btd: jax.Array, q_dnh: jax.Array, k_dkh: jax.Array, v_dkh: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [B, T, N, H], k and v [B, T, K, H] from inputs [B, T, D] and weights in x's dtype."""
    if self.fused_projections:
      return cpu_paths.fused_qkv(x_btd, q_dnh, k_dkh, v_dkh)
    return project_heads(x_btd, q_dnh), project_heads(x_btd, k_dkh), project_heads(x_btd, v_dkh)

  def project_gate_up(
    self, x_btd: jax.Array, gate_df: jax.Array, up_df: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """The MLP's gate and up projections [B, T, F]."""
    if self.fused_projections:
      return cpu_paths.fused_gate_up(x_btd, gate_df, up_df)
    return (jnp.einsum("BTD,DF->BTF", x_btd, gate_df), jnp.einsum("BTD,DF->BTF", x_btd, up_df))

  def causal_attention(
    self, q_btkgh: jax.Array, k_bkhs: jax.Array, v_bksh: jax.Array, mask_bts: jax.Array
  ) -> jax.Array:
    """The cache-free pass (training, scoring): flash attention when its tiles fit T."""
    if self.pallas and kernels.flash_fits(q_btkgh.shape[1]):
      return kernels.flash_attention(q_btkgh, k_bkhs, v_bksh, mask_bts)
    return attention.attend(q_btkgh, k_bkhs, v_bksh, mask_bts)

  def prefill_attention(
    self, q_btkgh: jax.Array, k_bkhs: jax.Array, v_bksh: jax.Array, mask_bts: jax.Array
  ) -> jax.Array:
    """T queries per row over the KV cache: the reference on every platform."""
    return attention.attend(q_btkgh, k_bkhs, v_bksh, mask_bts)

  def decode_attention(
    self, q_b1kgh: jax.Array, k_bkhs: jax.Array, v_bksh: jax.Array, mask_b1s: jax.Array
  ) -> jax.Array:
    """One query per row over the KV cache: the Pallas decode kernel when its blocks tile the
    cache, else `one_query`."""
    if self.pallas and kernels.decode_fits(k_bkhs.shape[-1]):
      return kernels.decode_attention(q_b1kgh, k_bkhs, v_bksh, mask_b1s)
    return self.one_query(q_b1kgh, k_bkhs, v_bksh, mask_b1s)


def select_ops(cfg: LlamaConfig) -> Ops:
  """The operations a model built from `cfg` runs: the one place that asks the platform.

  Args:
    cfg: `cfg.target_platform` picks the defaults; `cfg.fuse_projections` and
      `cfg.pallas_attention` (when not None) override them.
  """
  platform = cfg.target_platform
  fused = platform == "cpu" if cfg.fuse_projections is None else cfg.fuse_projections
  one_query = cpu_paths.attend_one_query if platform == "cpu" else attention.attend_one_query
  return Ops(
    platform=platform, fused_projections=fused, pallas=kernels.use_pallas(cfg), one_query=one_query
  )
