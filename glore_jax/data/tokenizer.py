"""Tokenizer loading: a Hugging Face tokenizer from disk, or an embedded one built in code.

The embedded tokenizers let the whole pipeline (synthetic task + tiny Llama) run offline with no
files at all; they are built in code, so their ids are identical on every machine and every run:

- "embedded": character level, 100 ids (one token per character).
- "embedded-bpe": byte-level BPE trained at load time on a fixed synthetic corpus; about 2.4x
  fewer tokens per synthetic example, so the CPU demo trains and samples faster.
"""

from __future__ import annotations

import functools
import json
import os
import string
from pathlib import Path

from tokenizers import (
  AddedToken,
  Regex,
  Tokenizer,
  decoders,
  models,
  pre_tokenizers,
  processors,
  trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from glore_jax.data.prompts import PromptFormat
from glore_jax.data.steps import split_steps
from glore_jax.data.synthetic import make_split

__all__ = [
  "EMBEDDED_BPE_PATTERN",
  "EMBEDDED_BPE_VOCAB_SIZE",
  "EMBEDDED_CHARS",
  "EMBEDDED_SPECIALS",
  "add_special_token",
  "embedded_bpe_tokenizer",
  "embedded_tokenizer",
  "load_tokenizer",
  "padding_id",
]

EMBEDDED_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3, in this order
# Newline, then printable ASCII (space, digits, letters, punctuation) in code-point order.
EMBEDDED_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
assert set(string.ascii_letters + string.digits + string.punctuation + " ") <= set(EMBEDDED_CHARS)


def embedded_tokenizer() -> PreTrainedTokenizerFast:
  """A deterministic character-level tokenizer: 4 specials + newline + printable ASCII = 100 ids.

  Every character is one token (so step boundaries are trivially exact), BOS is prepended like
  Llama's, characters outside the alphabet map to <unk>.
  """
  vocab = {tok: i for i, tok in enumerate(EMBEDDED_SPECIALS)}
  for ch in EMBEDDED_CHARS:
    vocab[ch] = len(vocab)
  tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
  tk.decoder = decoders.Fuse()
  tk.post_processor = processors.TemplateProcessing(
    single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
  )
  tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in EMBEDDED_SPECIALS])
  return _wrap(tk)


# Pre-tokenization of "embedded-bpe", GPT-2 style with two changes: every newline is a piece of its
# own (a step terminator never merges with its neighbours, see steps.py), and every digit is a
# piece of its own with no leading space (the same 10 digit tokens everywhere, which is what lets a
# tiny model learn column arithmetic). Words keep their leading space (" has"); a space before a
# digit is a token by itself. Whitespace runs other than newlines follow GPT-2.
EMBEDDED_BPE_PATTERN = (
  r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\p{N}|\n"
  r"|[^\S\n]+(?!\S)|[^\S\n]+"
)
# Upper bound given to the trainer. The synthetic corpus is so regular that merging stops earlier
# (every word that occurs twice becomes one token): the actual size is len(tokenizer), 445.
EMBEDDED_BPE_VOCAB_SIZE = 512


def _embedded_bpe_corpus():
  """The fixed training corpus: synthetic prompts + solutions and every filled-in template."""
  fmt = PromptFormat()
  # The default task, then a smaller slice with all four operations ("splits ... piles").
  problems = make_split(seed=0, n=3000, split="train") + make_split(
    seed=0, n=500, split="train", config={"operations": ("+", "-", "*", "/")}
  )
  for i, p in enumerate(problems):
    steps = split_steps(p.reference)
    yield fmt.policy_prompt(p.question) + p.reference
    if i % 10 == 0:
      yield fmt.global_refine_input(p.question, steps) + "\n" + p.reference
      yield fmt.local_refine_input(p.question, steps, i % len(steps)) + "\n" + p.reference


def _embedded_bpe_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(Regex(EMBEDDED_BPE_PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )


@functools.lru_cache(maxsize=1)
def _embedded_bpe_json() -> str:
  """Train the BPE once per process; the serialized tokenizer (immutable, so safe to cache)."""
  trainer = trainers.BpeTrainer(
    vocab_size=EMBEDDED_BPE_VOCAB_SIZE,
    min_frequency=2,
    show_progress=False,
    special_tokens=list(EMBEDDED_SPECIALS),
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )  # all 256 bytes: any text encodes
  scratch = Tokenizer(models.BPE())
  scratch.pre_tokenizer = _embedded_bpe_pre_tokenizer()
  scratch.train_from_iterator(_embedded_bpe_corpus(), trainer=trainer)
  vocab = scratch.get_vocab(with_added_tokens=False)
  merges = [
    tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
    for m in json.loads(scratch.to_str())["model"]["merges"]
  ]
  if [vocab.get(t) for t in EMBEDDED_SPECIALS] != [0, 1, 2, 3]:
    raise RuntimeError(
      f"BPE trainer put the specials elsewhere: {[vocab.get(t) for t in EMBEDDED_SPECIALS]}"
    )
  # Rebuild from vocab + merges so every model option is explicit (not the trainer's defaults).
  tk = Tokenizer(
    models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=False, byte_fallback=False)
  )
  tk.pre_tokenizer = _embedded_bpe_pre_tokenizer()
  tk.decoder = decoders.ByteLevel()
  tk.post_processor = processors.TemplateProcessing(
    single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
  )
  tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in EMBEDDED_SPECIALS])
  return tk.to_str()


