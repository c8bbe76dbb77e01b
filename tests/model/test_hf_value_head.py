"""Reward-model folders plug into transformers: `AutoModelForTokenClassification` reads our
value head as its `score` classifier and returns our value logits at every token."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from glore_jax.model import create_model, load_hf, preset, save_hf
from glore_jax.model.hf import VALUE_HEAD_FILE

torch = pytest.importorskip("torch", reason="the HF round trip needs torch (the 'test' extra)")


def _reward_model(tie: bool, seed: int = 3):
  model = create_model(preset("tiny", value_head=True, tie_word_embeddings=tie), seed=seed)
  # a head far from its near-zero initialisation, with a bias, so a missing or transposed
  # tensor cannot pass
  rng = np.random.default_rng(seed)
  model.value_head[...] = jnp.asarray(rng.normal(0, 0.5, model.value_head[...].shape), jnp.float32)
  model.value_bias[...] = jnp.asarray([0.37], jnp.float32)
  return model


def _batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 128, size=(3, 12)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[1, 7:] = 0  # a right-padded row
  mask[2, 3:] = 0
  return tokens, mask


@pytest.mark.parametrize("tie", [False, True])
def test_token_classification_returns_our_value_logits(tmp_path, tie):
  from transformers import AutoModelForTokenClassification

  ours = _reward_model(tie)
  save_hf(ours, tmp_path)
  tokens, mask = _batch()
  hidden, _ = ours.forward(jnp.asarray(tokens), attention_mask_bt=jnp.asarray(mask))
  expected = np.asarray(ours.values(hidden))

  for kwargs in ({"num_labels": 1}, {}):  # config.json already says one label
    hf = AutoModelForTokenClassification.from_pretrained(tmp_path, **kwargs).eval()
    with torch.no_grad():
      logits = (
        hf(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask))
        .logits.float()
        .numpy()
      )
    assert logits.shape == tokens.shape + (1,)
    real = mask.astype(bool)
    diff = np.abs(logits[..., 0] - expected)[real].max()
    print(f"tie={tie} {kwargs}: max |HF - ours| value logit = {diff:.2e}")
    assert diff < 1e-4, f"max |HF - ours| = {diff:.2e}"
    head = hf.score.weight.detach().numpy()
    np.testing.assert_array_equal(head, np.asarray(ours.value_head[...]).T)


def test_causal_lm_still_loads_and_our_loader_round_trips(tmp_path):
  from transformers import AutoModelForCausalLM

  ours = _reward_model(tie=False)
  save_hf(ours, tmp_path)
  assert not (tmp_path / VALUE_HEAD_FILE).exists()  # one weights file, as transformers expects
  hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # the head is ignored, not fatal
  assert hf.lm_head.weight.shape == (128, ours.cfg.hidden_size)

  back = load_hf(tmp_path, value_head=True)
  for a, b in zip(nnx.state(ours).flat_state(), nnx.state(back).flat_state()):
    np.testing.assert_array_equal(np.asarray(a[1].get_value()), np.asarray(b[1].get_value()))
  policy = load_hf(tmp_path)  # read as a policy, the head's file is skipped
  assert not policy.cfg.value_head


def test_folders_with_the_old_head_names_still_load(tmp_path):
  ours = _reward_model(tie=False)
  save_hf(ours, tmp_path)
  weights = load_file(str(tmp_path / "model.safetensors"))
  head = {
    "value_head.weight": weights.pop("score.weight"),
    "value_head.bias": weights.pop("score.bias"),
  }
  save_file(weights, str(tmp_path / "model.safetensors"))
  save_file(head, str(tmp_path / VALUE_HEAD_FILE))  # the layout glore-jax wrote before
  back = load_hf(tmp_path, value_head=True)
  np.testing.assert_array_equal(np.asarray(back.value_head[...]), np.asarray(ours.value_head[...]))
  np.testing.assert_array_equal(np.asarray(back.value_bias[...]), np.asarray(ours.value_bias[...]))
