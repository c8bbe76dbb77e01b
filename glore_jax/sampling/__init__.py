"""The sampler: one jitted prefill, a jitted `lax.while_loop` decode over a donated KV cache,
and fan-out of many continuations from one prefill.

  rules.py     logits -> tokens (temperature, top-k, top-p, greedy), finish rules, row keys
  programs.py  the jitted programs (prefill, start of decode rows, decode loop), `DecodeState`
  engine.py    rows, buckets, prefill jobs, the row engine, `SamplerOptions`
  api.py       `generate` and rollouts from step prefixes

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

Text-level helpers (stop strings, decoding) live in `glore_jax.sampling_text`.

Logprobs are those of the model's own distribution (log-softmax of the raw logits, before
temperature, top-k and top-p), the quantity policy-gradient and reward code wants.
"""

from glore_jax.sampling.api import (
  Rollouts,
  generate,
  prefill_token_counts,
  rollouts_from_prefixes,
  rollouts_from_prefixes_batch,
)
from glore_jax.sampling.engine import IdLike, PromptTooLongError, Sample, SamplerOptions
from glore_jax.sampling.programs import (
  DecodeState,
  decode_program,
  prefill_program,
  start_program,
  use_vocab_major,
)
from glore_jax.sampling.rules import SamplingParams, row_keys, sample_logits

__all__ = [
  "DecodeState",
  "IdLike",
  "PromptTooLongError",
  "Rollouts",
  "Sample",
  "SamplerOptions",
  "SamplingParams",
  "decode_program",
  "generate",
  "prefill_program",
  "prefill_token_counts",
  "rollouts_from_prefixes",
  "rollouts_from_prefixes_batch",
  "row_keys",
  "sample_logits",
  "start_program",
  "use_vocab_major",
]
