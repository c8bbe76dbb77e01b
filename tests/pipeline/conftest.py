"""Pipeline-level fixtures: the micro config, in-process stage contexts, and ONE real micro run.

Compile time dominates everything here, so the end-to-end micro pipeline runs once per session
(`micro_run`, configs/micro.py exactly as a user runs it) and the other subprocess tests reuse its
work directory (its policy, and its sample and label shards as the uninterrupted reference for
the resume test). Subprocesses
share a persistent JAX compilation cache, so only the first run pays for most compiles.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

from etils import epath

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "configs" / "micro.py"


def micro_config(**overrides):
  """configs/micro.py's config, with dotted overrides ({"sorm.num_rollouts": 4})."""
  from glore_jax.config_files import load_config_file

  config = load_config_file(str(MICRO))
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  from glore_jax.config_check import validate

  validate(config)
  return config


def make_ctx(workdir, config):
  """A stage Context without devices: for stages whose model calls the test replaces."""
  from glore_jax.stages.common import Context

  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  return Context(config=config, workdir=path, mesh=None)


def main_command(workdir, *overrides: str, config: Path = MICRO) -> list[str]:
  return [
    sys.executable,
    "-m",
    "glore_jax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *overrides,
  ]


@dataclasses.dataclass
class Run:
  returncode: int
  stdout: str
  stderr: str
  seconds: float


def run_main(env, workdir, *overrides: str, timeout: float = 600) -> Run:
  start = time.perf_counter()
  p = subprocess.run(
    main_command(workdir, *overrides),
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  return Run(p.returncode, p.stdout, p.stderr, time.perf_counter() - start)


@dataclasses.dataclass
class MicroRun:
  workdir: Path
  first: Run


# `subprocess_env` and `micro_run` live in tests/conftest.py: tests/reliability shares them.
