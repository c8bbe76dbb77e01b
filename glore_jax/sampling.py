"""The sampler: one jitted prefill, a jitted `lax.while_loop` decode over a donated KV cache,
and fan-out of many continuations from one prefill.

Every decode row is described by (the prefilled sequence it reads, how many of that sequence's
tokens are its prompt, the ids its random key is folded from). That one description covers
  * plain generation (row prompt = a whole prompt),
  * fan-out (a), K samples per prompt: K rows read the same prefilled prompt, and
  * fan-out (b), rollouts from every step prefix of a draft: rows read the prefill of
    prompt + draft and start at a shorter prefix. The KV cache of a prefix is the first slots of
    the draft's cache, so the row just gets a smaller cache `length` (stale slots beyond it are
    masked, then overwritten), and its first token is sampled from the draft's hidden state at
    the prefix's last position: nothing is prefilled twice.

Randomness: row r's key is `fold_in(...fold_in(key(seed), id_0)..., id_m)` over its ids
(example id, or a tuple of ids, then the sample index) and the key of its t-th new token is
`fold_in(row_key, t)`, so a row's tokens depend on its ids and its prompt, never on the batch it
lands in or on the other rows.

Shapes are bucketed (prompt length and row count rounded up to powers of two), so a run compiles
a few programs rather than one per batch. An unsharded prefill also packs the prompt tokens: the
projections and MLP run only on them (their count rounded up to 1/2, 3/4 or all of the batch's
slots, so at most three prefill programs per bucket), attention and the cache on the rows.
Weights go into the jitted functions as an argument (`nnx.split` outside, `nnx.merge` inside);
the decode cache and output buffers are donated.

Text-level helpers (stop strings, decoding) live in `glore_jax.sampling_text`.

Logprobs are those of the model's own distribution (log-softmax of the raw logits, before
temperature, top-k and top-p), the quantity policy-gradient and reward code wants.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from glore_jax.model.llama import KVCache, Llama
from glore_jax.model.sharding import BATCH, RULES, constrain, fit_spec

log = logging.getLogger(__name__)

__all__ = ["Sample", "SamplingParams", "Rollouts", "PromptTooLongError", "generate",
           "rollouts_from_prefixes", "rollouts_from_prefixes_batch", "prefill_token_counts",
           "sample_logits", "row_keys"]

# finish codes on device; 0 = still running (reported as 'length' when the budget runs out)
_RUNNING, _EOS, _STOP = 0, 1, 2
_REASONS = {_RUNNING: "length", _EOS: "eos", _STOP: "stop"}
_PAD_ID = 0

IdLike = int | Sequence[int]


class PromptTooLongError(ValueError):
  """A prompt (plus the tokens to generate) does not fit in the model's context."""


