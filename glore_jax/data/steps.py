"""Solution steps and step-aware tokenization.

A step label (ORM/SORM target, or a value-head score) belongs to the token that *terminates* the
step: the separator token after it, or EOS after the last step. At the last digit of "36" the model
cannot know that the number is finished; at the newline it can. Indices are computed on the
tokenization of the whole prompt + solution string, i.e. exactly the stream the policy generates,
using the tokenizer's character offsets, so SentencePiece's leading "▁", byte-fallback newlines
(`<0x0A>`) and byte-level BPE merges cannot shift a label onto a neighbouring step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

__all__ = [
  "EncodedSteps",
  "PromptTooLongError",
  "StepBoundaryError",
  "encode_steps",
  "join_steps",
  "split_steps",
  "step_ends_from_tokens",
]


class StepBoundaryError(ValueError):
  """A step boundary falls inside a token, so no token can carry that step's label alone."""


class PromptTooLongError(ValueError):
  """The prompt alone exceeds `max_length`: there is no room for even one solution step."""


def split_steps(solution_text: str, separator: str = "\n") -> list[str]:
  """Split a solution into steps: the separator-delimited pieces, stripped, empty ones dropped.

  Stripping makes `join_steps(split_steps(t))` canonical, and keeps the separator from merging
  with indentation in byte-level BPE vocabularies (SmolLM2 has a single token for "\\n ").

  Args:
    solution_text: the solution (no prompt).
    separator: the step separator.
  """
  if not separator:
    raise ValueError("separator must be a non-empty string")
  return [s for s in (part.strip() for part in solution_text.split(separator)) if s]


def join_steps(steps: Sequence[str], separator: str = "\n") -> str:
  """Join steps into solution text (no trailing separator; EOS ends the last step).

  Args:
    steps: the steps, without separators.
    separator: the step separator.
  """
  return separator.join(steps)


@dataclasses.dataclass(frozen=True)
class EncodedSteps:
  """Token ids of prompt + solution with the position of each step's terminating token.

  ids: prompt tokens (with BOS if the tokenizer adds one) then solution tokens (then EOS).
  prompt_length: number of prompt tokens = index of the first target token.
  step_ends: for each kept step, the index in `ids` of its terminator: the separator token for
      all but the last step; for the last step the EOS token when `add_eos`, otherwise its last
      token. A value head reads the step's score there.
  num_dropped_steps: trailing steps removed by truncation (their labels must be dropped too).
  """

  ids: list[int]
  prompt_length: int
  step_ends: list[int]
  num_dropped_steps: int = 0

  @property
  def num_steps(self) -> int:
    return len(self.step_ends)


def encode_steps(
  tokenizer: Any,
  prompt: str,
  steps: Sequence[str],
  *,
  max_length: int | None = None,
  add_eos: bool = True,
  separator: str = "\n",
) -> EncodedSteps:
  """Tokenize `prompt + join_steps(steps)` as one stream and locate each step's terminator.

  Every boundary (end of the prompt, end of each step's separator) must coincide with a token
  boundary. A token may *start* before a boundary (e.g. "  \\n" merged into one token; it still
  ends the step), but if the token that contains a separator also contains characters of the next
  step (byte-level "\\n " before an indented step, or a prompt ending in a space that merges
  with the first word), there is no honest place for the label: we raise `StepBoundaryError`
  rather than guess. `split_steps` output after a prompt ending in a newline never triggers
  this for Llama-2 or SmolLM2 (property-tested).

  Truncation to `max_length` keeps the longest prefix of whole steps whose terminators fit, and
  reports how many trailing steps were dropped; a partial step is never kept.

  Args:
    tokenizer: a Hugging Face tokenizer (callable, with `eos_token_id`).
    prompt: the prompt text (its tokens are not trained on).
    steps: the solution's steps (from `split_steps`).
    max_length: the longest encoding in tokens; None: no limit.
    add_eos: end the solution with EOS (the last step's terminator).
    separator: the step separator.

  Raises:
    ValueError: no steps, an empty step, a step containing `separator`, or add_eos with
      a tokenizer without EOS.
    StepBoundaryError: a step boundary falls inside a token.
    PromptTooLongError: the prompt alone does not fit in `max_length`.
  """
  steps = list(steps)
  if not steps:
    raise ValueError("encode_steps needs at least one step")
  controls = _stream_control_tokens(tokenizer)
  for i, step in enumerate(steps):
    if not step:
      raise ValueError(f"step {i} is empty; use split_steps to drop empty lines")
    if separator in step:
      raise ValueError(f"step {i} contains the separator {separator!r}: {step!r}")
    for special in controls:
      if special in step:
        raise ValueError(
          f"step {i} contains the text {special!r}, which the tokenizer reads as its "
          f"special token (an EOS/BOS/PAD in mid-solution); remove it from the text"
        )
  text = prompt + join_steps(steps, separator)
  enc = tokenizer(
    text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True
  )
  ids: list[int] = list(enc["input_ids"])
  offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
  special: list[int] = list(enc["special_tokens_mask"])

  # Keep leading special tokens (BOS); drop any the post-processor appended, EOS is ours to add.
  while ids and special[-1]:
    ids.pop(), offsets.pop(), special.pop()
  n_lead = 0
  while n_lead < len(ids) and special[n_lead]:
    n_lead += 1

  prompt_length = _token_boundary(offsets, n_lead, n_lead, len(prompt), text, "the prompt")
  step_ends: list[int] = []
  pos, k = len(prompt), prompt_length
  for i, step in enumerate(steps[:-1]):
    pos += len(step) + len(separator)
    k = _token_boundary(offsets, n_lead, k, pos, text, f"step {i}")
    step_ends.append(k - 1)
  if add_eos:
    eos = tokenizer.eos_token_id
    if eos is None:
      raise ValueError("add_eos=True but the tokenizer has no eos_token")
    ids.append(eos)
  step_ends.append(len(ids) - 1)
  if step_ends[-1] < prompt_length or (len(step_ends) > 1 and step_ends[-1] <= step_ends[-2]):
    raise StepBoundaryError(f"last step {steps[-1]!r} produced no token of its own")

  dropped = 0
  if max_length is not None and len(ids) > max_length:
    if prompt_length > max_length:
      raise PromptTooLongError(
        f"prompt is {prompt_length} tokens, more than max_length={max_length}"
      )
    kept = sum(1 for e in step_ends if e < max_length)
    dropped = len(step_ends) - kept
    step_ends = step_ends[:kept]
    ids = ids[: step_ends[-1] + 1] if step_ends else ids[:prompt_length]
  return EncodedSteps(
    ids=ids, prompt_length=prompt_length, step_ends=step_ends, num_dropped_steps=dropped
  )


