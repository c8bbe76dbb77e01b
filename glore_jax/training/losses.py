"""Training losses and eval metrics, written as pure functions of arrays so they can be checked
against numpy.

Conventions (see `batch.py` for the batch format):

* LM loss: `logits_btv[b, t]` is the prediction for `targets_bt[b, t]`, which is `tokens[b, t+1]`
  (`shift_targets`); `mask_bt[b, t] = 1` where that prediction is scored. The loss is the mean
  negative log-likelihood over *all* scored tokens of the batch (not a mean of per-sequence
  means), so long and short solutions weigh per token.
* Value loss: binary cross-entropy between sigmoid(value logit) and a target in [0, 1] (hard 0/1 or
  soft fraction of successful rollouts), read at the last token of every step, averaged over all
  labelled steps of the batch.

`*_sums` return (sum, count) so gradient accumulation and sharded batches can divide once by the
global count; `lm_loss` / `value_loss` are the plain means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike


def shift_targets(tokens_bt: jax.Array, pad_id: int = 0) -> jax.Array:
  """targets[b, t] = tokens[b, t+1]; the last column (no next token) is `pad_id`."""
  pad = jnp.full(tokens_bt.shape[:-1] + (1,), pad_id, tokens_bt.dtype)
  return jnp.concatenate([tokens_bt[..., 1:], pad], axis=-1)


def token_nll(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
  """-log softmax(logits)[target] per position, in fp32."""
  logits = logits_btv.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets_bt[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return lse - picked


def lm_loss_sums(
  logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(sum of NLL over scored tokens, number of scored tokens). Masked positions contribute
  exactly zero (their NLL is selected away, so a NaN/garbage target there cannot leak).

  Args:
    logits_btv: [B, T, V] logits; position t predicts `targets_bt[:, t]`.
    targets_bt: [B, T] token ids (`shift_targets` of the tokens).
    mask_bt: [B, T], nonzero where the prediction is scored.
  """
  mask = mask_bt.astype(bool)
  nll = jnp.where(mask, token_nll(logits_btv, jnp.where(mask, targets_bt, 0)), 0.0)
  return nll.sum(), mask.sum().astype(jnp.float32)


def lm_loss(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  """The mean NLL over every scored token of the batch (arguments as `lm_loss_sums`)."""
  total, count = lm_loss_sums(logits_btv, targets_bt, mask_bt)
  return total / jnp.maximum(count, 1.0)


def binary_cross_entropy_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Numerically stable BCE(sigmoid(z), y) = max(z, 0) - z*y + log1p(exp(-|z|)); y may be soft."""
  z = logits.astype(jnp.float32)
  y = targets.astype(jnp.float32)
  return jnp.maximum(z, 0.0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))


def value_loss_sums(
  value_logits_bm: jax.Array, targets_bm: jax.Array, mask_bm: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(sum of BCE over labelled steps, number of labelled steps).

  Args:
    value_logits_bm: [B, M] value-head logits at the steps' last tokens.
    targets_bm: [B, M] targets in [0, 1] (hard or soft).
    mask_bm: [B, M], nonzero for the labelled steps.
  """
  mask = mask_bm.astype(bool)
  bce = binary_cross_entropy_with_logits(value_logits_bm, jnp.where(mask, targets_bm, 0.0))
  return jnp.where(mask, bce, 0.0).sum(), mask.sum().astype(jnp.float32)


def value_loss(value_logits_bm: jax.Array, targets_bm: jax.Array, mask_bm: jax.Array) -> jax.Array:
  """The mean BCE over every labelled step of the batch (arguments as `value_loss_sums`)."""
  total, count = value_loss_sums(value_logits_bm, targets_bm, mask_bm)
  return total / jnp.maximum(count, 1.0)


def gather_steps(x_bt_: jax.Array, index_bm: jax.Array) -> jax.Array:
  """x[b, index[b, m]] for [B, T, ...] x; padded indices (-1) read position 0 (mask them)."""
  index = jnp.clip(index_bm, 0, x_bt_.shape[1] - 1).astype(jnp.int32)
  extra = (1,) * (x_bt_.ndim - 2)
  return jnp.take_along_axis(x_bt_, index.reshape(index.shape + extra), axis=1)


# ---- host-side metrics ----------------------------------------------------------------------


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
  """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN when only one
  class is present.

  Args:
    scores: higher means more likely positive.
    labels: > 0.5 is positive.
  """
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels).ravel() > 0.5
  pos, neg = int(labels.sum()), int((~labels).sum())
  if pos == 0 or neg == 0:
    return float("nan")
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties share their mean rank
  u = ranks[labels].sum() - pos * (pos + 1) / 2.0
  return float(u / (pos * neg))
