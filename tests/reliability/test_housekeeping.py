"""Leftovers and permissions (issue 14, items 8-9). Before: a killed model save left
`.model.partial-*` forever, a finished work directory on a read-only disk could not reprint
its results, and `launch/tpu.sh` pasted PYTHON_VERSION and scp paths unquoted."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from glore_jax.stages import outputs

from .conftest import REPO, copy_workdir, main_command, make_ctx, micro_config, snapshot


def test_orphaned_partial_model_folders_are_removed_on_the_next_run(tmp_path):
  ctx = make_ctx(tmp_path, micro_config())
  orphan = ctx.path("policy").parent / ".model.partial-k1ll3d"
  orphan.mkdir(parents=True)
  (orphan / "model.safetensors").write_bytes(b"\0" * 1000)
  outputs.write_record(ctx, "policy")  # the killed run had started this policy
  assert outputs.start(ctx, "policy") is False
  assert not orphan.exists()


def _as_nobody(cmd):
  """`cmd` as an unprivileged user (root ignores file permissions), or None when impossible."""
  if os.geteuid() != 0:
    return cmd
  setpriv = shutil.which("setpriv")
  if setpriv is None:
    return None
  return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]


@pytest.mark.slow
def test_read_only_finished_workdir_reprints_results(micro_run, subprocess_env, tmp_path):
  cmd = _as_nobody(["true"])
  if cmd is None:
    pytest.skip("running as root without setpriv: cannot make a directory read-only")
  tmp_path = Path(tempfile.mkdtemp(prefix="glore-ro-"))  # pytest's folders are private (0700)
  os.chmod(tmp_path, 0o755)
  (tmp_path / "ro").mkdir(mode=0o755)
  w = copy_workdir(micro_run.workdir, tmp_path / "ro" / "w")
  cmd = _as_nobody(main_command(w))
  for path in [w, *w.rglob("*")]:
    mode = os.lstat(path).st_mode
    os.chmod(path, (mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH) & ~0o222
             | (0o111 if stat.S_ISDIR(mode) else 0))
  before = snapshot(w)
  env = {**subprocess_env, "HOME": str(tmp_path / "ro"),
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "ro" / "no-cache")}
  try:
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  finally:
    for path in [w, *w.rglob("*")]:
      os.chmod(path, os.lstat(path).st_mode | stat.S_IWUSR)
    shutil.rmtree(tmp_path, ignore_errors=True)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "| method |" in p.stdout and "[evaluate] already done" in p.stdout
  assert snapshot(w) == before


def _dry_run(*args, **env):
  return subprocess.run(["bash", str(REPO / "launch" / "tpu.sh"), *args], capture_output=True,
                        text=True, env={**os.environ, "DRY_RUN": "1", "TPU_NAME": "t",
                                        "ZONE": "z", **env})


def test_tpu_script_quotes_python_version_and_scp_paths():
  p = _dry_run("setup", PYTHON_VERSION="3.11; touch /tmp/pwned")
  assert p.returncode == 2 and "PYTHON_VERSION" in p.stderr and "pwned" not in p.stdout
  p = _dry_run("copy-in", "/tmp/my ckpt", "/tmp/dest dir")
  assert p.returncode == 0, p.stderr
  # the remote path reaches the remote shell escaped: t:/tmp/dest\ dir
  assert "t:/tmp/dest\\\\\\ dir" in p.stdout, p.stdout
  p = _dry_run("copy-out", "out", WORKDIR="/tmp/run 1")
  assert "t:/tmp/run\\\\\\ 1/evaluate" in p.stdout, p.stdout
