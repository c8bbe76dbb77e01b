"""Helpers of the reliability suite (issue 14): bad inputs, stale and damaged outputs, kills.

Every case here reproduces a failure of the pipeline before fingerprints, checksums and the
validation table existed; `subprocess_env` and `micro_run` come from tests/conftest.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.pipeline.conftest import REPO, main_command, make_ctx, micro_config  # noqa: F401


def snapshot(workdir: Path) -> dict[str, bytes]:
  """Bytes of every file below `workdir`."""
  return {
    str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()
  }


def copy_workdir(src: Path, dst: Path) -> Path:
  shutil.copytree(src, dst, symlinks=True)
  return dst


def run_many(env, cases: dict[str, tuple[Path, list[str]]], timeout: float = 600) -> dict:
  """Runs `python -m glore_jax.main` once per case, all at once: {name: (rc, stdout, stderr)}."""
  procs = {
    name: subprocess.Popen(
      main_command(workdir, *args),
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name, (workdir, args) in cases.items()
  }
  out = {}
  for name, p in procs.items():
    stdout, stderr = p.communicate(timeout=timeout)
    out[name] = (p.returncode, stdout, stderr)
  return out


def last_line(stderr: str) -> str:
  lines = stderr.strip().splitlines()
  return lines[-1] if lines else ""


def assert_one_line_error(rc: int, stderr: str, code: int, *needles: str) -> None:
  """Exit `code`, no traceback, and the message (the last stderr line) names every needle."""
  assert rc == code, f"exit {rc}, expected {code}:\n{stderr[-3000:]}"
  assert "Traceback" not in stderr, f"a traceback instead of one line:\n{stderr[-3000:]}"
  line = last_line(stderr)
  assert line.startswith(("error: ", "config error: ")), line
  for needle in needles:
    assert needle in line, f"{needle!r} not in {line!r}"
