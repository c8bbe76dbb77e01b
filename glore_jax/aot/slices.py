"""TPU slices and their topologies: published per-chip figures (`CHIPS`), the named slices
(`SLICES`), and their abstract devices and meshes for compile-only use (libtpu on the CPU)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  import jax

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures (one JAX device per chip for every kind below)."""

  kind: str
  hbm_bytes: float
  peak_bf16_flops: float  # FLOP/s
  hbm_bytes_per_s: float
  source: str


# Cloud TPU documentation, "system architecture" tables of each generation.
CHIPS = {
  "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, "https://cloud.google.com/tpu/docs/v4"),
  "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
  "v5p": Chip("v5p", 95 * GiB, 459e12, 2765e9, "https://cloud.google.com/tpu/docs/v5p"),
  "v6e": Chip("v6e", 32 * GiB, 918e12, 1640e9, "https://cloud.google.com/tpu/docs/v6e"),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A named slice: its chip, libtpu topology name, chip configuration and chips per host."""

  name: str
  chip: Chip
  topology: str
  chip_config: str
  host_bounds: tuple[int, int, int]

  @property
  def chips(self) -> int:
    return math.prod(int(x) for x in self.topology.split(":")[1].split("x"))

  @property
  def chips_per_host(self) -> int:
    return self.host_bounds[0] * self.host_bounds[1] * self.host_bounds[2]


def _slice(name, kind, topology, chip_config="default", host_bounds=(2, 2, 1)) -> Slice:
  return Slice(name, CHIPS[kind], f"{kind}:{topology}", chip_config, host_bounds)


# v4 and v5p chips have two TensorCores run as one device (megacore): a v4-8 is 4 devices.
SLICES = {
  s.name: s
  for s in [
    _slice("v4-8", "v4", "2x2x1", "megacore"),
    _slice("v4-32", "v4", "2x2x4", "megacore"),
    _slice("v5p-8", "v5p", "2x2x1"),
    _slice("v5p-64", "v5p", "2x4x4"),
    _slice("v5e-8", "v5e", "2x4", host_bounds=(2, 4, 1)),  # one host of 8 chips
    _slice("v5e-256", "v5e", "16x16"),  # 64 hosts of 4 chips
    _slice("v6e-8", "v6e", "2x4", host_bounds=(2, 4, 1)),
  ]
}


def available() -> bool:
  """True when the TPU compiler (the `libtpu` wheel, extra `tpu-aot`) can be loaded."""
  return importlib.util.find_spec("libtpu") is not None


def _compile_only_environment() -> None:
  # a process that only compiles (no TPU backend) need not take libtpu's one-process lock, nor
  # ask the (absent) TPU VM metadata server for its accelerator type and workers
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def get_slice(name: str) -> Slice:
  """The named slice, e.g. 'v5e-8'.

  Raises:
    ValueError: an unknown slice name.
  """
  try:
    return SLICES[name]
  except KeyError:
    raise ValueError(f"unknown TPU slice {name!r}; known: {', '.join(SLICES)}") from None


@functools.cache
def devices(name: str) -> tuple:
  """The abstract TPU devices of slice `name` (compile-only: nothing runs on them)."""
  if not available():
    raise RuntimeError(
      "the TPU compiler is not installed: pip install 'glore-jax[tpu-aot]' "
      "(the libtpu wheel; Linux x86-64 only)"
    )
  _compile_only_environment()
  from jax.experimental import topologies

  s = get_slice(name)
  topo = topologies.get_topology_desc(
    platform="tpu",
    topology_name=s.topology,
    chip_config_name=s.chip_config,
    chips_per_host_bounds=s.host_bounds,
    num_slices=1,
    wrap=(False, False, False),
  )
  return tuple(topo.devices)


def mesh(name: str, data: int = 1, fsdp: int = -1, tensor: int = 1) -> jax.sharding.Mesh:
  """The ('data', 'fsdp', 'tensor') mesh over slice `name`'s devices (default: fsdp over all).

  Args:
    name: a slice name, e.g. 'v5e-8' (see SLICES).
    data: the 'data' axis size.
    fsdp: the 'fsdp' axis size; -1: what the other axes leave.
    tensor: the 'tensor' axis size.
  """
  from glore_jax.model.sharding import make_mesh

  return make_mesh(data, fsdp, tensor, devices=list(devices(name)))


def host_mesh(name: str, global_mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """The mesh one host's sampling stages run on (`distributed.local_mesh`): host 0's devices.

  Args:
    name: the slice's name.
    global_mesh: the slice's mesh (`mesh(name, ...)`); its axes give the local mesh's.
  """
  from glore_jax.distributed import local_mesh

  host0 = [d for d in devices(name) if d.process_index == 0]
  return local_mesh(global_mesh, devices=host0)
