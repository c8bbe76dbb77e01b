"""`--config=configs/X.py` from any directory: found relative to the current directory first,
else in the package `glore_jax.configs` (the clone's configs/ folder, or the installed copy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from glore_jax.config_files import load_config_file, resolve_config_argv, resolve_config_path

REPO = Path(__file__).resolve().parents[1]


def test_paths_resolve_from_another_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  demo = str(REPO / "configs" / "demo.py")
  assert resolve_config_path("configs/demo.py") == demo
  assert resolve_config_path("glore_jax/configs/demo.py") == demo
  assert resolve_config_path("demo.py") == demo
  assert resolve_config_path("configs/demo.py:arg") == demo + ":arg"  # ml_collections' argument
  assert resolve_config_path("configs/nope.py") == "configs/nope.py"  # the flag reports it
  assert resolve_config_argv(["main", "--config", "configs/micro.py", "--workdir=x"]) == [
    "main",
    "--config",
    str(REPO / "configs" / "micro.py"),
    "--workdir=x",
  ]


def test_a_local_file_wins_over_the_packaged_one(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "demo.py").write_text("def get_config():\n  return 1\n")
  assert resolve_config_path("configs/demo.py") == "configs/demo.py"
  assert load_config_file("configs/demo.py") == 1


def test_configs_import_their_siblings_as_a_package(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  thirteen = load_config_file("configs/llama2_13b_gsm8k.py")
  assert thirteen.model.checkpoint.endswith("Llama-2-13b-hf")
  repro = load_config_file("configs/repro_synthetic.py")
  assert repro.data.train_size == 4000 and repro.policy.train.steps > 0  # demo's, extended
  for path in (REPO / "configs").glob("*.py"):
    assert "spec_from_file_location" not in path.read_text(), path.name


def test_unknown_config_file_is_an_error():
  with pytest.raises(FileNotFoundError, match="nope.py"):
    load_config_file("configs/nope.py")
