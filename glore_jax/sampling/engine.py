"""The row engine: decode rows over prefilled sequences, in power-of-two buckets.

Every decode row is described by (the prefilled sequence it reads, how many of that sequence's
tokens are its prompt, the ids its random key is folded from): a `Row`. The public functions
(`glore_jax.sampling.api`) turn prompts, samples and step prefixes into rows; the engine groups
sequences into prefill jobs, prefills each job once, starts its rows from the prefill and
decodes them, checking stop strings on the host between chunks of steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from glore_jax.model.llama import Llama
from glore_jax.model.sharding import RULES, fit_spec
from glore_jax.sampling.programs import DecodeState, decode_program, prefill_program, start_program
from glore_jax.sampling.rules import FINISH_REASONS, PAD_ID, RUNNING, STOP, SamplingParams, row_keys

__all__ = [
  "Engine",
  "IdLike",
  "PromptTooLongError",
  "Row",
  "Sample",
  "SamplerOptions",
  "as_ids",
  "check_lengths",
  "plan_jobs",
  "pow2_bucket",
]

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
class SamplerOptions:
  """How the sampler runs (the one home of these options and their defaults).

  Args:
    max_new_tokens: tokens to generate per row at most (>= 1).
    temperature, top_k, top_p: the sampling rules (`SamplingParams`): temperature 0 is
      greedy, top_k 0 and top_p 1 switch those filters off.
    stop_token_ids: tokens that end a row with finish_reason 'stop' (kept in `.tokens`).
    eos_token_id: ends a row with 'eos'; "model" = the model's `cfg.eos_token_id`; None = never.
    seed: the base of every row's random key.
    mesh: a ('data', 'fsdp', 'tensor') mesh to run under (the model should be created on it).
    batch_size: decode rows per batch (rounded up to a power of two on device).
    min_prompt_bucket: the smallest prompt-length bucket (lengths round up to powers of two).
    stop_checker: optional host callback on a running row's new tokens, called every
      `check_every` steps and at the end; returns how many tokens to keep when the row should
      stop (finish_reason 'stop'), else None. The text helpers use it for stop strings.
    check_every: decode steps between stop_checker calls (values below 1 count as 1).
    progress: show a progress bar; None = only when there are more than 4 batches.
  """

  max_new_tokens: int
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  stop_token_ids: Iterable[int] = ()
  eos_token_id: int | str | None = "model"
  seed: int = 0
  mesh: Mesh | None = None
  batch_size: int = 32
  min_prompt_bucket: int = 16
  stop_checker: Callable[[list[int]], int | None] | None = None
  check_every: int = 16
  progress: bool | None = None

  def __post_init__(self):
    # stop ids may come as any iterable (read once); kept as a tuple of ints
    object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
    _ = self.params  # validates temperature, top_k and top_p
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
    if self.batch_size < 1:
      raise ValueError(f"batch_size={self.batch_size} must be >= 1")

  @property
  def params(self) -> SamplingParams:
    return SamplingParams(float(self.temperature), int(self.top_k), float(self.top_p))

  @classmethod
  def from_kwargs(cls, max_new_tokens: int, kwargs: dict) -> SamplerOptions:
    """Options from keyword arguments, with a clear error naming any unknown one."""
    valid = [f.name for f in dataclasses.fields(cls) if f.name != "max_new_tokens"]
    unknown = set(kwargs) - set(valid)
    if unknown:
      raise TypeError(f"unexpected sampling options {sorted(unknown)}; valid: {valid}")
    return cls(max_new_tokens=max_new_tokens, **kwargs)


@dataclasses.dataclass(frozen=True)
class Row:
  """One decode row."""

  seq: int  # index into the prefill sequences
  prompt_len: int  # how many tokens of that sequence are this row's prompt
  ids: tuple[int, ...]  # key ids
  out: tuple  # where the result goes (opaque to the engine)


def pow2_bucket(n: int, minimum: int = 1) -> int:
  """`n` rounded up to a power of two, at least `minimum`."""
  return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def check_lengths(prompts: Sequence[Sequence[int]], max_new_tokens: int, context: int, what: str):
  """Raises (naming `what` and its index) for an empty prompt or one that with
  `max_new_tokens` does not fit in `context` positions."""
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f"{what} {i} is empty; a prompt needs at least one token (e.g. BOS)")
    if len(p) + max_new_tokens > context:
      raise PromptTooLongError(
        f"{what} {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} it needs "
        f"{len(p) + max_new_tokens} positions but the model's context "
        f"(max_position_embeddings) is {context}: prompts may have at most "
        f"{context - max_new_tokens} tokens. Truncate the prompt or lower max_new_tokens."
      )


def as_ids(x: IdLike) -> tuple[int, ...]:
  """An example id (an int or a sequence of ints) as a tuple of ints."""
  if isinstance(x, (int, np.integer)):
    return (int(x),)
  return tuple(int(i) for i in x)


def plan_jobs(
  seqs: Sequence[Sequence[int]], rows_per_seq: Sequence[list[Row]], batch_size: int
) -> list[list[int]]:
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


class Engine:
  """Runs decode rows over prefilled sequences (the one path behind every public function)."""

  def __init__(self, model: Llama, options: SamplerOptions):
    self.model, self.cfg, self.options = model, model.cfg, options
    self.graphdef, self.state = nnx.split(model)
    self.max_new_tokens, self.params = options.max_new_tokens, options.params
    self.mesh, self.batch_size = options.mesh, options.batch_size
    self.stop_checker, self.check_every = options.stop_checker, max(1, options.check_every)
    eos_token_id = options.eos_token_id
    if eos_token_id == "model":
      eos_token_id = self.cfg.eos_token_id
    eos = [] if eos_token_id is None else [int(eos_token_id)]
    stops = sorted(set(options.stop_token_ids) - set(eos))
    # -1 never matches a token; keeps the arrays non-empty with a stable shape
    self.eos_ids = np.array(eos or [-1], np.int32)
    self.stop_ids = np.array(stops or [-1], np.int32)

  def run(
    self, seqs: Sequence[Sequence[int]], rows_per_seq: Sequence[list[Row]]
  ) -> dict[tuple, Sample]:
    """Samples of every row, keyed by `row.out`; rows_per_seq[i] are the rows reading seqs[i]."""
    results: dict[tuple, Sample] = {}
    jobs = plan_jobs(seqs, rows_per_seq, self.batch_size)
    chunks = [
      (job, rows[i : i + self.batch_size])
      for job in jobs
      for rows in [[r for s in job for r in rows_per_seq[s]]]
      for i in range(0, len(rows), self.batch_size)
    ]
    from tqdm.auto import tqdm

    show = self.options.progress if self.options.progress is not None else len(chunks) > 4
    bar = tqdm(
      total=sum(len(rows) for _, rows in chunks),
      unit="row",
      desc="sampling",
      disable=not show,
      leave=False,
    )
    with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
      prefilled = None
      for job, rows in chunks:
        if prefilled is None or prefilled[0] is not job:
          prefilled = (job, *self._prefill([seqs[s] for s in job]))
        _, start, hidden, cache = prefilled
        local = {s: j for j, s in enumerate(job)}
        samples = self._decode_rows(rows, local, start, hidden, cache)
        for row, sample in zip(rows, samples, strict=True):
          results[row.out] = sample
        bar.update(len(rows))
    bar.close()
    return results

  def _prefill(self, seqs):
    t = pow2_bucket(max(len(s) for s in seqs), self.options.min_prompt_bucket)
    b = pow2_bucket(len(seqs))
    tokens = np.full((b, t), PAD_ID, np.int32)
    start = np.full((b,), t - 1, np.int32)  # dummy rows: one pad token
    for i, s in enumerate(seqs):
      tokens[i, t - len(s) :] = s
      start[i] = t - len(s)
    hidden, cache = prefill_program(
      self.graphdef,
      self.state,
      _put(tokens, self.mesh, RULES.act_bt),
      _put(start, self.mesh, RULES.cache_b),
      self._packing(start, t),
    )
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

  def _set_finish(self, state: DecodeState, finish_r: np.ndarray) -> DecodeState:
    return state.replace(finish_r=_put(finish_r, self.mesh, RULES.cache_b))

  def _decode_rows(self, rows: list[Row], local, start, hidden, prefill_cache) -> list[Sample]:
    n = len(rows)
    r = pow2_bucket(n)
    src = np.zeros((r,), np.int32)
    last_slot = np.zeros((r,), np.int32)
    num_ids = {len(row.ids) for row in rows}
    if len(num_ids) != 1:
      raise ValueError(
        f"every row's key ids must have the same length, got lengths {sorted(num_ids)}"
      )
    ids = np.zeros((r, num_ids.pop()), np.uint32)
    for i, row in enumerate(rows):
      j = local[row.seq]
      src[i] = j
      last_slot[i] = start[j] + row.prompt_len - 1
      ids[i] = row.ids
    for i in range(n, r):  # padding rows copy row 0's inputs; their outputs are dropped
      src[i], last_slot[i], ids[i] = src[0], last_slot[0], ids[0]
    keys = _put(row_keys(self.options.seed, ids), self.mesh, RULES.cache_b)
    eos_ids, stop_ids = jnp.asarray(self.eos_ids), jnp.asarray(self.stop_ids)
    cache_size = prefill_cache.size + self.max_new_tokens
    cache, state = start_program(
      self.graphdef,
      self.state,
      prefill_cache,
      hidden,
      _put(src, self.mesh, RULES.cache_b),
      _put(last_slot, self.mesh, RULES.cache_b),
      keys,
      eos_ids,
      stop_ids,
      params=self.params,
      cache_size=cache_size,
      max_new_tokens=self.max_new_tokens,
    )
    if r > n:  # padding rows: finished from the start
      finish = _host(state.finish_r).copy()
      finish[n:] = STOP
      state = self._set_finish(state, finish)
    keep = [None] * n  # token counts cut by the stop checker
    limit = 1
    while True:  # one decode call, or chunks of `check_every` steps between host stop checks
      limit = (
        self.max_new_tokens
        if self.stop_checker is None
        else min(limit + self.check_every, self.max_new_tokens)
      )
      cache, state = decode_program(
        self.graphdef,
        self.state,
        cache,
        state,
        keys,
        eos_ids,
        stop_ids,
        jnp.asarray(limit, jnp.int32),
        params=self.params,
      )
      step = int(_host(state.step))
      finish = _host(state.finish_r)
      if self.stop_checker is not None and step < self.max_new_tokens:
        tokens_host = _host(state.tokens_rn)
        newly = False
        for i in range(n):
          if finish[i] == RUNNING and keep[i] is None:
            cut = self.stop_checker(tokens_host[i, :step].tolist())
            if cut is not None:
              keep[i], newly = cut, True
        if newly:
          finish = finish.copy()
          for i in range(n):
            if keep[i] is not None:
              finish[i] = STOP
          state = self._set_finish(state, finish)
      if step >= self.max_new_tokens or not np.any(finish[:n] == RUNNING):
        break
    del cache
    return self._samples(state, n, step, keep)

  def _samples(self, state: DecodeState, n: int, step: int, keep: list[int | None]) -> list[Sample]:
    """The first `n` rows' samples, cut at their finishing token or the stop checker's cut."""
    tokens_host = _host(state.tokens_rn)
    logprobs_host = _host(state.logprobs_rn)
    finish = _host(state.finish_r)
    samples = []
    for i in range(n):
      length = self._row_length(tokens_host[i], finish[i], step)
      reason = FINISH_REASONS[int(finish[i])]
      if self.stop_checker is not None:
        cut = keep[i]
        if cut is None:
          cut = self.stop_checker(tokens_host[i, :length].tolist())
        if cut is not None and cut <= length:
          length, reason = cut, "stop"
      samples.append(
        Sample(
          tokens_host[i, :length].tolist(), logprobs_host[i, :length].astype(float).tolist(), reason
        )
      )
    return samples

  def _row_length(self, tokens, finish, step):
    if finish == RUNNING:
      return step
    ends = np.isin(tokens[:step], np.concatenate([self.eos_ids, self.stop_ids]))
    return int(np.argmax(ends)) + 1 if ends.any() else step
