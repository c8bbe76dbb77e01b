"""What produced a run's results: the resolved config, the code version and the input checkpoints.

`record(config)` goes into evaluate's results.json; `write_run_config` writes the same record to
`<workdir>/resolved_config.json` when a run starts, so a work directory says how it was made
even before (or without) an evaluation.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etils import epath

import glore_jax

if TYPE_CHECKING:
  import ml_collections

RUN_CONFIG = "resolved_config.json"
# Config keys that name inputs from outside the work directory.
INPUT_KEYS = (
  "model.checkpoint",
  "data.path",
  "tokenizer",
  "inputs.policy",
  "inputs.orm",
  "inputs.sorm",
  "inputs.refiner_global",
  "inputs.refiner_local",
)


def _git(*args: str) -> str | None:
  """Output of a git command in the package's checkout; None outside one (an installed wheel)."""
  root = Path(glore_jax.__file__).resolve().parents[1]
  if not (root / ".git").exists():
    return None
  try:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict[str, Any]:
  """The package version, and the git commit (with a dirty flag) when run from a checkout."""
  commit = _git("rev-parse", "HEAD")
  dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
  return {
    "package": "glore-jax",
    "version": glore_jax.__version__,
    "git_commit": commit,
    "git_dirty": dirty,
  }


def _lookup(config, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      return None
  return node


def describe_folder(path: str) -> dict[str, Any]:
  """A cheap identity of an input folder or file: its config.json digest and weight bytes.

  Args:
    path: a local path or a gs:// URI.

  Returns:
    {"path", "exists"} plus, for an HF model folder, "config_sha256" and "safetensors_bytes".
  """
  p = epath.Path(path)
  out: dict[str, Any] = {"path": str(path), "exists": p.exists()}
  if out["exists"] and (p / "config.json").exists():
    out["config_sha256"] = hashlib.sha256((p / "config.json").read_bytes()).hexdigest()
    out["safetensors_bytes"] = sum(f.stat().length for f in p.glob("*.safetensors"))
  return out


def input_checkpoints(config: ml_collections.ConfigDict) -> dict[str, str]:
  """The config's non-empty outside inputs, by dotted key ("model.checkpoint": "/path")."""
  found = {}
  for key in INPUT_KEYS:
    value = _lookup(config, key)
    if isinstance(value, str) and value and not value.startswith("embedded"):
      found[key] = value
  return found


def record(config: ml_collections.ConfigDict, *, describe: bool = True) -> dict[str, Any]:
  """The provenance of a run with `config`: resolved config, code version, inputs, versions.

  Args:
    config: the validated ml_collections config of the run.
    describe: also fingerprint each input folder (reads each config.json).
  """
  import jax

  inputs = input_checkpoints(config)
  as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return {
    "config": json.loads(json.dumps(as_dict, default=str)),
    "code": code_version(),
    "inputs": inputs,
    "input_details": {k: describe_folder(v) for k, v in inputs.items()} if describe else {},
    "versions": {"python": sys.version.split()[0], "jax": jax.__version__},
    "argv": list(sys.argv),
    "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }


def write_run_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> epath.Path:
  """Writes `record(config)` to <workdir>/resolved_config.json, unless it already holds the
  same record (time and argv aside): a rerun of a finished run leaves it as it was.

  Args:
    config: the validated config.
    workdir: the run's work directory (local or gs://).

  Returns:
    The path written.
  """
  from glore_jax.workdir import read_json, write_json_atomic

  path = epath.Path(workdir) / RUN_CONFIG
  new = record(config)
  if path.exists():
    try:
      old = read_json(path)
    except ValueError:
      old = {}
    if _stable(old) == _stable(json.loads(json.dumps(new))):
      return path  # a rerun of the same run rewrites nothing
  try:
    write_json_atomic(path, new)
  except OSError as e:  # a finished work directory on a read-only disk can still reprint
    logging.getLogger(__name__).warning("could not record the run in %s: %s", path, e)
  return path


def _stable(rec: dict) -> dict:
  """A record without what changes between identical runs (time, command-line spelling)."""
  return {k: v for k, v in rec.items() if k not in ("recorded_at", "argv")}


__all__ = [
  "RUN_CONFIG",
  "code_version",
  "describe_folder",
  "input_checkpoints",
  "record",
  "write_run_config",
]
