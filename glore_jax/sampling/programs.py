"""The sampler's jitted programs: prefill, start (fan-out of decode rows from prefilled
sequences) and the decode loop, plus the loop's state.

Weights go in as an argument (`nnx.split` outside, `nnx.merge` inside), so one program serves
any weights of the same shapes; the decode cache and `DecodeState` are donated. The engine runs
these; `glore_jax.aot` and `glore_jax.plan` compile the same programs for TPU slices.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from glore_jax.model.llama import KVCache
from glore_jax.model.sharding import BATCH, RULES, constrain
from glore_jax.sampling.rules import (
  PAD_ID,
  RUNNING,
  SamplingParams,
  greedy_vocab_major,
  sample_logits,
  update_finish,
)

__all__ = [
  "VOCAB_MAJOR_MIN_ROWS",
  "DecodeState",
  "decode_program",
  "prefill_program",
  "start_program",
  "use_vocab_major",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
  """What the decode loop carries besides the KV cache (R rows, N = max_new_tokens).

  Row r's new tokens are tokens_rn[r, :step]; slots from `step` on are PAD_ID, as are the slots
  after the row finished (with logprob 0).
  """

  tokens_rn: jax.Array  # [R, N] int32, the tokens emitted so far
  logprobs_rn: jax.Array  # [R, N] fp32, their log-probabilities
  finish_r: jax.Array  # [R] int32 finish code (rules.RUNNING, EOS or STOP)
  last_r: jax.Array  # [R] int32, the token the next step reads
  step: jax.Array  # [] int32, how many tokens have been emitted (the next slot of tokens_rn)

  def replace(self, **changes) -> DecodeState:
    return dataclasses.replace(self, **changes)


def _rows(x):
  return constrain(x, P(BATCH, *(None,) * (x.ndim - 1)))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def prefill_program(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  tokens_bt: jax.Array,
  start_b: jax.Array,
  packed_n: jax.Array | None,
) -> tuple[jax.Array, KVCache]:
  """Left-padded prompts into a fresh cache.

  Args:
    graphdef: the model's structure, from `nnx.split` (static).
    state: the model's weights, from `nnx.split`.
    tokens_bt: [B, T] int32 prompts, left-padded.

    start_b: [B] int32, the first real slot of each row.
    packed_n: [N] int32 flat positions (b * T + t) of the prompt tokens to compute, fillers
      pointing past the end (the projections and MLP then skip the padding), or None.

  Returns:
    (hidden states [B, T, D] of every position, zeros at padding when packed; the T-slot cache).
  """
  model = nnx.merge(graphdef, state)
  b, t = tokens_bt.shape
  cache = model.init_cache(b, t, start_b=start_b)
  hidden_btd, cache = model.forward(tokens_bt, cache=cache, packed_n=packed_n)
  return hidden_btd, cache


@functools.partial(jax.jit, static_argnames=("graphdef", "params", "cache_size", "max_new_tokens"))
def start_program(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  prefill_cache: KVCache,
  hidden_btd: jax.Array,
  src_r: jax.Array,
  last_slot_r: jax.Array,
  keys_r: jax.Array,
  eos_ids: jax.Array,
  stop_ids: jax.Array,
  *,
  params: SamplingParams,
  cache_size: int,
  max_new_tokens: int,
) -> tuple[KVCache, DecodeState]:
  """Decode rows from a prefill: row r reads prefilled sequence src_r[r] up to slot
  last_slot_r[r] (its prompt's last token). Gathers and widens the cache, samples each row's
  first token (with key fold_in(keys_r[r], 0)).

  Args:
    graphdef: the model's structure, from `nnx.split` (static).
    state: the model's weights, from `nnx.split`.
    prefill_cache: the T-slot cache of B sequences from `prefill_program`.
    hidden_btd: the hidden states [B, T, D] from `prefill_program`.
    src_r: [R] int32, the prefilled sequence each decode row continues.
    last_slot_r: [R] int32, the slot of each row's last prompt token in that sequence.
    keys_r: [R, ...] raw key data (`rules.row_keys`).
    eos_ids: [E] int32 token ids that finish a row with EOS (-1 matches nothing).
    stop_ids: [S] int32 token ids that finish a row with STOP (-1 matches nothing).

    params: the sampling rules.
    cache_size: slots of the decode cache (T + max_new_tokens).
    max_new_tokens: width of the output buffers.

  Returns:
    (the decode cache [R rows, cache_size slots], the DecodeState after one token).
  """
  model = nnx.merge(graphdef, state)
  keys_r = jax.random.wrap_key_data(keys_r)
  hidden_rd = _rows(hidden_btd[src_r, last_slot_r])
  logits_rv = model.logits(hidden_rd)  # only the positions sampled from
  tokens_r, logprobs_r = sample_logits(
    jax.vmap(jax.random.fold_in)(keys_r, jnp.zeros_like(src_r)), logits_rv, params
  )

  def widen(x, slot_axis):  # rows gathered, slots padded to the decode cache's size
    pad = [(0, 0)] * x.ndim
    pad[slot_axis] = (0, cache_size - x.shape[slot_axis])
    return constrain(jnp.pad(x[src_r], pad), RULES.cache_kv)

  cache = KVCache(
    tuple(widen(k, 3) for k in prefill_cache.k),  # [B, K, H, S]
    tuple(widen(v, 2) for v in prefill_cache.v),  # [B, K, S, H]
    _rows(prefill_cache.start[src_r]),
    _rows(last_slot_r + 1),
  )
  r = src_r.shape[0]
  return cache, DecodeState(
    tokens_rn=_rows(jnp.full((r, max_new_tokens), PAD_ID, jnp.int32).at[:, 0].set(tokens_r)),
    logprobs_rn=_rows(jnp.zeros((r, max_new_tokens), jnp.float32).at[:, 0].set(logprobs_r)),
    finish_r=update_finish(tokens_r, jnp.zeros((r,), jnp.int32), eos_ids, stop_ids),
    last_r=tokens_r,
    step=jnp.ones((), jnp.int32),
  )


# greedy decode steps of this many rows take the LM head as [V, D] x [D, R] on the CPU backend
# (faster there from 8 rows; 1 row is a matrix-vector product either way and ran slower so)
VOCAB_MAJOR_MIN_ROWS = 8


def use_vocab_major(rows: int, platform: str | None = None) -> bool:
  """Whether a greedy decode step of `rows` rows takes the vocabulary-major LM head.

  Args:
    rows: decode rows of the program.
    platform: the backend the program is built for (`cfg.target_platform`); None = the
      default backend.
  """
  return rows >= VOCAB_MAJOR_MIN_ROWS and (platform or jax.default_backend()) == "cpu"


@functools.partial(
  jax.jit, static_argnames=("graphdef", "params"), donate_argnames=("cache", "decode_state")
)
def decode_program(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  cache: KVCache,
  decode_state: DecodeState,
  keys_r: jax.Array,
  eos_ids: jax.Array,
  stop_ids: jax.Array,
  limit: jax.Array,
  *,
  params: SamplingParams,
) -> tuple[KVCache, DecodeState]:
  """Decodes one token a step until every row has finished or `decode_state.step` reaches
  `limit`; the t-th token of row r is drawn with key fold_in(keys_r[r], t).

  Args:
    graphdef: the model's structure, from `nnx.split` (static).
    state: the model's weights, from `nnx.split`.
    cache: the decode cache from `start_program` or a previous call (donated).
    decode_state: the `DecodeState` from `start_program` or a previous call (donated).
    keys_r: [R, ...] raw key data, as for `start_program`.
    eos_ids: [E] int32, as for `start_program`.
    stop_ids: [S] int32, as for `start_program`.

    limit: [] int32, the step to stop at (at most max_new_tokens).
    params: the sampling rules.

  Returns:
    (cache, decode_state) after the last step.
  """
  model = nnx.merge(graphdef, state)
  keys_r = jax.random.wrap_key_data(keys_r)

  def cond(loop):
    _, s = loop
    return (s.step < limit) & jnp.any(s.finish_r == RUNNING)

  def body(loop):
    cache, s = loop
    hidden_r1d, cache = model.forward(s.last_r[:, None], cache=cache)
    if params.greedy and use_vocab_major(hidden_r1d.shape[0], model.cfg.target_platform):
      tokens_r, logprobs_r = greedy_vocab_major(model.logits_vocab_major(hidden_r1d[:, 0]))
    else:
      step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_r, s.step)
      tokens_r, logprobs_r = sample_logits(step_keys, model.logits(hidden_r1d[:, 0]), params)
    running = s.finish_r == RUNNING
    tokens_r = jnp.where(running, tokens_r, PAD_ID)
    logprobs_r = jnp.where(running, logprobs_r, 0.0)

    def write(buffer_rn, new_r):  # into column `step`
      return jax.lax.dynamic_update_slice_in_dim(buffer_rn, new_r[:, None], s.step, axis=1)

    return cache, DecodeState(
      tokens_rn=write(s.tokens_rn, tokens_r),
      logprobs_rn=write(s.logprobs_rn, logprobs_r),
      finish_r=update_finish(tokens_r, s.finish_r, eos_ids, stop_ids),
      last_r=tokens_r,
      step=s.step + 1,
    )

  return jax.lax.while_loop(cond, body, (cache, decode_state))
