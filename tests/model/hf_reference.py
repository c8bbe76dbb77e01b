"""Builders for tiny random transformers Llamas saved as HF folders (the parity reference)."""

from pathlib import Path

import numpy as np


def make_hf_llama(
  folder: Path,
  *,
  heads=4,
  kv_heads=2,
  tie=False,
  rope_theta=10_000.0,
  rms_norm_eps=1e-5,
  vocab=128,
  hidden=64,
  layers=2,
  intermediate=128,
  seed=0,
):
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(seed)
  config = LlamaConfig(
    vocab_size=vocab,
    hidden_size=hidden,
    intermediate_size=intermediate,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    num_key_value_heads=kv_heads,
    rope_theta=rope_theta,
    rms_norm_eps=rms_norm_eps,
    tie_word_embeddings=tie,
    max_position_embeddings=256,
  )
  model = LlamaForCausalLM(config).eval()
  with torch.no_grad():  # HF initialises norms to 1; random scales make the test see them
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  model.save_pretrained(folder, safe_serialization=True)
  return model


def hf_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
  import torch

  with torch.no_grad():
    kwargs = {}
    if attention_mask is not None:
      kwargs["attention_mask"] = torch.tensor(attention_mask)
    return model(torch.tensor(tokens), **kwargs).logits.float().numpy()
