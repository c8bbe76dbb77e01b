"""Text on top of the token-level sampler: stop strings that end generation exactly at their
first occurrence, and decoding of samples, for any Hugging Face tokenizer."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from glore_jax.model.llama import Llama
from glore_jax.sampling import Sample, generate

__all__ = ["StopStrings", "decode_samples", "generate_text"]


class StopStrings:
  """Stop strings over token ids for one tokenizer.

  `__call__(tokens)` is a `stop_checker` for `generate`: the number of leading tokens whose
  decoded text first contains a stop string, or None. `token_ids` are vocabulary entries whose
  own text contains a stop string: emitting one ends the row inside the decode loop, with no
  wasted steps (multi-token stop strings are caught by the checker every few steps).

  Args:
    tokenizer: a Hugging Face tokenizer (`decode`, `batch_decode`, `len`).
    stop_strings: non-empty strings that end generation at their first occurrence.
    skip_special_tokens: decode without special tokens (as the text of a sample is decoded).
  """

  def __init__(self, tokenizer, stop_strings: Sequence[str], *, skip_special_tokens: bool = True):
    self.tokenizer = tokenizer
    self.stop_strings = tuple(s for s in stop_strings)
    if any(not s for s in self.stop_strings):
      raise ValueError("stop strings must be non-empty")
    self.skip_special_tokens = skip_special_tokens

  def decode(self, tokens: Sequence[int]) -> str:
    return self.tokenizer.decode(list(tokens), skip_special_tokens=self.skip_special_tokens)

  def find(self, text: str) -> tuple[int, str] | None:
    """(position, stop string) of the occurrence that a left-to-right generator completes
    first: the smallest end, then the smallest start. None if no stop string occurs."""
    best = None
    for s in self.stop_strings:
      i = text.find(s)
      if i >= 0 and (best is None or (i + len(s), i) < (best[0] + len(best[1]), best[0])):
        best = (i, s)
    return best

  @functools.cached_property
  def token_ids(self) -> tuple[int, ...]:
    if not self.stop_strings:
      return ()
    texts = _vocab_texts(self.tokenizer, self.skip_special_tokens)
    return tuple(i for i, t in enumerate(texts) if self.find(t) is not None)

  def __call__(self, tokens: Sequence[int]) -> int | None:
    if not self.stop_strings or self.find(self.decode(tokens)) is None:
      return None
    lo, hi = 1, len(tokens)  # smallest prefix that contains a stop string
    while lo < hi:
      mid = (lo + hi) // 2
      if self.find(self.decode(tokens[:mid])) is not None:
        hi = mid
      else:
        lo = mid + 1
    return lo

  def text(self, tokens: Sequence[int], *, include_stop: bool = False) -> tuple[str, bool]:
    """Decoded text cut just before (or after, with include_stop) the first stop string, and
    whether one was found."""
    text = self.decode(tokens)
    hit = self.find(text)
    if hit is None:
      return text, False
    pos, s = hit
    return text[: pos + (len(s) if include_stop else 0)], True


@functools.lru_cache(maxsize=4)
def _vocab_texts(tokenizer, skip_special_tokens: bool) -> tuple[str, ...]:
  """Every token id's own text (one scan of the vocabulary per tokenizer)."""
  return tuple(
    tokenizer.batch_decode(
      [[i] for i in range(len(tokenizer))], skip_special_tokens=skip_special_tokens
    )
  )


def generate_text(
  model: Llama,
  tokenizer,
  prompts: Sequence[str],
  *,
  max_new_tokens: int,
  stop_strings: Sequence[str] = (),
  include_stop_string: bool = False,
  add_special_tokens: bool = True,
  skip_special_tokens: bool = True,
  **options,
) -> list[list[Sample]]:
  """`generate` on text: tokenizes `prompts` with `tokenizer`, stops at the first occurrence of
  any of `stop_strings`, and sets `.text` of each sample (cut exactly before the stop string,
  or after it with include_stop_string).

  Args:
    model: the Llama to sample from.
    tokenizer: a Hugging Face tokenizer (called on each prompt; decodes the samples).
    prompts: the prompt texts.
    max_new_tokens: tokens to generate per sample at most.
    stop_strings: strings that end a sample (finish_reason 'stop').
    include_stop_string: keep the stop string at the end of `.text` (else cut before it).
    add_special_tokens: passed to the tokenizer for the prompts (e.g. BOS).
    skip_special_tokens: decode `.text` without special tokens.
    **options: any other keyword argument of `generate` (temperature, num_samples, seed, ...);
      `stop_token_ids` are kept and extended by the tokens that contain a stop string.

  Returns:
    result[i][j]: sample j of prompt i, with `.text` set.
  """
  stops = StopStrings(tokenizer, stop_strings, skip_special_tokens=skip_special_tokens)
  prompt_ids = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
  if stop_strings:
    options["stop_checker"] = stops
    options["stop_token_ids"] = tuple(options.get("stop_token_ids", ())) + stops.token_ids
  samples = generate(model, prompt_ids, max_new_tokens=max_new_tokens, **options)
  for row in samples:
    for s in row:
      s.text, found = stops.text(s.tokens, include_stop=include_stop_string)
      if found:
        s.finish_reason = "stop"
  return samples


def decode_samples(
  tokenizer, samples: Sequence[Sequence[Sample]], *, skip_special_tokens: bool = True
) -> list[list[str]]:
  """Decoded text of every sample (no stop-string cut).

  Args:
    tokenizer: a Hugging Face tokenizer.
    samples: samples[i][j], as `generate` returns them.
    skip_special_tokens: decode without special tokens.
  """
  return [
    [tokenizer.decode(s.tokens, skip_special_tokens=skip_special_tokens) for s in row]
    for row in samples
  ]