@dataclasses.dataclass
class Sample:
  """One generated continuation.

  tokens: the new token ids (an EOS or stop token that ended the row is included).
  logprobs: log p(token) under the model's unmodified distribution, one per token.
  finish_reason: 'eos' (the model's EOS), 'stop' (a stop token id or stop string), 'length'.
  text: set by the text helpers (cut at the first stop string); None from `generate`.
  """
  tokens: list[int]
  logprobs: list[float]
  finish_reason: str
  text: str | None = None


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Static sampling rules (each distinct value compiles its own decode program)."""
  temperature: float = 0.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off

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


# ------------------------------------------------------------------------------------------
# Sampling rules (pure functions of logits; usable and testable on their own)


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


def _greedy_vocab_major(logits_vr: jax.Array):
  """`sample_logits` with greedy params for logits laid out [V, R]: (tokens [R], logprobs [R])."""
  logits_vr = logits_vr.astype(jnp.float32)
  tokens_r = _first_argmax(logits_vr, axis=0)
  return tokens_r, _token_logprobs(logits_vr, tokens_r, axis=0)


def sample_logits(keys_r: jax.Array, logits_rv: jax.Array, params: SamplingParams):
  """One token per row from fp32 logits [R, V] with per-row keys [R]: (tokens [R], logprobs [R])."""
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


def row_keys(seed: int, ids_rm: np.ndarray) -> np.ndarray:
  """Raw key data [R, ...] (host) of key(seed) folded with each of a row's M ids in order;
  `jax.random.wrap_key_data` turns it back into keys."""
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


# ------------------------------------------------------------------------------------------
# Jitted programs


def _finish(tokens_r, finish_r, eos_ids, stop_ids):
  """New finish codes after emitting `tokens_r` (rows already finished keep theirs)."""
  running = finish_r == _RUNNING
  is_eos = jnp.any(tokens_r[:, None] == eos_ids[None, :], axis=-1)
  is_stop = jnp.any(tokens_r[:, None] == stop_ids[None, :], axis=-1)
  finish_r = jnp.where(running & is_eos, _EOS, finish_r)
  return jnp.where(running & ~is_eos & is_stop, _STOP, finish_r)


def _rows(x):
  return constrain(x, P(BATCH, *(None,) * (x.ndim - 1)))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prefill(graphdef, state, tokens_bt, start_b, packed_n):
  """Left-padded prompts [B, T] into a fresh T-slot cache; hidden states of every position
  (zeros at padding when `packed_n` lists the prompt tokens to compute)."""
  model = nnx.merge(graphdef, state)
  b, t = tokens_bt.shape
  cache = model.init_cache(b, t, start_b=start_b)
  hidden_btd, cache = model.forward(tokens_bt, cache=cache, packed_n=packed_n)
  return hidden_btd, cache


@functools.partial(jax.jit, static_argnames=("graphdef", "params", "cache_size", "max_new_tokens"))
def _start(graphdef, state, prefill_cache, hidden_btd, src_r, last_slot_r, keys_r, eos_ids, stop_ids,
           *, params, cache_size, max_new_tokens):
  """Decode rows from a prefill: row r reads prefilled sequence src[r] up to slot last_slot[r]
  (its prompt's last token). Gathers and widens the cache, samples each row's first token."""
  model = nnx.merge(graphdef, state)
  keys_r = jax.random.wrap_key_data(keys_r)
  hidden_rd = _rows(hidden_btd[src_r, last_slot_r])
  logits_rv = model.logits(hidden_rd)  # only the positions sampled from
  tokens_r, logprobs_r = sample_logits(jax.vmap(jax.random.fold_in)(keys_r, jnp.zeros_like(src_r)),
                                       logits_rv, params)
  def widen(x, slot_axis):  # rows gathered, slots padded to the decode cache's size
    pad = [(0, 0)] * x.ndim
    pad[slot_axis] = (0, cache_size - x.shape[slot_axis])
    return constrain(jnp.pad(x[src_r], pad), RULES.cache_kv)
  cache = KVCache(tuple(widen(k, 3) for k in prefill_cache.k),  # [B, K, H, S]
                  tuple(widen(v, 2) for v in prefill_cache.v),  # [B, K, S, H]
                  _rows(prefill_cache.start[src_r]), _rows(last_slot_r + 1))
  r = src_r.shape[0]
  out_tokens = _rows(jnp.full((r, max_new_tokens), _PAD_ID, jnp.int32).at[:, 0].set(tokens_r))
  out_logprobs = _rows(jnp.zeros((r, max_new_tokens), jnp.float32).at[:, 0].set(logprobs_r))
  finish_r = _finish(tokens_r, jnp.zeros((r,), jnp.int32), eos_ids, stop_ids)
  return cache, dict(tokens=out_tokens, logprobs=out_logprobs, finish=finish_r, last=tokens_r,
                     step=jnp.ones((), jnp.int32))


# greedy decode steps of this many rows take the LM head as [V, D] x [D, R] on the CPU backend
# (faster there from 8 rows; 1 row is a matrix-vector product either way and ran slower so)
VOCAB_MAJOR_MIN_ROWS = 8


def _vocab_major(rows: int, platform: str | None = None) -> bool:
  return rows >= VOCAB_MAJOR_MIN_ROWS and (platform or jax.default_backend()) == "cpu"


@functools.partial(jax.jit, static_argnames=("graphdef", "params"), donate_argnames=("cache", "carry"))
def _decode(graphdef, state, cache, carry, keys_r, eos_ids, stop_ids, limit, *, params):
  """Decodes until every row has finished or `carry['step']` reaches `limit`."""
  model = nnx.merge(graphdef, state)
  keys_r = jax.random.wrap_key_data(keys_r)

  def cond(loop):
    _, c = loop
    return (c["step"] < limit) & jnp.any(c["finish"] == _RUNNING)

  def body(loop):
    cache, c = loop
    hidden_r1d, cache = model.forward(c["last"][:, None], cache=cache)
    step = c["step"]
    if params.greedy and _vocab_major(hidden_r1d.shape[0], model.cfg.target_platform):
      tokens_r, logprobs_r = _greedy_vocab_major(model.logits_vocab_major(hidden_r1d[:, 0]))
    else:
      step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_r, step)
      tokens_r, logprobs_r = sample_logits(step_keys, model.logits(hidden_r1d[:, 0]), params)
    running = c["finish"] == _RUNNING
    tokens_r = jnp.where(running, tokens_r, _PAD_ID)
    logprobs_r = jnp.where(running, logprobs_r, 0.0)
    out_tokens = jax.lax.dynamic_update_slice_in_dim(c["tokens"], tokens_r[:, None], step, axis=1)
    out_logprobs = jax.lax.dynamic_update_slice_in_dim(c["logprobs"], logprobs_r[:, None], step, axis=1)
    finish_r = _finish(tokens_r, c["finish"], eos_ids, stop_ids)
    return cache, dict(tokens=out_tokens, logprobs=out_logprobs, finish=finish_r, last=tokens_r,
                       step=step + 1)

  return jax.lax.while_loop(cond, body, (cache, carry))


# ------------------------------------------------------------------------------------------
# Host-side planning


def _pow2(n: int, minimum: int = 1) -> int:
  return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@dataclasses.dataclass(frozen=True)
class _Row:
  seq: int  # index into the prefill sequences
  prompt_len: int  # how many tokens of that sequence are this row's prompt
  ids: tuple[int, ...]  # key ids
  out: tuple  # where the result goes (opaque to the engine)


def _check_lengths(prompts: Sequence[Sequence[int]], max_new_tokens: int, context: int, what: str):
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f"{what} {i} is empty; a prompt needs at least one token (e.g. BOS)")
    if len(p) + max_new_tokens > context:
      raise PromptTooLongError(
          f"{what} {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} it needs "
          f"{len(p) + max_new_tokens} positions but the model's context "
          f"(max_position_embeddings) is {context}: prompts may have at most "
          f"{context - max_new_tokens} tokens. Truncate the prompt or lower max_new_tokens.")


def _as_ids(x: IdLike) -> tuple[int, ...]:
  if isinstance(x, (int, np.integer)):
    return (int(x),)
  return tuple(int(i) for i in x)


def _plan(seqs: Sequence[Sequence[int]], rows_per_seq: Sequence[list[_Row]], batch_size: int):
  """Groups sequences (longest first) into jobs of at most `batch_size` decode rows; a sequence
  with more rows than that gets a job of its own whose rows decode in several chunks."""
  order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
  jobs, current, count = [], [], 0
  for i in order:
    n = len(rows_per_seq[i])
    if current and count + n > batch_size:
      jobs.append(current)
      current, count = [], 0
    current.append(i)
    count += n
  if current:
    jobs.append(current)
  return jobs


def _put(x: np.ndarray, mesh, spec):
  """A host array onto the mesh (every process passes the same value; multi-host safe)."""
  if mesh is None:
    return jnp.asarray(x)
  x = np.asarray(x)
  sharding = NamedSharding(mesh, fit_spec(spec, x.shape, mesh))
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host sharded) array as one numpy array on every process."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


class _Engine:
  """Runs decode rows over prefilled sequences (the one path behind every public function)."""

  def __init__(self, model: Llama, *, max_new_tokens: int, params: SamplingParams, seed: int,
               stop_token_ids: Iterable[int], eos_token_id: int | None | str, mesh, batch_size: int,
               min_prompt_bucket: int, stop_checker, check_every: int, progress):
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    self.model, self.cfg = model, model.cfg
    self.graphdef, self.state = nnx.split(model)
    self.max_new_tokens, self.params, self.seed, self.mesh = max_new_tokens, params, seed, mesh
    if eos_token_id == "model":
      eos_token_id = self.cfg.eos_token_id
    eos = [] if eos_token_id is None else [int(eos_token_id)]
    stops = sorted(set(int(t) for t in stop_token_ids) - set(eos))
    # -1 never matches a token; keeps the arrays non-empty with a stable shape
    self.eos_ids = np.array(eos or [-1], np.int32)
    self.stop_ids = np.array(stops or [-1], np.int32)
    self.batch_size, self.min_prompt_bucket = batch_size, min_prompt_bucket
    self.stop_checker, self.check_every, self.progress = stop_checker, max(1, check_every), progress

  def run(self, seqs: Sequence[Sequence[int]], rows_per_seq: Sequence[list[_Row]]) -> dict[tuple, Sample]:
    results: dict[tuple, Sample] = {}
    jobs = _plan(seqs, rows_per_seq, self.batch_size)
    chunks = [(job, rows[i:i + self.batch_size]) for job in jobs
              for rows in [[r for s in job for r in rows_per_seq[s]]]
              for i in range(0, len(rows), self.batch_size)]
    from tqdm.auto import tqdm
    show = self.progress if self.progress is not None else len(chunks) > 4
    bar = tqdm(total=sum(len(rows) for _, rows in chunks), unit="row", desc="sampling",
               disable=not show, leave=False)
    with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
      prefilled = None
      for job, rows in chunks:
        if prefilled is None or prefilled[0] is not job:
          prefilled = (job, *self._prefill([seqs[s] for s in job]))
        _, start, hidden, cache = prefilled
        local = {s: j for j, s in enumerate(job)}
        for row, sample in zip(rows, self._decode_rows(rows, local, start, hidden, cache)):
          results[row.out] = sample
        bar.update(len(rows))
    bar.close()
    return results

  def _prefill(self, seqs):
    t = _pow2(max(len(s) for s in seqs), self.min_prompt_bucket)
    b = _pow2(len(seqs))
    tokens = np.full((b, t), _PAD_ID, np.int32)
    start = np.full((b,), t - 1, np.int32)  # dummy rows: one pad token
    for i, s in enumerate(seqs):
      tokens[i, t - len(s):] = s
      start[i] = t - len(s)
    hidden, cache = _prefill(self.graphdef, self.state, _put(tokens, self.mesh, RULES.act_bt),
                             _put(start, self.mesh, RULES.cache_b), self._packing(start, t))
    return start, hidden, cache

  def _packing(self, start: np.ndarray, t: int) -> np.ndarray | None:
    """Flat positions of the prompt tokens of a left-padded [B, T] batch, rounded up to the next
    of B*T/2, 3B*T/4 (fillers point past the end), or None when that saves nothing. Only
    unsharded: the projections and MLP then skip the padding (at most 3 prefill programs per
    batch bucket)."""
    if self.mesh is not None:
      return None
    b = len(start)
    slots_bt = np.arange(t)[None, :]
    index_n = (np.arange(b)[:, None] * t + slots_bt)[slots_bt >= start[:, None]]
    n = next((k * b * t // 4 for k in (2, 3) if len(index_n) <= k * b * t // 4), None)
    if n is None:
      return None
    return np.concatenate([index_n, np.full(n - len(index_n), b * t)]).astype(np.int32)

  def _decode_rows(self, rows: list[_Row], local, start, hidden, prefill_cache) -> list[Sample]:
    n = len(rows)
    r = _pow2(n)
    src = np.zeros((r,), np.int32)
    last_slot = np.zeros((r,), np.int32)
    num_ids = {len(row.ids) for row in rows}
    if len(num_ids) != 1:
      raise ValueError(f"every row's key ids must have the same length, got lengths {sorted(num_ids)}")
    ids = np.zeros((r, num_ids.pop()), np.uint32)
    for i, row in enumerate(rows):
      j = local[row.seq]
      src[i] = j
      last_slot[i] = start[j] + row.prompt_len - 1
      ids[i] = row.ids
    for i in range(n, r):  # padding rows copy row 0's inputs; their outputs are dropped
      src[i], last_slot[i], ids[i] = src[0], last_slot[0], ids[0]
    keys = _put(row_keys(self.seed, ids), self.mesh, RULES.cache_b)
    eos_ids, stop_ids = jnp.asarray(self.eos_ids), jnp.asarray(self.stop_ids)
    cache_size = prefill_cache.size + self.max_new_tokens
    cache, carry = _start(self.graphdef, self.state, prefill_cache, hidden,
                          _put(src, self.mesh, RULES.cache_b), _put(last_slot, self.mesh, RULES.cache_b),
                          keys, eos_ids, stop_ids, params=self.params, cache_size=cache_size,
                          max_new_tokens=self.max_new_tokens)
    if r > n:  # padding rows: finished from the start
      finish = _host(carry["finish"]).copy()
      finish[n:] = _STOP
      carry["finish"] = _put(finish, self.mesh, RULES.cache_b)
    keep = [None] * n  # token counts cut by the stop checker
    limit = 1
    while True:  # one decode call, or chunks of `check_every` steps between host stop checks
      limit = (self.max_new_tokens if self.stop_checker is None
               else min(limit + self.check_every, self.max_new_tokens))
      cache, carry = _decode(self.graphdef, self.state, cache, carry, keys, eos_ids, stop_ids,
                             jnp.asarray(limit, jnp.int32), params=self.params)
      step = int(_host(carry["step"]))
      finish = _host(carry["finish"])
      if self.stop_checker is not None and step < self.max_new_tokens:
        tokens_host = _host(carry["tokens"])
        newly = False
        for i in range(n):
          if finish[i] == _RUNNING and keep[i] is None:
            cut = self.stop_checker(tokens_host[i, :step].tolist())
            if cut is not None:
              keep[i], newly = cut, True
        if newly:
          finish = finish.copy()
          for i in range(n):
            if keep[i] is not None:
              finish[i] = _STOP
          carry["finish"] = _put(finish, self.mesh, RULES.cache_b)
      if step >= self.max_new_tokens or not np.any(finish[:n] == _RUNNING):
        break
    del cache
    tokens_host = _host(carry["tokens"])
    logprobs_host = _host(carry["logprobs"])
    finish = _host(carry["finish"])
    samples = []
    for i in range(n):
      length = self._row_length(tokens_host[i], finish[i], step)
      reason = _REASONS[int(finish[i])]
      if self.stop_checker is not None:
        cut = keep[i] if keep[i] is not None else self.stop_checker(tokens_host[i, :length].tolist())
        if cut is not None and cut <= length:
          length, reason = cut, "stop"
      samples.append(Sample(tokens_host[i, :length].tolist(),
                            logprobs_host[i, :length].astype(float).tolist(), reason))
    return samples

  def _row_length(self, tokens, finish, step):
    if finish == _RUNNING:
      return step
    ends = np.isin(tokens[:step], np.concatenate([self.eos_ids, self.stop_ids]))
    return int(np.argmax(ends)) + 1 if ends.any() else step


# ------------------------------------------------------------------------------------------
# Public API


def generate(model: Llama, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, num_samples: int = 1,
             stop_token_ids: Iterable[int] = (), seed: int = 0,
             example_ids: Sequence[IdLike] | None = None, mesh=None,
             eos_token_id: int | None | str = "model", batch_size: int = 32,
             min_prompt_bucket: int = 16,
             stop_checker: Callable[[list[int]], int | None] | None = None, check_every: int = 16,
             progress: bool | None = None, share_prefill: bool = True) -> list[list[Sample]]:
  """Samples `num_samples` continuations of every prompt; returns result[prompt][sample].

  prompt_ids: token-id lists (any lengths; left-padded into power-of-two buckets).
  temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off.
  num_samples: each prompt is prefilled once and its cache replicated on device (fan-out a).
  stop_token_ids: tokens that end a row with finish_reason 'stop' (kept in `.tokens`).
  eos_token_id: ends a row with 'eos'; "model" = `model.cfg.eos_token_id`; None = never.
  seed, example_ids: row (prompt i, sample j) draws from key(seed) folded with example_ids[i]
    (an int or a tuple of ints; default i), then j, then the token index: the same ids give
    the same tokens in any batch. Pass stable example ids (e.g. dataset indices) for
    reproducible sampling across runs that batch differently.
  mesh: a ('data', 'fsdp', 'tensor') mesh to run under (the model should be created on it).
  batch_size: decode rows per batch (rounded up to a power of two on device).
  stop_checker: optional host callback on a running row's new tokens, called every
    `check_every` steps and at the end; returns how many tokens to keep when the row should
    stop (finish_reason 'stop'), else None. The text helpers use it for stop strings.
  share_prefill=False prefills every sample's prompt separately (the naive way; same tokens).
  """
  params = SamplingParams(float(temperature), int(top_k), float(top_p))
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples} must be >= 1")
  prompt_ids = [list(map(int, p)) for p in prompt_ids]
  _check_lengths(prompt_ids, max_new_tokens, model.cfg.max_position_embeddings, "prompt")
  if example_ids is None:
    example_ids = range(len(prompt_ids))
  example_ids = [_as_ids(e) for e in example_ids]
  if len(example_ids) != len(prompt_ids):
    raise ValueError(f"{len(example_ids)} example_ids for {len(prompt_ids)} prompts")
  engine = _Engine(model, max_new_tokens=max_new_tokens, params=params, seed=seed,
                   stop_token_ids=stop_token_ids, eos_token_id=eos_token_id, mesh=mesh,
                   batch_size=batch_size, min_prompt_bucket=min_prompt_bucket,
                   stop_checker=stop_checker, check_every=check_every, progress=progress)
  if share_prefill:
    seqs = prompt_ids
    rows = [[_Row(i, len(p), example_ids[i] + (j,), (i, j)) for j in range(num_samples)]
            for i, p in enumerate(prompt_ids)]
  else:
    seqs = [p for p in prompt_ids for _ in range(num_samples)]
    rows = [[_Row(i * num_samples + j, len(p), example_ids[i] + (j,), (i, j))]
            for i, p in enumerate(prompt_ids) for j in range(num_samples)]
  results = engine.run(seqs, rows)
  return [[results[(i, j)] for j in range(num_samples)] for i in range(len(prompt_ids))]


@dataclasses.dataclass
class Rollouts:
  """Continuations from step prefixes of one draft.

  samples[j][k]: rollout k from prefix j (prompt + draft[:prefix_ends[j] + 1]).
  prefill_tokens: tokens prefilled (prompt + draft, once); naive_prefill_tokens: what prefilling
  every prefix separately would cost (once per prefix, i.e. with fan-out (a) already applied);
  naive_per_rollout_tokens: with every rollout prefilled on its own.
  """
  samples: list[list[Sample]]
  prefill_tokens: int
  naive_prefill_tokens: int
  naive_per_rollout_tokens: int

  @property
  def prefill_saved(self) -> int:
    return self.naive_prefill_tokens - self.prefill_tokens


def prefill_token_counts(prompt_len: int, draft_len: int, prefix_ends: Sequence[int],
                         num_rollouts: int) -> tuple[int, int, int]:
  """(fan-out b, one prefill per prefix, one prefill per rollout) prefill token counts."""
  used = max(prefix_ends) + 1 if prefix_ends else 0
  ours = prompt_len + min(draft_len, used) if prefix_ends else 0
  per_prefix = sum(prompt_len + e + 1 for e in prefix_ends)
  return ours, per_prefix, per_prefix * num_rollouts


def rollouts_from_prefixes_batch(model: Llama, prompt_ids: Sequence[Sequence[int]],
                                 draft_ids: Sequence[Sequence[int]],
                                 prefix_ends: Sequence[Sequence[int]], *, num_rollouts: int,
                                 max_new_tokens: int, example_ids: Sequence[IdLike] | None = None,
                                 **kwargs) -> list[Rollouts]:
  """`rollouts_from_prefixes` for many drafts at once (drafts share prefill and decode batches).

  Rollout k from prefix j of draft d uses the key ids example_ids[d] + (prefix_ends[d][j], k):
  exactly what `generate(model, [prompt + draft[:end + 1]], example_ids=[example_ids[d] +
  (end,)], num_samples=K)` uses, so the two give the same tokens.
  """
  if not len(prompt_ids) == len(draft_ids) == len(prefix_ends):
    raise ValueError(f"{len(prompt_ids)} prompts, {len(draft_ids)} drafts and {len(prefix_ends)} "
                     "prefix_ends lists: give one of each per draft")
  if num_rollouts < 1:
    raise ValueError(f"num_rollouts={num_rollouts} must be >= 1")
  if example_ids is None:
    example_ids = range(len(prompt_ids))
  example_ids = [_as_ids(e) for e in example_ids]
  seqs, rows, counts = [], [], []
  for d, (prompt, draft, ends) in enumerate(zip(prompt_ids, draft_ids, prefix_ends)):
    prompt, draft, ends = list(map(int, prompt)), list(map(int, draft)), [int(e) for e in ends]
    for e in ends:
      if not 0 <= e < len(draft):
        raise ValueError(f"draft {d}: prefix end {e} is outside the draft's {len(draft)} tokens")
    used = max(ends) + 1 if ends else 0
    seq = prompt + draft[:used]  # tokens after the last prefix are never needed
    _check_lengths([prompt + draft[:e + 1] for e in ends], max_new_tokens,
                   model.cfg.max_position_embeddings, f"draft {d} prefix")
    seqs.append(seq)
    rows.append([_Row(d, len(prompt) + e + 1, example_ids[d] + (e, k), (d, j, k))
                 for j, e in enumerate(ends) for k in range(num_rollouts)])
    counts.append(prefill_token_counts(len(prompt), len(draft), ends, num_rollouts))
  keep = [i for i in range(len(seqs)) if rows[i]]
  engine = _make_engine(model, max_new_tokens, kwargs)
  results = engine.run([seqs[i] for i in keep], [[dataclasses.replace(r, seq=n) for r in rows[i]]
                                                 for n, i in enumerate(keep)])
  return [Rollouts([[results[(d, j, k)] for k in range(num_rollouts)] for j in range(len(ends))],
                   *counts[d]) for d, ends in enumerate(prefix_ends)]


def rollouts_from_prefixes(model: Llama, prompt_ids: Sequence[int], draft_ids: Sequence[int],
                           prefix_ends: Sequence[int], *, num_rollouts: int, max_new_tokens: int,
                           example_id: IdLike = 0, **kwargs) -> Rollouts:
  """K = `num_rollouts` continuations from every step prefix of one draft, from ONE prefill of
  prompt + draft (fan-out b). Prefix j is prompt + draft[:prefix_ends[j] + 1] (indices into
  `draft_ids`, e.g. each step's terminating token). Sampling options as in `generate`."""
  return rollouts_from_prefixes_batch(model, [prompt_ids], [draft_ids], [prefix_ends],
                                      num_rollouts=num_rollouts, max_new_tokens=max_new_tokens,
                                      example_ids=[example_id], **kwargs)[0]


_ENGINE_OPTIONS = ("temperature", "top_k", "top_p", "stop_token_ids", "seed", "mesh", "eos_token_id",
                   "batch_size", "min_prompt_bucket", "stop_checker", "check_every", "progress")


def _make_engine(model, max_new_tokens, kwargs) -> _Engine:
  unknown = set(kwargs) - set(_ENGINE_OPTIONS)
  if unknown:
    raise TypeError(f"unexpected sampling options {sorted(unknown)}; valid: {list(_ENGINE_OPTIONS)}")
  params = SamplingParams(float(kwargs.pop("temperature", 0.0)), int(kwargs.pop("top_k", 0)),
                          float(kwargs.pop("top_p", 1.0)))
  options = dict(stop_token_ids=(), seed=0, mesh=None, eos_token_id="model", batch_size=32,
                 min_prompt_bucket=16, stop_checker=None, check_every=16, progress=None)
  options.update(kwargs)
  return _Engine(model, max_new_tokens=max_new_tokens, params=params, **options)
