"""Keeping the processes of a multi-host run in step."""

from __future__ import annotations

import jax


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier called `name` (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
