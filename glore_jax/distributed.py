"""Multi-host start-up: one process per host, joined through `jax.distributed`."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
_initialized = False


def _on_tpu_pod() -> bool:
  # TPU VM workers of a multi-host slice export these; a single-host VM has one worker.
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
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
      raise ValueError("config.distributed.coordinator_address is set: also set "
                       "config.distributed.num_processes and config.distributed.process_id")
    jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                               num_processes=settings.num_processes,
                               process_id=settings.process_id)
  elif _on_tpu_pod():
    jax.distributed.initialize()
  else:
    return
  _initialized = True
  log.info("process %d of %d; %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
