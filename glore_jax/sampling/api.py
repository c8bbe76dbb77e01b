"""The sampler's public functions: `generate` (K samples per prompt, fan-out a) and rollouts
from the step prefixes of drafts (fan-out b), both as decode rows for the one engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

from jax.sharding import Mesh

from glore_jax.model.llama import Llama
from glore_jax.sampling.engine import (
  Engine,
  IdLike,
  Row,
  Sample,
  SamplerOptions,
  as_ids,
  check_lengths,
)

__all__ = [
  "Rollouts",
  "generate",
  "prefill_token_counts",
  "rollouts_from_prefixes",
  "rollouts_from_prefixes_batch",
]

_D = SamplerOptions  # its class attributes are the defaults


def generate(
  model: Llama,
  prompt_ids: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  temperature: float = _D.temperature,
  top_k: int = _D.top_k,
  top_p: float = _D.top_p,
  num_samples: int = 1,
  stop_token_ids: Iterable[int] = _D.stop_token_ids,
  seed: int = _D.seed,
  example_ids: Sequence[IdLike] | None = None,
  mesh: Mesh | None = _D.mesh,
  eos_token_id: int | str | None = _D.eos_token_id,
  batch_size: int = _D.batch_size,
  min_prompt_bucket: int = _D.min_prompt_bucket,
  stop_checker: Callable[[list[int]], int | None] | None = _D.stop_checker,
  check_every: int = _D.check_every,
  progress: bool | None = _D.progress,
  share_prefill: bool = True,
) -> list[list[Sample]]:
  """Samples `num_samples` continuations of every prompt; returns result[prompt][sample].

  Args:
    model: the Llama to sample from (created on `mesh` when one is given).
    prompt_ids: token-id lists (any lengths, each at least one token; left-padded into
      power-of-two buckets).
    max_new_tokens: tokens to generate per sample at most; every prompt plus this must fit in
      the model's context (else `PromptTooLongError`).
    temperature: 0 is greedy (the first argmax); otherwise logits are divided by it.
    top_k: draw among the k most likely tokens only; 0 = off.
    top_p: nucleus sampling, draw from the smallest set of tokens whose mass reaches top_p;
      1 = off.
    num_samples: samples per prompt; each prompt is prefilled once and its cache replicated on
      device (fan-out a).
    stop_token_ids: tokens that end a row with finish_reason 'stop' (kept in `.tokens`).
    seed: with example_ids, the random key of each row (see example_ids).
    example_ids: row (prompt i, sample j) draws from key(seed) folded with example_ids[i] (an
      int or a tuple of ints; default i), then j, then the token index: the same ids give the
      same tokens in any batch. Pass stable example ids (e.g. dataset indices) for reproducible
      sampling across runs that batch differently.
    mesh: a ('data', 'fsdp', 'tensor') mesh to run under (the model should be created on it).
    eos_token_id: ends a row with 'eos'; "model" = `model.cfg.eos_token_id`; None = never.
    batch_size: decode rows per batch (rounded up to a power of two on device).
    min_prompt_bucket: the smallest prompt-length bucket.
    stop_checker: optional host callback on a running row's new tokens, called every
      `check_every` steps and at the end; returns how many tokens to keep when the row should
      stop (finish_reason 'stop'), else None. The text helpers use it for stop strings.
    check_every: decode steps between stop_checker calls.
    progress: show a progress bar; None = only when there are more than 4 batches.
    share_prefill: False prefills every sample's prompt separately (the naive way; same tokens).

  Returns:
    result[i][j]: sample j of prompt i.
  """
  options = SamplerOptions(
    max_new_tokens=max_new_tokens,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    stop_token_ids=stop_token_ids,
    eos_token_id=eos_token_id,
    seed=seed,
    mesh=mesh,
    batch_size=batch_size,
    min_prompt_bucket=min_prompt_bucket,
    stop_checker=stop_checker,
    check_every=check_every,
    progress=progress,
  )
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples} must be >= 1")
  prompt_ids = [list(map(int, p)) for p in prompt_ids]
  check_lengths(prompt_ids, max_new_tokens, model.cfg.max_position_embeddings, "prompt")
  if example_ids is None:
    example_ids = range(len(prompt_ids))
  example_ids = [as_ids(e) for e in example_ids]
  if len(example_ids) != len(prompt_ids):
    raise ValueError(f"{len(example_ids)} example_ids for {len(prompt_ids)} prompts")
  if share_prefill:
    seqs = prompt_ids
    rows = [
      [Row(i, len(p), example_ids[i] + (j,), (i, j)) for j in range(num_samples)]
      for i, p in enumerate(prompt_ids)
    ]
  else:
    seqs = [p for p in prompt_ids for _ in range(num_samples)]
    rows = [
      [Row(i * num_samples + j, len(p), example_ids[i] + (j,), (i, j))]
      for i, p in enumerate(prompt_ids)
      for j in range(num_samples)
    ]
  results = Engine(model, options).run(seqs, rows)
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


def prefill_token_counts(
  prompt_len: int, draft_len: int, prefix_ends: Sequence[int], num_rollouts: int
) -> tuple[int, int, int]:
  """Prefill token counts of rollouts from step prefixes of one draft.

  Args:
    prompt_len: the prompt's token count.
    draft_len: the draft's token count.

    prefix_ends: the prefixes' last indices into the draft.
    num_rollouts: rollouts per prefix.

  Returns:
    (with fan-out b, with one prefill per prefix, with one prefill per rollout).
  """
  used = max(prefix_ends) + 1 if prefix_ends else 0
  ours = prompt_len + min(draft_len, used) if prefix_ends else 0
  per_prefix = sum(prompt_len + e + 1 for e in prefix_ends)
  return ours, per_prefix, per_prefix * num_rollouts


def rollouts_from_prefixes_batch(
  model: Llama,
  prompt_ids: Sequence[Sequence[int]],
  draft_ids: Sequence[Sequence[int]],
  prefix_ends: Sequence[Sequence[int]],
  *,
  num_rollouts: int,
  max_new_tokens: int,
  example_ids: Sequence[IdLike] | None = None,
  **options,
) -> list[Rollouts]:
  """`rollouts_from_prefixes` for many drafts at once (drafts share prefill and decode batches).

  Rollout k from prefix j of draft d uses the key ids example_ids[d] + (prefix_ends[d][j], k):
  exactly what `generate(model, [prompt + draft[:end + 1]], example_ids=[example_ids[d] +
  (end,)], num_samples=K)` uses, so the two give the same tokens.

  Args:
    model: the Llama to sample from.
    prompt_ids: per draft d, its prompt (token ids).
    draft_ids: per draft d, the draft (token ids).

    prefix_ends: per draft, the last index into the draft of each prefix to roll out from.
    num_rollouts: K, rollouts per prefix.
    max_new_tokens: tokens to generate per rollout at most.
    example_ids: per draft, an int or a tuple of ints (default d).
    **options: any other `SamplerOptions` field (temperature, top_k, top_p, stop_token_ids,
      eos_token_id, seed, mesh, batch_size, min_prompt_bucket, stop_checker, check_every,
      progress), as in `generate`.

  Returns:
    One `Rollouts` per draft.
  """
  sampler_options = SamplerOptions.from_kwargs(max_new_tokens, options)
  if not len(prompt_ids) == len(draft_ids) == len(prefix_ends):
    raise ValueError(
      f"{len(prompt_ids)} prompts, {len(draft_ids)} drafts and {len(prefix_ends)} "
      "prefix_ends lists: give one of each per draft"
    )
  if num_rollouts < 1:
    raise ValueError(f"num_rollouts={num_rollouts} must be >= 1")
  if example_ids is None:
    example_ids = range(len(prompt_ids))
  example_ids = [as_ids(e) for e in example_ids]
  seqs, rows, counts = [], [], []
  for d, (prompt, draft, ends) in enumerate(zip(prompt_ids, draft_ids, prefix_ends, strict=True)):
    prompt, draft, ends = list(map(int, prompt)), list(map(int, draft)), [int(e) for e in ends]
    for e in ends:
      if not 0 <= e < len(draft):
        raise ValueError(f"draft {d}: prefix end {e} is outside the draft's {len(draft)} tokens")
    used = max(ends) + 1 if ends else 0
    seq = prompt + draft[:used]  # tokens after the last prefix are never needed
    check_lengths(
      [prompt + draft[: e + 1] for e in ends],
      max_new_tokens,
      model.cfg.max_position_embeddings,
      f"draft {d} prefix",
    )
    seqs.append(seq)
    rows.append(
      [
        Row(d, len(prompt) + e + 1, example_ids[d] + (e, k), (d, j, k))
        for j, e in enumerate(ends)
        for k in range(num_rollouts)
      ]
    )
    counts.append(prefill_token_counts(len(prompt), len(draft), ends, num_rollouts))
  keep = [i for i in range(len(seqs)) if rows[i]]
  results = Engine(model, sampler_options).run(
    [seqs[i] for i in keep],
    [[dataclasses.replace(r, seq=n) for r in rows[i]] for n, i in enumerate(keep)],
  )
  return [
    Rollouts(
      [[results[(d, j, k)] for k in range(num_rollouts)] for j in range(len(ends))], *counts[d]
    )
    for d, ends in enumerate(prefix_ends)
  ]


def rollouts_from_prefixes(
  model: Llama,
  prompt_ids: Sequence[int],
  draft_ids: Sequence[int],
  prefix_ends: Sequence[int],
  *,
  num_rollouts: int,
  max_new_tokens: int,
  example_id: IdLike = 0,
  **options,
) -> Rollouts:
  """K = `num_rollouts` continuations from every step prefix of one draft, from ONE prefill of
  prompt + draft (fan-out b).

  Args:
    model: the Llama to sample from.
    prompt_ids: the prompt (token ids).
    draft_ids: the draft (token ids).

    prefix_ends: prefix j is prompt + draft[:prefix_ends[j] + 1] (indices into `draft_ids`,
      e.g. each step's terminating token).
    num_rollouts: K, rollouts per prefix.
    max_new_tokens: tokens to generate per rollout at most.
    example_id: the draft's key ids (an int or a tuple of ints).
    **options: sampling options as in `generate` (any other `SamplerOptions` field).
  """
  return rollouts_from_prefixes_batch(
    model,
    [prompt_ids],
    [draft_ids],
    [prefix_ends],
    num_rollouts=num_rollouts,
    max_new_tokens=max_new_tokens,
    example_ids=[example_id],
    **options,
  )[0]
