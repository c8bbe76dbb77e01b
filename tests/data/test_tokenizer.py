"""Tokenizer loading and the embedded character-level tokenizer."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import PreTrainedTokenizerFast

from glore_jax.data.tokenizer import (
  EMBEDDED_CHARS,
  EMBEDDED_SPECIALS,
  add_special_token,
  embedded_tokenizer,
  load_tokenizer,
)


def test_embedded_is_deterministic_and_complete():
  tok = load_tokenizer("embedded")
  assert isinstance(tok, PreTrainedTokenizerFast)
  assert len(tok) == 100 == len(EMBEDDED_SPECIALS) + len(EMBEDDED_CHARS)
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
  assert tok.get_vocab() == embedded_tokenizer().get_vocab()
  # Pinned ids: changing them silently would break every saved checkpoint.
  assert tok("\n 0Aa~", add_special_tokens=False)["input_ids"] == [4, 5, 21, 38, 70, 99]
  text = "Tom has 3*12=36 apples.\n#### 36"
  enc = tok(text)
  assert enc["input_ids"][0] == tok.bos_token_id and len(enc["input_ids"]) == len(text) + 1
  assert tok.decode(enc["input_ids"], skip_special_tokens=True) == text
  assert tok("é")["input_ids"] == [1, tok.unk_token_id]


def test_add_special_token_is_idempotent_and_atomic():
  tok = embedded_tokenizer()
  bad = add_special_token(tok, "[BAD]")
  assert bad == 100 and len(tok) == 101
  assert add_special_token(tok, "[BAD]") == bad and len(tok) == 101
  assert tok("a[BAD]b", add_special_tokens=False)["input_ids"] == [70, bad, 71]
  assert embedded_tokenizer()("[BAD]", add_special_tokens=False)["input_ids"] != [bad]


def test_add_special_token_llama(llama_tok):
  tok = copy.deepcopy(llama_tok)
  bad = add_special_token(tok, "[BAD]")
  assert bad == 32000
  ids = tok("x\n[BAD] y", add_special_tokens=False)["input_ids"]
  assert bad in ids and tok.decode(ids) == "x\n[BAD] y"


def test_load_from_folder_and_file(shared_data, tmp_path):
  folder = shared_data / "tokenizers" / "llama2"
  if not folder.exists():
    pytest.skip(f"{folder} not found")
  expected = [1, 15043, 29892, 590, 11203, 338, 274, 1082]  # from the fixture's SOURCE.md
  assert load_tokenizer(folder)("Hello, my dog is cute")["input_ids"] == expected
  assert load_tokenizer(folder / "tokenizer.json")("Hello, my dog is cute")["input_ids"] == expected
  # A folder with only tokenizer.json (no config) also loads.
  bare = tmp_path / "bare"
  bare.mkdir()
  (bare / "tokenizer.json").write_text(
    (folder / "tokenizer.json").read_text(encoding="utf-8"), encoding="utf-8"
  )
  assert load_tokenizer(bare)("Hello")["input_ids"][:2] == [1, 15043]
  # The embedded tokenizer saved and reloaded is the same tokenizer.
  embedded_tokenizer().save_pretrained(tmp_path / "emb")
  reloaded = load_tokenizer(tmp_path / "emb")
  assert reloaded("a\nb")["input_ids"] == embedded_tokenizer()("a\nb")["input_ids"]
  assert reloaded.eos_token_id == 2
  assert (
    json.loads((tmp_path / "emb" / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"
  )


def test_smollm2_from_gguf(smollm2_tok):
  assert len(smollm2_tok) == 49152
  assert smollm2_tok.convert_ids_to_tokens(smollm2_tok("a\nb")["input_ids"]) == ["a", "Ċ", "b"]


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    load_tokenizer(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    load_tokenizer(tmp_path)
