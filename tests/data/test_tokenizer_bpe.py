"""The embedded byte-level BPE ("embedded-bpe"): determinism, round trips, step indices."""

from __future__ import annotations

import hashlib
import json
import os
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from glore_jax.data import tokenizer as tokmod
from glore_jax.data.prompts import PromptFormat
from glore_jax.data.steps import encode_steps, split_steps, step_ends_from_tokens
from glore_jax.data.synthetic import make_split
from glore_jax.data.tokenizer import (
  EMBEDDED_SPECIALS,
  add_special_token,
  embedded_bpe_tokenizer,
  embedded_tokenizer,
  load_tokenizer,
)
from tests.data.test_steps import check_encoding

FMT = PromptFormat()
GSM8K_LIKE = (
  "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
  "May. How many clips did Natalia sell altogether in April and May?\n"
  "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
  "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
  "#### 72\n"
  "Weng earns $12 an hour; she's done 50 minutes (i.e. 5/6 h) -- that's $10.00! "
  "{x: [1, 2]} ~`@#%^&*()_+|\\\"' <tag> 3.14e-2, -7 ... \t tab  two  spaces \n\n  \n end "
)


@pytest.fixture(scope="module")
def bpe_tok():
  return load_tokenizer("embedded-bpe")


_CACHED: dict = {}


def _bpe():
  """One shared instance for hypothesis tests (function-scoped fixtures don't mix with @given)."""
  if "tok" not in _CACHED:
    _CACHED["tok"] = embedded_bpe_tokenizer()
  return _CACHED["tok"]


def _fingerprint(tok_json: str) -> str:
  model = json.loads(tok_json)["model"]
  blob = json.dumps([sorted(model["vocab"].items(), key=lambda kv: kv[1]), model["merges"]])
  return hashlib.sha256(blob.encode()).hexdigest()


def test_bpe_basics(bpe_tok):
  tok = bpe_tok
  assert isinstance(tok, PreTrainedTokenizerFast)
  assert 384 <= len(tok) <= 512
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
  assert [tok.convert_ids_to_tokens(i) for i in range(4)] == list(EMBEDDED_SPECIALS)
  assert tok.backend_tokenizer.model.__class__.__name__ == "BPE"
  text = "Tom has 3*12=36 apples.\n#### 36"
  enc = tok(text)
  assert enc["input_ids"][0] == tok.bos_token_id and enc["input_ids"].count(tok.bos_token_id) == 1
  assert tok.convert_ids_to_tokens(enc["input_ids"]) == [
    "<s>",
    "Tom",
    "Ġhas",
    "Ġ",
    "3",
    "*",
    "1",
    "2",
    "=",
    "3",
    "6",
    "Ġapples",
    ".",
    "Ċ",
    "####",
    "Ġ",
    "3",
    "6",
  ]
  assert tok.decode(enc["input_ids"], skip_special_tokens=True) == text
  # The char tokenizer is untouched by the new spec.
  assert len(load_tokenizer("embedded")) == 100


def test_bpe_pinned_ids(bpe_tok):
  """Pinned: a change (e.g. a `tokenizers` upgrade that trains differently) must be noticed,
  since a model trained with "embedded-bpe" without its saved tokenizer would read other ids."""
  assert len(bpe_tok) == 445
  assert bpe_tok("\n 0123456789", add_special_tokens=False)["input_ids"] == [
    202,
    224,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    26,
    27,
    28,
  ]
  assert _fingerprint(bpe_tok.backend_tokenizer.to_str()) == _fingerprint(
    tokmod._embedded_bpe_json()
  )


def test_bpe_training_is_deterministic_and_fast():
  t0 = time.perf_counter()
  first = tokmod._embedded_bpe_json.__wrapped__()  # bypass the per-process cache
  elapsed = time.perf_counter() - t0
  second = tokmod._embedded_bpe_json.__wrapped__()
  assert first == second
  assert _fingerprint(first) == _fingerprint(tokmod._embedded_bpe_json())
  assert elapsed < 10.0, f"training took {elapsed:.1f}s"  # ~0.5-1 s; generous for shared CPUs


def test_bpe_training_is_deterministic_across_processes():
  """Rust hash maps are seeded per process: a fresh interpreter must train the same merges."""
  code = (
    "import hashlib, json; from glore_jax.data.tokenizer import _embedded_bpe_json as f; "
    "m = json.loads(f())['model']; "
    "print(hashlib.sha256(json.dumps([sorted(m['vocab'].items(), key=lambda kv: kv[1]), "
    "m['merges']]).encode()).hexdigest())"
  )
  root = str(Path(tokmod.__file__).resolve().parents[2])
  env = dict(
    os.environ,
    PYTHONHASHSEED="12345",
    RAYON_NUM_THREADS="2",
    PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=root
  )
  assert out.stdout.strip() == _fingerprint(tokmod._embedded_bpe_json())


