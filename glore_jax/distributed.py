"""Multi-host start-up: one process per host, joined through `jax.distributed`.

Three ways a run becomes one of several processes:
  * explicit settings (`config.distributed.coordinator_address/num_processes/process_id`), e.g.
    several CPU processes on one machine, or a cluster without auto-detection;
  * `GLORE_MULTIHOST=1` in the environment (set by launch/tpu.sh on every worker of a multi-host
    TPU slice): `jax.distributed.initialize()` detects the slice from the TPU VM metadata;
  * GKE-style TPU environments that export `TPU_WORKER_HOSTNAMES` / `TPU_PROCESS_ADDRESSES`.
A single host needs none of them.

After start-up every process sees the global device list: `main` builds one global mesh from it
for training (the parameters and batches are sharded across hosts), while work that each process
does on its own shard of items (sampling, labeling) runs on `local_mesh`, the mesh of this
process's own devices, so processes never wait on each other between shards.
"""

from __future__ import annotations

import logging
import math
import os

import jax

log = logging.getLogger(__name__)
_initialized = False


def _on_tpu_pod() -> bool:
  if os.environ.get("GLORE_MULTIHOST", "").strip().lower() in ("1", "true", "yes"):
    return True
  # GKE TPU workers of a multi-host slice export these; a single-host VM has one worker.
  hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts


def initialize(settings) -> None:
  """Joins the cluster when this run is one of several processes; a no-op otherwise.

  Explicit settings (coordinator_address, num_processes, process_id) win; on a multi-host TPU
  slice JAX discovers them itself. Must run before anything touches the devices."""
  global _initialized
  if _initialized:
    return
  if settings.coordinator_address:
    if settings.num_processes < 1 or settings.process_id < 0:
      raise ValueError(
        "config.distributed.coordinator_address is set: also set "
        "config.distributed.num_processes and config.distributed.process_id"
      )
    if settings.process_id >= settings.num_processes:
      raise ValueError(
        f"config.distributed.process_id={settings.process_id} must be < "
        f"num_processes={settings.num_processes}"
      )
    jax.distributed.initialize(
      coordinator_address=settings.coordinator_address,
      num_processes=settings.num_processes,
      process_id=settings.process_id,
    )
  elif _on_tpu_pod():
    jax.distributed.initialize()
  else:
    return
  _initialized = True
  log.info(
    "process %d of %d; %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def local_mesh(mesh, devices=None):
  """The ('data', 'fsdp', 'tensor') mesh of this process's own devices, shaped like `mesh`
  (tensor and fsdp sizes as in `mesh` where the host has room for them, the rest data): for work a
  process does alone, such as sampling its own shards. One process: `mesh` itself. `devices`:
  one host's devices instead of this process's (an ahead-of-time compile for a TPU slice)."""
  if devices is None:
    if jax.process_count() == 1:
      return mesh
    devices = jax.local_devices()
  from glore_jax.model.sharding import make_mesh

  n = len(devices)
  tensor = math.gcd(mesh.shape["tensor"], n)
  fsdp = math.gcd(mesh.shape["fsdp"], n // tensor)
  return make_mesh(n // (tensor * fsdp), fsdp, tensor, devices=devices)
