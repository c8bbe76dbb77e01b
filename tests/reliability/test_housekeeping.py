"""Leftovers and permissions (issue 14, items 8-9). Before: a killed model save left
`.model.partial-*` forever, a finished work directory on a read-only disk could not reprint
its results, and `launch/tpu.sh` pasted PYTHON_VERSION and scp paths unquoted."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

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


def _read_only(cmd, workdir):
  """`cmd` with `workdir` read-only: a read-only bind mount in a private mount namespace as
  root (which ignores file modes), the write bits removed otherwise; None when impossible."""
  if os.geteuid() != 0:
    for path in [workdir, *workdir.rglob("*")]:
      os.chmod(path, os.lstat(path).st_mode & ~0o222)
    return cmd
  unshare = shutil.which("unshare")
  if unshare is None:
    return None
  script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
  probe = subprocess.run(
    [unshare, "-m", "sh", "-c", script, str(workdir), "true"], capture_output=True
  )
  return [unshare, "-m", "sh", "-c", script, str(workdir), *cmd] if probe.returncode == 0 else None


@pytest.mark.slow
def test_read_only_finished_workdir_reprints_results(micro_run, subprocess_env, tmp_path):
  w = copy_workdir(micro_run.workdir, tmp_path / "w")
  before = snapshot(w)
  cmd = _read_only(main_command(w), w)
  if cmd is None:
    pytest.skip("cannot make a directory read-only here (root without unshare/mount)")
  try:
    p = subprocess.run(
      cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=300
    )
  finally:
    for path in [w, *w.rglob("*")]:
      os.chmod(path, os.lstat(path).st_mode | stat.S_IWUSR)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "| method |" in p.stdout and "[evaluate] already done" in p.stdout
  assert snapshot(w) == before


def _dry_run(*args, **env):
  return subprocess.run(
    ["bash", str(REPO / "launch" / "tpu.sh"), *args],
    capture_output=True,
    text=True,
    env={**os.environ, "DRY_RUN": "1", "TPU_NAME": "t", "ZONE": "z", **env},
  )


def test_tpu_script_quotes_python_version_and_scp_paths():
  p = _dry_run("setup", PYTHON_VERSION="3.11; touch /tmp/pwned")
  assert p.returncode == 2 and "PYTHON_VERSION" in p.stderr and "pwned" not in p.stdout
  p = _dry_run("copy-in", "/tmp/my ckpt", "/tmp/dest dir")
  assert p.returncode == 0, p.stderr
  # the remote path reaches the remote shell escaped: t:/tmp/dest\ dir
  assert "t:/tmp/dest\\\\\\ dir" in p.stdout, p.stdout
  p = _dry_run("copy-out", "out", WORKDIR="/tmp/run 1")
  assert "t:/tmp/run\\\\\\ 1/evaluate" in p.stdout, p.stdout