def embedded_bpe_tokenizer() -> PreTrainedTokenizerFast:
  """A deterministic byte-level BPE for the synthetic task: same specials and BOS as the char one.

  Trained (once per process, ~1 s) on a fixed corpus from the synthetic generator and the
  default prompt templates; ids are a function of that corpus and of the `tokenizers` version.
  Newlines and digits are always single tokens; any text round-trips exactly (byte level, no
  <unk>). Each call returns a new tokenizer, so adding a token to one does not touch another.
  """
  tk = Tokenizer.from_str(_embedded_bpe_json())
  return _wrap(tk)


def _wrap(tk: Tokenizer) -> PreTrainedTokenizerFast:
  """Both embedded tokenizers: the same special tokens, no clean-up, no length limit."""
  return PreTrainedTokenizerFast(
    tokenizer_object=tk,
    pad_token="<pad>",
    bos_token="<s>",
    eos_token="</s>",
    unk_token="<unk>",
    clean_up_tokenization_spaces=False,
    model_max_length=1 << 30,
  )


def load_tokenizer(spec: str | os.PathLike) -> PreTrainedTokenizerFast:
  """Load a fast tokenizer from `spec`.

  spec: "embedded" (characters); "embedded-bpe" (byte-level BPE); a Hugging Face tokenizer
  folder (tokenizer.json, tokenizer_config.json); a bare `tokenizer.json` file; or a `.gguf`
  model file (its embedded tokenizer). Nothing is downloaded: a missing path is an error, not a
  Hub lookup.
  """
  if isinstance(spec, str) and spec == "embedded":
    return embedded_tokenizer()
  if isinstance(spec, str) and spec == "embedded-bpe":
    return embedded_bpe_tokenizer()
  path = Path(spec).expanduser()
  if not path.exists():
    raise FileNotFoundError(
      f"tokenizer {os.fspath(spec)!r} not found: give 'embedded', 'embedded-bpe', "
      f"a tokenizer folder, a tokenizer.json file or a .gguf file"
    )
  if path.is_file() and path.suffix == ".gguf":
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
  elif path.is_file():
    tok = PreTrainedTokenizerFast(
      tokenizer_file=os.fspath(path), clean_up_tokenization_spaces=False
    )
  elif (path / "tokenizer_config.json").exists() or (path / "config.json").exists():
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
  elif (path / "tokenizer.json").exists():
    tok = PreTrainedTokenizerFast(
      tokenizer_file=os.fspath(path / "tokenizer.json"), clean_up_tokenization_spaces=False
    )
  else:
    raise FileNotFoundError(f"{os.fspath(path)!r} has no tokenizer.json or tokenizer_config.json")
  if not isinstance(tok, PreTrainedTokenizerFast):
    raise TypeError(
      f"{os.fspath(path)!r} loaded a slow tokenizer ({type(tok).__name__}); "
      f"step indices need a fast tokenizer with offsets"
    )
  return tok


def add_special_token(tokenizer: PreTrainedTokenizerFast, token: str = "[BAD]") -> int:
  """Add `token` (e.g. the local refiner's "[BAD]" marker) as one unsplittable token; its id.

  Idempotent. Call it only when the config asks for the marker: it grows the vocabulary, and the
  model loader must then grow the embedding (and LM head) to `len(tokenizer)` rows.

  Args:
    tokenizer: the tokenizer (changed in place).
    token: the token's text.
  """
  existing = tokenizer.get_vocab().get(token)
  if existing is not None:
    return existing
  tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
  return tokenizer.convert_tokens_to_ids(token)


def add_marker_token(tokenizer: PreTrainedTokenizerFast, prompt_format: PromptFormat) -> int | None:
  """The prompt format's marker as one added token when it asks for that (`marker_as_token`).

  Args:
    tokenizer: grown by one token in place (the model loader then grows the embedding to match).
    prompt_format: its `marker` and `marker_as_token`.

  Returns:
    The marker's id, or None when the format keeps the marker as ordinary text.
  """
  if not prompt_format.marker_as_token:
    return None
  return add_special_token(tokenizer, prompt_format.marker)


def padding_id(tokenizer: PreTrainedTokenizerFast) -> int:
  """The id to fill padded positions with: the pad token, else EOS, else the unknown token.

  Llama-2's tokenizer (like transformers' own) has no pad token. Adding one would grow the
  user's vocabulary behind their back, so padding reuses EOS (or <unk>) as transformers users
  do; every padded position is masked (attention, loss and value-head masks), so which id fills
  it never changes a result.

  Args:
    tokenizer: any fast tokenizer.

  Returns:
    A token id inside the tokenizer's vocabulary.
  """
  for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
    value = getattr(tokenizer, name, None)
    if value is not None:
      return int(value)
  raise ValueError(
    "the tokenizer has no pad, eos or unk token to pad batches with: set one in its "
    'tokenizer_config.json (e.g. "pad_token": "</s>")'
  )
