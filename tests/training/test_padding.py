"""Tokenizers without a pad token (Llama-2's): batches pad with EOS (or <unk>), the vocabulary is
never grown, and the id that fills the padding never changes a loss or a score."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from glore_jax.data.tokenizer import embedded_tokenizer, padding_id
from glore_jax.model import create_model, preset
from glore_jax.stages.scoring import score_steps
from glore_jax.training import SFTExample, ValueExample, losses, make_batches
from glore_jax.training.batch import collate_lm, collate_value


def _without(tokenizer, *names):
  for name in names:
    setattr(tokenizer, name, None)
  return tokenizer


def test_padding_id_prefers_pad_then_eos_then_unk():
  tok = embedded_tokenizer()
  assert padding_id(tok) == tok.pad_token_id == 0
  size = len(tok)
  assert padding_id(_without(tok, "pad_token")) == tok.eos_token_id == 2
  assert padding_id(_without(tok, "eos_token")) == tok.unk_token_id == 3
  assert len(tok) == size and tok.pad_token is None  # nothing added to the vocabulary
  with pytest.raises(ValueError, match="no pad, eos or unk token"):
    padding_id(_without(tok, "unk_token"))


def test_llama2_tokenizer_pads_with_eos(llama_tok_or_skip):
  tok = llama_tok_or_skip
  assert tok.pad_token is None
  assert padding_id(tok) == tok.eos_token_id == 2


@pytest.fixture
def llama_tok_or_skip(shared_data):
  from glore_jax.data.tokenizer import load_tokenizer

  path = shared_data / "tokenizers" / "llama2"
  if not (path / "tokenizer.json").exists():
    pytest.skip(f"no Llama-2 tokenizer at {path}")
  return load_tokenizer(path)


def test_a_missing_pad_id_is_a_clear_error():
  with pytest.raises(ValueError, match="pad_id=None: expected a token id.*padding_id"):
    collate_lm([SFTExample([1, 5, 6], 1)], pad_id=None)
  with pytest.raises(ValueError, match="pad_id=None"):
    make_batches([ValueExample([1, 5, 6], [2], [1.0])], batch_size=1, kind="value", pad_id=None)


def _ragged_lm():
  rng = np.random.default_rng(0)
  return [SFTExample([1] + rng.integers(4, 100, size=n).tolist(), 3) for n in (5, 11, 17)]


def test_lm_loss_does_not_depend_on_the_padding_id():
  model = create_model(preset("tiny", vocab_size=100), seed=0)
  results = []
  for pad in (0, 2, 99):
    batch = collate_lm(_ragged_lm(), pad_id=pad, batch_size=4)
    assert (batch["tokens"][batch["attention_mask"] == 0] == pad).all()
    tokens = jnp.asarray(batch["tokens"])
    hidden, _ = model.forward(tokens, attention_mask_bt=jnp.asarray(batch["attention_mask"]))
    logits = model.logits(hidden)
    results.append(
      float(losses.lm_loss(logits, losses.shift_targets(tokens), jnp.asarray(batch["target_mask"])))
    )
  assert results[0] == results[1] == results[2]


def test_value_loss_and_step_scores_do_not_depend_on_the_padding_id():
  model = create_model(preset("tiny", vocab_size=100, value_head=True), seed=1)
  records = [
    ValueExample([1, 7, 8, 9], [1, 3], [1.0, 0.0]),
    ValueExample([1, 7, 8, 9, 10, 11, 12], [2, 6], [0.0, 1.0]),
  ]
  values = []
  for pad in (0, 2):
    batch = collate_value(records, pad_id=pad, batch_size=4)
    hidden, _ = model.forward(
      jnp.asarray(batch["tokens"]), attention_mask_bt=jnp.asarray(batch["attention_mask"])
    )
    step_logits = losses.gather_steps(model.values(hidden), jnp.asarray(batch["value_index"]))
    values.append(
      float(
        losses.value_loss(
          step_logits, jnp.asarray(batch["value_target"]), jnp.asarray(batch["value_index"] >= 0)
        )
      )
    )
  assert values[0] == values[1]

  tok = embedded_tokenizer()
  prompts, steps = ["Q: 1+1\nA:\n", "Q: a longer question here\nA:\n"], [["1+1=2", "#### 2"], ["x"]]
  with_pad = score_steps(model, tok, prompts, steps, max_length=64)
  without = score_steps(
    model, _without(embedded_tokenizer(), "pad_token"), prompts, steps, max_length=64
  )
  assert with_pad == without and len(with_pad[0]) == 2
