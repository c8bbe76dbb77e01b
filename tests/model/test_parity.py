"""Our Llama against transformers' PyTorch LlamaForCausalLM: tiny random configs and SmolLM2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glore_jax.model import load_hf, save_hf
from tests.model.hf_reference import hf_logits, make_hf_llama

torch = pytest.importorskip("torch", reason="parity tests need torch==2.13.0 (the 'test' extra)")

VARIANTS = {
  "mha-untied": dict(heads=4, kv_heads=4, tie=False),
  "gqa-untied": dict(heads=4, kv_heads=2, tie=False),
  "gqa-tied": dict(heads=8, kv_heads=2, tie=True, hidden=64),
  "mha-tied-theta-eps": dict(
    heads=4, kv_heads=4, tie=True, rope_theta=500_000.0, rms_norm_eps=1e-6
  ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers(tmp_path, variant):
  hf_model = make_hf_llama(tmp_path, **VARIANTS[variant])
  ours = load_hf(tmp_path)
  tokens = np.random.default_rng(0).integers(0, 128, size=(3, 37))
  expected = hf_logits(hf_model, tokens)
  got = np.asarray(ours(jnp.asarray(tokens)))
  assert np.abs(got - expected).max() <= 1e-4


def test_padding_mask_matches_transformers(tmp_path):
  hf_model = make_hf_llama(tmp_path)
  ours = load_hf(tmp_path)
  tokens = np.random.default_rng(1).integers(0, 128, size=(2, 20))
  mask = np.ones_like(tokens)
  mask[1, 15:] = 0  # right padding: real positions must not see it
  expected = hf_logits(hf_model, tokens, mask)
  got = np.asarray(ours(jnp.asarray(tokens), attention_mask_bt=jnp.asarray(mask)))
  assert np.abs(got[0] - expected[0]).max() <= 1e-4
  assert np.abs(got[1, :15] - expected[1, :15]).max() <= 1e-4


def test_save_hf_round_trip_loads_in_transformers(tmp_path):
  from transformers import AutoModelForCausalLM

  make_hf_llama(tmp_path / "src", heads=4, kv_heads=2, tie=False)
  ours = load_hf(tmp_path / "src")
  save_hf(ours, tmp_path / "export")
  reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
  tokens = np.random.default_rng(2).integers(0, 128, size=(2, 16))
  assert np.abs(hf_logits(reloaded, tokens) - np.asarray(ours(jnp.asarray(tokens)))).max() <= 1e-4
  again = load_hf(tmp_path / "export")
  assert np.array_equal(
    np.asarray(again(jnp.asarray(tokens))), np.asarray(ours(jnp.asarray(tokens)))
  )


def test_value_head_saved_with_hf_weights(tmp_path):
  from safetensors import safe_open

  make_hf_llama(tmp_path / "src")
  ours = load_hf(tmp_path / "src", value_head=True, seed=3)
  save_hf(ours, tmp_path / "export")
  # under the names of transformers' token-classification head (tests/model/test_hf_value_head.py)
  with safe_open(str(tmp_path / "export" / "model.safetensors"), framework="numpy") as f:
    assert {"score.weight", "score.bias"} <= set(f.keys())
  again = load_hf(tmp_path / "export", value_head=True, seed=99)  # seed unused: loaded from file
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 128, size=(2, 9)))
  v1 = ours.values(ours.forward(tokens)[0])
  v2 = again.values(again.forward(tokens)[0])
  assert np.array_equal(np.asarray(v1), np.asarray(v2))


SMOL_PROMPTS = [
  "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
  "The capital of France is",
  "def fibonacci(n):",
]


@pytest.fixture(scope="module")
def smollm2(smollm2_hf_dir):
  from transformers import AutoModelForCausalLM, AutoTokenizer

  hf_model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
  tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir)
  return load_hf(smollm2_hf_dir), hf_model, tokenizer


def test_smollm2_logits_match_transformers(smollm2):
  ours, hf_model, tokenizer = smollm2
  for prompt in SMOL_PROMPTS:
    tokens = np.array([tokenizer(prompt)["input_ids"]])
    diff = np.abs(np.asarray(ours(jnp.asarray(tokens))) - hf_logits(hf_model, tokens)).max()
    assert diff <= 1e-3, (prompt, diff)


def test_smollm2_greedy_tokens_match_transformers(smollm2):
  ours, hf_model, tokenizer = smollm2
  prompt = tokenizer(SMOL_PROMPTS[0])["input_ids"]
  new_tokens = 32
  with torch.no_grad():
    hf_out = hf_model.generate(
      torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens
    )[0, len(prompt) :].tolist()
  # Our greedy loop on the plain causal forward: one fixed-size program, causality makes the
  # padding after the current position irrelevant.
  width = len(prompt) + new_tokens
  forward = jax.jit(lambda tokens: ours(tokens))
  tokens = np.zeros((1, width), np.int32)
  tokens[0, : len(prompt)] = prompt
  for i in range(len(prompt), width):
    tokens[0, i] = int(np.argmax(np.asarray(forward(jnp.asarray(tokens)))[0, i - 1]))
  assert tokens[0, len(prompt) :].tolist() == hf_out
