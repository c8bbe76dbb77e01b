"""Tokenizer loading: a Hugging Face tokenizer from disk, or an embedded character-level one.

The embedded tokenizer lets the whole pipeline (synthetic task + tiny Llama) run offline with no
files at all; it is built in code, so its ids are identical on every machine and every run.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

__all__ = ["EMBEDDED_CHARS", "EMBEDDED_SPECIALS", "add_special_token", "embedded_tokenizer",
           "load_tokenizer"]

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
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t in EMBEDDED_SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", clean_up_tokenization_spaces=False, model_max_length=1 << 30)


def load_tokenizer(spec: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer from `spec`.

    spec: "embedded"; a Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json);
    a bare `tokenizer.json` file; or a `.gguf` model file (its embedded tokenizer). Nothing is
    downloaded: a missing path is an error, not a Hub lookup.
    """
    if isinstance(spec, str) and spec == "embedded":
        return embedded_tokenizer()
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"tokenizer {os.fspath(spec)!r} not found: give 'embedded', a tokenizer folder, "
            f"a tokenizer.json file or a .gguf file")
    if path.is_file() and path.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    elif path.is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=os.fspath(path),
                                      clean_up_tokenization_spaces=False)
    elif (path / "tokenizer_config.json").exists() or (path / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    elif (path / "tokenizer.json").exists():
        tok = PreTrainedTokenizerFast(tokenizer_file=os.fspath(path / "tokenizer.json"),
                                      clean_up_tokenization_spaces=False)
    else:
        raise FileNotFoundError(
            f"{os.fspath(path)!r} has no tokenizer.json or tokenizer_config.json")
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise TypeError(f"{os.fspath(path)!r} loaded a slow tokenizer ({type(tok).__name__}); "
                        f"step indices need a fast tokenizer with offsets")
    return tok


def add_special_token(tokenizer: PreTrainedTokenizerFast, token: str = "[BAD]") -> int:
    """Add `token` (e.g. the local refiner's "[BAD]" marker) as one unsplittable token; its id.

    Idempotent. Call it only when the config asks for the marker: it grows the vocabulary, and the
    model loader must then grow the embedding (and LM head) to `len(tokenizer)` rows.
    """
    existing = tokenizer.get_vocab().get(token)
    if existing is not None:
        return existing
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(token)
