"""The allocator restart: when it applies, that it happens once, and the opt-out."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from glore_jax import cpu_malloc

GLIBC_LINUX = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC_LINUX, reason="the tunables are glibc's (Linux)")
@pytest.mark.parametrize(
  "env, expected",
  [
    ({}, True),
    ({"JAX_PLATFORMS": "cpu"}, True),
    ({"JAX_PLATFORMS": "tpu"}, False),
    ({"JAX_PLATFORMS": "cpu,cuda"}, False),
    ({"GLORE_JAX_MALLOC": "0"}, False),
    ({"GLIBC_TUNABLES": cpu_malloc.TUNABLES}, False),
    ({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}, True),
  ],
)
def test_should_reexec(env, expected):
  assert cpu_malloc.should_reexec(env) is expected  # this CI install has no TPU/CUDA plugin


@pytest.mark.skipif(not GLIBC_LINUX, reason="the tunables are glibc's (Linux)")
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed")
def test_libtpu_counts_as_an_accelerator_only_with_tpu_chips(monkeypatch):
  """The tpu-aot extra installs libtpu to compile for TPU on any machine: JAX runs on the CPU
  there (the restart applies); on a TPU VM (its device nodes present) it does not."""
  assert cpu_malloc.should_reexec({})
  monkeypatch.setattr(cpu_malloc, "_tpu_chips_present", lambda: True)
  assert not cpu_malloc.should_reexec({})


def test_existing_tunables_are_kept():
  env = cpu_malloc.environment_with_tunables({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0:" + cpu_malloc.TUNABLES
  assert cpu_malloc.tunables_active(env)


SCRIPT = textwrap.dedent("""
    import os, sys
    print("start", os.environ.get("GLIBC_TUNABLES", "-"), sys.argv[1:], flush=True)
    from glore_jax.cpu_malloc import reexec_with_malloc_tunables
    reexec_with_malloc_tunables()
    print("running", os.environ.get("GLIBC_TUNABLES", "-"), flush=True)
""")


def _run(tmp_path, **env_changes):
  script = tmp_path / "script.py"
  script.write_text(SCRIPT)
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "GLORE_JAX_MALLOC")}
  env.update(
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.path.dirname(os.path.dirname(cpu_malloc.__file__)),
    **env_changes,
  )
  out = subprocess.run(
    [sys.executable, "-u", str(script), "--flag", "x y"],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert out.returncode == 0, out.stderr
  return out.stdout.splitlines()


@pytest.mark.skipif(not GLIBC_LINUX, reason="the tunables are glibc's (Linux)")
def test_restarts_once_with_the_same_arguments(tmp_path):
  lines = _run(tmp_path)
  assert lines == [
    "start - ['--flag', 'x y']",
    f"start {cpu_malloc.TUNABLES} ['--flag', 'x y']",
    f"running {cpu_malloc.TUNABLES}",
  ]


def test_opt_out_runs_unchanged(tmp_path):
  assert _run(tmp_path, GLORE_JAX_MALLOC="0") == ["start - ['--flag', 'x y']", "running -"]