def test_bpe_each_call_is_a_fresh_tokenizer():
  a, b = embedded_bpe_tokenizer(), load_tokenizer("embedded-bpe")
  assert a is not b and a.backend_tokenizer is not b.backend_tokenizer
  n = len(a)
  bad = add_special_token(a, "[BAD]")
  assert bad == n and len(a) == n + 1
  assert add_special_token(a, "[BAD]") == bad and len(a) == n + 1
  assert len(b) == n and len(embedded_bpe_tokenizer()) == n
  ids = a("x\n[BAD] He has 5+3=8 pens.", add_special_tokens=False)["input_ids"]
  assert ids.count(bad) == 1 and a.decode(ids) == "x\n[BAD] He has 5+3=8 pens."
  assert b("[BAD]", add_special_tokens=False)["input_ids"] != [bad]
  # The marker is one token and keeps step indices exact.
  enc = encode_steps(a, "Q\n", ["[BAD] He has 5+3=8 pens.", "#### 8"])
  check_encoding(a, "Q\n", ["[BAD] He has 5+3=8 pens.", "#### 8"], enc)
  assert a.convert_ids_to_tokens(enc.ids)[enc.prompt_length] == "[BAD]"


def test_bpe_round_trips_synthetic_and_gsm8k_like(bpe_tok):
  texts = [
    FMT.policy_prompt(p.question) + p.reference for p in make_split(seed=3, n=300, split="test")
  ]
  texts += [GSM8K_LIKE, string.printable, "", " ", "\n", "  \n\n x", "é ü 日本語 🙂 \u00a0"]
  for text in texts:
    ids = bpe_tok(text)["input_ids"]
    assert bpe_tok.unk_token_id not in ids
    assert bpe_tok.decode(ids, skip_special_tokens=True) == text
    assert bpe_tok.decode(ids[1:]) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable, max_size=80))
def test_bpe_round_trips_printable_ascii(text):
  tok = _bpe()
  enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
  ids = enc["input_ids"]
  assert tok.decode(ids) == text
  # Offsets tile the text exactly (what encode_steps relies on).
  assert "".join(text[a:b] for a, b in enc["offset_mapping"]) == text
  for piece in tok.convert_ids_to_tokens(ids):
    raw = tok.convert_tokens_to_string([piece])
    if "\n" in raw:
      assert raw == "\n", f"newline merged into {raw!r}"
    if any(c.isdigit() for c in raw):
      assert len(raw) == 1, f"digit merged into {raw!r}"


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_bpe_round_trips_any_unicode(text):
  tok = _bpe()
  ids = tok(text, add_special_tokens=False)["input_ids"]
  if not any(s in text for s in EMBEDDED_SPECIALS):  # those texts *are* the special tokens
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_bpe_exact_step_indices_on_synthetic(bpe_tok):
  tok = bpe_tok
  problems = make_split(seed=0, n=200, split="test") + make_split(
    seed=1, n=100, split="train", config={"operations": ("+", "-", "*", "/")}
  )
  for p in problems:
    steps = split_steps(p.reference)
    for prompt in (
      FMT.policy_prompt(p.question),
      FMT.local_refine_input(p.question, steps, len(steps) - 1),
    ):
      enc = encode_steps(tok, prompt, steps)
      check_encoding(tok, prompt, steps, enc)
      gen = enc.ids[enc.prompt_length :]
      assert [e + enc.prompt_length for e in step_ends_from_tokens(tok, gen)] == enc.step_ends
      assert [tok.decode([enc.ids[e]]) for e in enc.step_ends[:-1]] == ["\n"] * (len(steps) - 1)
  # Truncation keeps whole steps only.
  for p in problems[:20]:
    prompt, steps = FMT.policy_prompt(p.question), split_steps(p.reference)
    full = encode_steps(tok, prompt, steps)
    for m in range(full.prompt_length, len(full.ids) + 2, 3):
      enc = encode_steps(tok, prompt, steps, max_length=m)
      assert len(enc.ids) <= m
      check_encoding(tok, prompt, steps, enc, full=full)


def test_bpe_exact_indices_small(bpe_tok):
  enc = encode_steps(bpe_tok, "Q\n", ["ab", "c", "#### 5"])
  toks = bpe_tok.convert_ids_to_tokens(enc.ids)
  assert toks[: enc.prompt_length] == ["<s>", "Q", "Ċ"]
  assert [toks[e] for e in enc.step_ends] == ["Ċ", "Ċ", "</s>"]
  assert toks[-4:-1] == ["####", "Ġ", "5"]


def test_bpe_is_much_shorter_than_char(bpe_tok):
  char = embedded_tokenizer()
  texts = [
    FMT.policy_prompt(p.question) + p.reference for p in make_split(seed=1, n=300, split="test")
  ]
  n_char = sum(len(char(t)["input_ids"]) for t in texts) / len(texts)
  n_bpe = sum(len(bpe_tok(t)["input_ids"]) for t in texts) / len(texts)
  assert n_bpe < 0.5 * n_char, (n_char, n_bpe)  # measured: ~201 vs ~84 (2.4x)


def test_bpe_save_and_reload(bpe_tok, tmp_path):
  bpe_tok.save_pretrained(tmp_path / "bpe")
  reloaded = load_tokenizer(tmp_path / "bpe")
  text = "Question: Tom has 3 pens.\nAnswer:\nTom has 3+4=7 pens.\n#### 7"
  assert reloaded(text)["input_ids"] == bpe_tok(text)["input_ids"]
  assert reloaded.eos_token_id == 2 and len(reloaded) == len(bpe_tok)
  assert reloaded.decode(reloaded(text)["input_ids"], skip_special_tokens=True) == text
