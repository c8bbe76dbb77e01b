"""Prints how far our Llama's logits are from transformers' PyTorch LlamaForCausalLM (fp32):
tiny random configs (MHA/GQA, tied/untied, non-default rope_theta and eps) and SmolLM2-135M.

  python benchmarks/parity.py [--smollm2-dir DIR]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ helpers

from glore_jax.model import load_hf
from glore_jax.model.gguf import convert_gguf_to_hf, smollm2_gguf_path
from tests.model.hf_reference import hf_logits, make_hf_llama

VARIANTS = {
  "mha-untied": dict(heads=4, kv_heads=4, tie=False),
  "gqa-untied": dict(heads=4, kv_heads=2, tie=False),
  "gqa-tied": dict(heads=8, kv_heads=2, tie=True),
  "mha-tied-theta5e5-eps1e-6": dict(
    heads=4, kv_heads=4, tie=True, rope_theta=5e5, rms_norm_eps=1e-6
  ),
}
PROMPTS = [
  "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
  "in May. How many clips did Natalia sell altogether in April and May?",
  "The capital of France is",
  "def fibonacci(n):",
]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument(
    "--smollm2-dir", default=str(Path.home() / ".cache/glore_jax_tests/smollm2-135m-instruct-hf")
  )
  args = parser.parse_args()
  results = {}
  for name, kw in VARIANTS.items():
    with tempfile.TemporaryDirectory() as tmp:
      ref = make_hf_llama(Path(tmp), **kw)
      tokens = np.random.default_rng(0).integers(0, 128, size=(3, 37))
      diff = np.abs(np.asarray(load_hf(tmp)(jnp.asarray(tokens))) - hf_logits(ref, tokens)).max()
      results[name] = float(diff)
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  folder = convert_gguf_to_hf(smollm2_gguf_path(), args.smollm2_dir)
  ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  tok = AutoTokenizer.from_pretrained(folder)
  ours = load_hf(folder)
  diffs = []
  for p in PROMPTS:
    tokens = np.array([tok(p)["input_ids"]])
    diffs.append(
      float(np.abs(np.asarray(ours(jnp.asarray(tokens))) - hf_logits(ref, tokens)).max())
    )
  results["smollm2-135m (3 prompts, max)"] = max(diffs)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