def _stream_control_tokens(tokenizer: Any) -> list[str]:
  """Texts of the BOS/EOS/PAD tokens: inside a solution they would end or restart the stream."""
  return [
    t
    for t in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    if isinstance(t, str) and t
  ]


def _token_boundary(
  offsets: list[tuple[int, int]], n_lead: int, start: int, pos: int, text: str, what: str
) -> int:
  """Number of tokens covering text[:pos]; raises if a token straddles position `pos`.

  The first `n_lead` tokens are leading specials (BOS) without text offsets; the scan resumes
  at `start`, the count for the previous (smaller) boundary, so encoding stays linear.
  """
  k = start
  while k < len(offsets) and offsets[k][1] <= pos:
    k += 1
  # Tokens [start, k) end at or before pos; token k (if any) must start at or after pos.
  if k < len(offsets) and offsets[k][0] < pos:
    a, b = offsets[k]
    raise StepBoundaryError(
      f"the end of {what} (character {pos}) falls inside token {k} covering {text[a:b]!r}; "
      f"the tokenizer merges the separator with its neighbours here, so the label has no "
      f"token of its own. Strip whitespace at step edges (split_steps does) or end the "
      f"prompt with a newline."
    )
  if pos > 0 and (k == n_lead or offsets[k - 1][1] != pos):
    # Nothing ends exactly at pos, e.g. text was normalised away; refuse to guess.
    last = offsets[k - 1][1] if k > n_lead else 0
    raise StepBoundaryError(
      f"no token ends at the end of {what} (character {pos}); the previous token ends at {last}"
    )
  return k


def step_ends_from_tokens(
  tokenizer: Any, token_ids: Sequence[int], *, separator: str = "\n", include_eos: bool = True
) -> list[int]:
  """Step terminators in an already generated token sequence (e.g. sampler output).

  A token ends a step if its text contains the separator and the current step has some
  non-whitespace content (consecutive newlines do not make empty steps, matching split_steps).
  With `include_eos`, the first EOS ends the last, unterminated step (if it has content) and
  everything after it is ignored. Padding tokens are ignored; other special tokens (a "[BAD]"
  marker) count as step text. Indices are positions in `token_ids`.

  Args:
    tokenizer: the tokenizer that produced `token_ids`.
    token_ids: the generated tokens (no prompt).
    separator: the step separator.
    include_eos: the first EOS ends the last step and the sequence.
  """
  ids = [int(t) for t in token_ids]
  eos = tokenizer.eos_token_id
  if include_eos and eos is not None and eos in ids:
    ids = ids[: ids.index(eos) + 1]
  pad = tokenizer.pad_token_id
  pieces = tokenizer.batch_decode(
    [[t] for t in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
  )
  ends: list[int] = []
  has_content = False
  for i, (t, piece) in enumerate(zip(ids, pieces)):
    if include_eos and t == eos:
      if has_content:
        ends.append(i)
      break
    if t in (pad, eos):
      continue  # padding (or EOS) carries no text; other special tokens are text (markers)
    parts = piece.split(separator)
    if len(parts) == 1:
      has_content = has_content or bool(piece.strip())
      continue
    # The token contains a separator: it closes the current step if that step has content.
    if has_content or parts[0].strip():
      ends.append(i)
    has_content = bool(parts[-1].strip())
  return ends
