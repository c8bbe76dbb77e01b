"""Measures this machine's roofline in the same run as a benchmark: dense matmul FLOP/s (XLA,
fp32, the shapes a small Llama's big matmuls have) and memory bandwidth (a streaming reduction
over an array far larger than the caches). Both are medians over repeats."""

from __future__ import annotations

import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_seconds(fn, *args, repeats: int = 7) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_flops(m: int = 1024, k: int = 1536, n: int = 1536, dtype=jnp.float32) -> float:
  """Sustained FLOP/s of one jitted [m,k]@[k,n] matmul (2*m*k*n FLOPs)."""
  a = jax.random.normal(jax.random.key(0), (m, k), dtype)
  b = jax.random.normal(jax.random.key(1), (k, n), dtype)
  seconds = _median_seconds(jax.jit(jnp.matmul), a, b)
  return 2.0 * m * k * n / seconds


def matmul_flops_by_shape(
  shapes=((1024, 1536, 1536), (32, 576, 1536), (1, 576, 1536)), dtype=jnp.float32
) -> dict[str, float]:
  """FLOP/s per [m,k]x[k,n] shape: the big prefill-like matmul and the small decode-step ones
  (at batch 1 a matmul is a matrix-vector product, bandwidth-bound)."""
  return {f"{m}x{k}x{n}": matmul_flops(m, k, n, dtype) for m, k, n in shapes}


def memory_bandwidth(num_bytes: int = 512 * 2**20, dtype=jnp.float32) -> float:
  """Bytes/s read by a jitted sum over a `num_bytes` array (read once per call)."""
  x = jax.random.normal(jax.random.key(0), (num_bytes // jnp.dtype(dtype).itemsize,), dtype)
  seconds = _median_seconds(jax.jit(jnp.sum), x)
  return num_bytes / seconds


def machine_description() -> str:
  dev = jax.devices()[0]
  import os

  return (
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
    f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}), numpy {np.__version__}"
  )


if __name__ == "__main__":
  print(f"machine: {machine_description()}")
  for shape, flops in matmul_flops_by_shape().items():
    print(f"matmul {shape}: {flops / 1e9:.1f} GFLOP/s")
  print(f"memory: {memory_bandwidth() / 1e9:.1f} GB/s")
