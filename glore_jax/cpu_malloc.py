"""glibc malloc settings that keep XLA:CPU from page-faulting its whole working set on every call.

XLA:CPU takes a program's temporaries as one allocation per call (3.9 GB for one SmolLM2-135M
training step of 2 x 512 tokens) and frees it when the call returns. glibc serves an allocation
that large with a fresh `mmap` and unmaps it on free, so every step touches ~1M new pages again:
about 1.5 s of kernel time per 4 s step on a 2-core machine. With one malloc arena, no `mmap` and
no trimming, freed memory stays in the process and the next call reuses it (measured here: 3.9 ->
3.1 s per step, zero page faults; PyTorch's step in the same process gains too). The cost is
that the process keeps its peak memory until it exits.

glibc reads these settings only at start-up, so `reexec_with_malloc_tunables()` restarts the
running command once with them in `GLIBC_TUNABLES`. It does so only where it helps and is safe:
Linux with glibc, a CPU-only JAX install (no TPU or CUDA plugin, `JAX_PLATFORMS` unset or `cpu`),
and not when `GLORE_JAX_MALLOC=0`. To get the same in a notebook or your own script, start Python
with `GLIBC_TUNABLES` set to `TUNABLES`.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

TUNABLES = (
  "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
  "glibc.malloc.trim_threshold=1152921504606846976"
)  # 2**60: never trim
OPT_OUT = "GLORE_JAX_MALLOC"
_ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin")


def tunables_active(env: dict[str, str] | None = None) -> bool:
  """Whether GLIBC_TUNABLES in `env` (default: os.environ) already holds `TUNABLES`."""
  env = os.environ if env is None else env
  return TUNABLES in env.get("GLIBC_TUNABLES", "")


def should_reexec(env: dict[str, str] | None = None) -> bool:
  """True when this process runs XLA:CPU under glibc without the tunables and may restart."""
  env = os.environ if env is None else env
  if env.get(OPT_OUT, "1") == "0" or tunables_active(env):
    return False
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return False
  platforms = env.get("JAX_PLATFORMS", "")
  if platforms and set(platforms.split(",")) != {"cpu"}:
    return False
  # no JAX_PLATFORMS: JAX picks an accelerator when its plugin is installed (libtpu alone, as
  # the tpu-aot extra installs it to compile for TPU on any machine, needs TPU chips too)
  return bool(platforms) or not any(
    importlib.util.find_spec(m) and (m != "libtpu" or _tpu_chips_present())
    for m in _ACCELERATOR_MODULES
  )


def _tpu_chips_present() -> bool:
  """TPU VM device nodes: /dev/accel* (v2-v4, v5p) or /dev/vfio/<n> (v5e, v6e)."""
  import glob

  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def environment_with_tunables(env: dict[str, str] | None = None) -> dict[str, str]:
  """A copy of `env` (default: os.environ) with `TUNABLES` appended to GLIBC_TUNABLES."""
  env = dict(os.environ if env is None else env)
  existing = env.get("GLIBC_TUNABLES", "")
  env["GLIBC_TUNABLES"] = f"{existing}:{TUNABLES}" if existing else TUNABLES
  return env


def reexec_with_malloc_tunables() -> None:
  """Restarts this command (same interpreter, flags and arguments) with `TUNABLES` set, when
  `should_reexec()`; returns without doing anything otherwise. Call it first thing in `main`,
  before JAX or any thread starts."""
  if not should_reexec():
    return
  argv = [sys.executable, *sys.orig_argv[1:]]
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, environment_with_tunables())
