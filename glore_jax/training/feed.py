"""Feeding batches: the data from a position on (resumable, epochs reshuffled), and one host
batch as device arrays split into micro-batches and sharded over the mesh."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from glore_jax.model.sharding import BATCH, fit_spec


def _is_sequence(x) -> bool:
  return (
    hasattr(x, "__len__") and hasattr(x, "__getitem__") and not isinstance(x, (Mapping, str, bytes))
  )


def iterate_from(
  source: Iterable[Mapping], position: int, *, shuffle: bool, seed: int
) -> Iterator[Mapping]:
  """Batches from data position `position` on (position = batches consumed so far, over epochs).

  A sequence is indexed (a new seeded order per epoch when `shuffle`), so resuming is O(1); any
  other iterable is replayed and the first `position` batches skipped (it must then yield the
  same batches each time). A re-iterable starts a new epoch when exhausted; a one-shot iterator
  ends the run.

  Args:
    source: a sequence of batches, a re-iterable, or a one-shot iterator.
    position: how many batches earlier steps consumed.
    shuffle: a sequence only: a new order every epoch, seeded by (seed, epoch).
    seed: the shuffle's seed.
  """
  if _is_sequence(source):
    n = len(source)
    if n == 0:
      raise ValueError("train_batches is empty")
    while True:
      epoch, index = divmod(position, n)
      order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else None
      yield source[int(order[index]) if shuffle else index]
      position += 1
  skipped = 0
  while True:
    iterator = iter(source)
    one_shot = iterator is source
    produced = False
    for batch in iterator:
      produced = True
      if skipped < position:
        skipped += 1
        continue
      yield batch
    if one_shot or not produced:
      return


def device_batch(
  batch: Mapping[str, np.ndarray], keys: Iterable[str], accum: int, mesh: Mesh
) -> dict[str, jax.Array]:
  """`batch[key]` for each key as a device array [accum, rows / accum, ...], rows sharded over
  (data, fsdp) where they divide.

  Args:
    batch: a host batch (format in `glore_jax.training.batch`).
    keys: the keys to send; each must be present.
    accum: micro-batches per step; the row count must divide by it.
    mesh: the mesh the arrays are placed on.
  """
  out = {}
  for key in keys:
    if key not in batch:
      raise KeyError(f"batch has no {key!r} (has {sorted(batch)}); see glore_jax.training.batch")
    x = np.asarray(batch[key])
    if x.shape[0] % accum:
      raise ValueError(
        f"batch of {x.shape[0]} rows does not split into grad_accum={accum} micro-batches"
      )
    x = x.reshape((accum, x.shape[0] // accum) + x.shape[1:])
    out[key] = jax.device_put(x, NamedSharding(mesh, fit_spec(P(None, BATCH), x.shape, mesh)))
  return out
