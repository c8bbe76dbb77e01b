"""Finding `--config` files: relative to the current directory first, else the copies installed
with the package (`glore_jax.configs`), so a pip install without a clone runs
`--config=configs/demo.py` as the README shows."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import ml_collections

_PREFIXES = ("configs/", "glore_jax/configs/")


def installed_config_dirs() -> list[Path]:
  """The folders of the `glore_jax.configs` package (the clone's configs/ or the installed copy)."""
  import glore_jax.configs

  return [Path(p) for p in glore_jax.configs.__path__]


def resolve_config_path(spec: str) -> str:
  """`spec` (a path, optionally with ml_collections' ':arguments' suffix) -> a path that exists.

  An existing path is returned unchanged. Otherwise `configs/NAME.py`,
  `glore_jax/configs/NAME.py` and a bare `NAME.py` are looked up in the installed package; a
  spec found nowhere is returned unchanged (the config flag then reports it).

  Args:
    spec: the value given to --config.
  """
  path, sep, args = spec.partition(":")
  if not path or Path(path).expanduser().exists():
    return spec
  relative = path.replace(os.sep, "/")
  for prefix in _PREFIXES:
    if relative.startswith(prefix):
      relative = relative[len(prefix) :]
      break
  if "/" in relative or not relative.endswith(".py"):
    return spec
  for folder in installed_config_dirs():
    candidate = folder / relative
    if candidate.is_file():
      return str(candidate) + sep + args
  return spec


def resolve_config_argv(argv: Sequence[str]) -> list[str]:
  """argv with the value of --config (either spelling: `--config=X`, `--config X`) resolved.

  Args:
    argv: the command line (sys.argv).
  """
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + resolve_config_path(arg[len("--config=") :])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_config_path(out[i + 1])
  return out


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, found as `--config` finds it (no ':arguments').

  A file anywhere is run as a module of its own; the shipped configs import their siblings as
  `glore_jax.configs.NAME`, so they load the same from a clone or an installed copy.

  Args:
    spec: a config file path, or `configs/NAME.py` of the installed package.
  """
  path = resolve_config_path(spec)
  if not Path(path).is_file():
    raise FileNotFoundError(f"config file {spec!r} not found (here or in glore_jax.configs)")
  module_spec = importlib.util.spec_from_file_location("_glore_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config()
