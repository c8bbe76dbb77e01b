"""Sampling rules: pure functions of logits (temperature, top-k, top-p, greedy), the finish
rules (EOS and stop tokens) and the per-row random keys. Usable and testable on their own.

Logprobs are those of the model's own distribution (log-softmax of the raw logits, before
temperature, top-k and top-p), the quantity policy-gradient and reward code wants.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "EOS",
  "FINISH_REASONS",
  "PAD_ID",
  "RUNNING",
  "STOP",
  "SamplingParams",
  "greedy_vocab_major",
  "row_keys",
  "sample_logits",
  "update_finish",
]

# finish codes on device; RUNNING = still running (reported as 'length' when the budget runs out)
RUNNING, EOS, STOP = 0, 1, 2
FINISH_REASONS = {RUNNING: "length", EOS: "eos", STOP: "stop"}
PAD_ID = 0  # written after a row has finished


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Static sampling rules (each distinct value compiles its own decode program).

  Args:
    temperature: divides the logits before drawing; 0 = greedy (the first argmax).
    top_k: draw only among the k most likely tokens; 0 = off.
    top_p: draw only from the smallest set of most likely tokens whose probability reaches
      top_p (nucleus sampling); 1 = off.
  """

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1]")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def _top_p_filter(scaled_rv: jax.Array, top_p: float) -> jax.Array:
  """Keeps the smallest set of most likely tokens whose mass reaches `top_p` (ties at the
  threshold are all kept); the rest get -inf."""
  sorted_rv = -jnp.sort(-scaled_rv, axis=-1)
  probs = jax.nn.softmax(sorted_rv, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  num_kept = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1), 1)
  threshold = jnp.take_along_axis(sorted_rv, (num_kept - 1)[:, None], axis=-1)
  return jnp.where(scaled_rv >= threshold, scaled_rv, -jnp.inf)


def _first_argmax(x: jax.Array, axis: int = -1) -> jax.Array:
  """argmax along `axis` (the first index on ties) as two plain reductions: XLA:CPU runs
  argmax's (value, index) pair reduction several times slower over a 49k vocabulary."""
  size = x.shape[axis]
  top = jnp.max(x, axis=axis, keepdims=True)
  index_shape = [1] * x.ndim
  index_shape[axis] = size
  index = jnp.arange(size, dtype=jnp.int32).reshape(index_shape)
  first = jnp.min(jnp.where(x == top, index, size), axis=axis)
  return jnp.minimum(first, size - 1).astype(jnp.int32)  # NaN rows: a valid id


def _token_logprobs(logits: jax.Array, tokens_r: jax.Array, axis: int = -1) -> jax.Array:
  """log softmax at the drawn tokens: reductions over the vocabulary `axis`, no result array
  the size of the logits."""
  top = jnp.max(logits, axis=axis, keepdims=True)
  log_z_r = jnp.squeeze(top, axis) + jnp.log(jnp.sum(jnp.exp(logits - top), axis=axis))
  picked_r = jnp.squeeze(jnp.take_along_axis(logits, jnp.expand_dims(tokens_r, axis), axis), axis)
  return picked_r - log_z_r


def greedy_vocab_major(logits_vr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`sample_logits` with greedy params for logits laid out [V, R].

  Args:
    logits_vr: logits [V, R], vocabulary-major (any float dtype; computed in fp32).

  Returns:
    (tokens [R] int32, logprobs [R] fp32).
  """
  logits_vr = logits_vr.astype(jnp.float32)
  tokens_r = _first_argmax(logits_vr, axis=0)
  return tokens_r, _token_logprobs(logits_vr, tokens_r, axis=0)


def sample_logits(
  keys_r: jax.Array, logits_rv: jax.Array, params: SamplingParams
) -> tuple[jax.Array, jax.Array]:
  """One token per row.

  Args:
    keys_r: typed random keys [R], one per row (unused when greedy).
    logits_rv: logits [R, V] (any float dtype; computed in fp32).
    params: the sampling rules (static).

  Returns:
    (tokens [R] int32, logprobs [R] fp32 under the unmodified distribution).
  """
  logits_rv = logits_rv.astype(jnp.float32)
  if params.greedy:
    tokens_r = _first_argmax(logits_rv)
  else:
    scaled_rv = logits_rv / params.temperature
    categorical = jax.vmap(jax.random.categorical)
    vocab = scaled_rv.shape[-1]
    if 0 < params.top_k < vocab:
      vals_rk, idx_rk = jax.lax.top_k(scaled_rv, params.top_k)  # sorted, descending
      if params.top_p < 1.0:
        vals_rk = _top_p_filter(vals_rk, params.top_p)
      choice_r = categorical(keys_r, vals_rk)
      tokens_r = jnp.take_along_axis(idx_rk, choice_r[:, None], axis=-1)[:, 0]
    else:
      if params.top_p < 1.0:
        scaled_rv = _top_p_filter(scaled_rv, params.top_p)
      tokens_r = categorical(keys_r, scaled_rv)
    tokens_r = tokens_r.astype(jnp.int32)
  return tokens_r, _token_logprobs(logits_rv, tokens_r)


def update_finish(
  tokens_r: jax.Array, finish_r: jax.Array, eos_ids: jax.Array, stop_ids: jax.Array
) -> jax.Array:
  """Finish codes [R] after emitting `tokens_r` [R]: a running row that emitted one of
  `eos_ids` finishes with EOS (EOS wins over a stop id naming the same token), one of
  `stop_ids` with STOP; rows already finished keep their code."""
  running = finish_r == RUNNING
  is_eos = jnp.any(tokens_r[:, None] == eos_ids[None, :], axis=-1)
  is_stop = jnp.any(tokens_r[:, None] == stop_ids[None, :], axis=-1)
  finish_r = jnp.where(running & is_eos, EOS, finish_r)
  return jnp.where(running & ~is_eos & is_stop, STOP, finish_r)


def row_keys(seed: int, ids_rm: np.ndarray) -> np.ndarray:
  """Per-row random keys, as raw key data on the host.

  Args:
    seed: the run's seed.
    ids_rm: [R, M] unsigned ids; row r's key is key(seed) folded with ids_rm[r, 0], ...,
      ids_rm[r, M-1] in order.

  Returns:
    Raw key data [R, ...]; `jax.random.wrap_key_data` turns it back into keys.
  """
  ids_rm = np.asarray(ids_rm, dtype=np.uint32).reshape(len(ids_rm), -1)
  return np.asarray(jax.random.key_data(_fold_ids(jax.random.key(seed), jnp.asarray(ids_rm))))


@jax.jit
def _fold_ids(base, ids_rm):
  def one(ids_m):
    key = base
    for j in range(ids_m.shape[0]):
      key = jax.random.fold_in(key, ids_m[j])
    return key

  return jax.vmap(one)(ids_rm)
