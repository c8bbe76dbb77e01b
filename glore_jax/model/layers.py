"""The Llama's position-wise pieces as plain functions: parameter init, RMSNorm, HF-convention
RoPE, per-head projections and the packing of [B, T] rows into the N tokens worth computing."""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

# standard deviation of every randomly initialised weight (as HF's `initializer_range`)
INIT_STD = 0.02


def param(
  rngs: nnx.Rngs, shape: tuple[int, ...], dtype: jnp.dtype | str, spec: P, *, std: float = INIT_STD
) -> nnx.Param:
  """A normal(0, std) parameter drawn in fp32, stored as `dtype`, tagged with its PartitionSpec.

  Args:
    rngs: the model's random streams (`rngs.params()` is drawn from).
    shape: the parameter's shape.
    dtype: its storage dtype.

    spec: its sharding, from `glore_jax.model.sharding.RULES`.
    std: the standard deviation.
  """
  value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value.astype(dtype), partition=tuple(spec))


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """RMSNorm over the last axis with fp32 statistics whatever the compute dtype, as HF does."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale.astype(x.dtype) * y.astype(x.dtype)


def rope_tables(
  positions_bt: jax.Array, head_dim: int, theta: float
) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) [B, T, H] of the rotary angles: computed once per forward pass and shared by
  every layer, as they depend only on the positions.

  Args:
    positions_bt: each token's position [B, T].
    head_dim: H.
    theta: the RoPE base (`LlamaConfig.rope_theta`).

  """
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


def project_heads(x_btd: jax.Array, w_dnh: jax.Array) -> jax.Array:
  """x @ w as one [D] x [D, N*H] matmul over the weight as stored, then split into heads."""
  n = w_dnh.shape[1]
  y_bte = jnp.einsum("BTD,DE->BTE", x_btd, einops.rearrange(w_dnh, "d n h -> d (n h)"))
  return einops.rearrange(y_bte, "b t (n h) -> b t n h", n=n)


def pack_rows(x_bt: jax.Array, index_n: jax.Array) -> jax.Array:
  """[B, T, ...] -> [1, N, ...]: the entries at flat positions `index_n` (b * T + t); an index
  past the end (a filler that rounds N up to its bucket) gives zeros.

  Args:
    x_bt: per-token values of B rows of T tokens.
    index_n: [N] int32 flat positions to keep, in order.
  """
  flat = einops.rearrange(x_bt, "b t ... -> (b t) ...")
  return flat.at[index_n].get(mode="fill", fill_value=0)[None]


def unpack_rows(x_1n: jax.Array, index_n: jax.Array, b: int, t: int) -> jax.Array:
  """The inverse of `pack_rows`: [1, N, ...] -> [B, T, ...], zeros where nothing was packed.

  Args:
    x_1n: packed values [1, N, ...].
    index_n: the [N] int32 flat positions `pack_rows` read; fillers past B * T are dropped.
    b: B, the number of rows.
    t: T, the tokens per row.

  """
  flat = jnp.zeros((b * t, *x_1n.shape[2:]), x_1n.dtype).at[index_n].set(x_1n[0], mode="drop")
  return einops.rearrange(flat, "(b t) ... -> b t ...", b=b)
