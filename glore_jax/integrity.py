"""Checks that what a stage reads is what was written: model folders (a manifest of file sizes,
sha256 and tensor counts), weights (finite), train-state checkpoints (per-leaf checksums).

Errors name the file and say how to recover; they are `CorruptOutputError`s (exit code 3).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from glore_jax.errors import CorruptOutputError

MODEL_MANIFEST = "glore_manifest.json"
_VERIFIED: dict[tuple, bool] = {}  # folders verified by this process: (path, manifest mtime)


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _tensor_count(path: Path) -> int | None:
  if path.suffix != ".safetensors":
    return None
  from safetensors import safe_open

  with safe_open(str(path), framework="numpy") as f:
    return len(list(f.keys()))


def write_model_manifest(folder: str | os.PathLike, **extra: Any) -> dict:
  """Writes `glore_manifest.json` into a finished model folder: every file's size and sha256,
  and the tensor count of each safetensors file. `extra` (e.g. the fingerprint) is stored too.

  Args:
    folder: the finished model folder.
    **extra: JSON-ready fields stored in the manifest too.

  Returns:
    The manifest written.
  """
  folder = Path(folder)
  files = {}
  for path in sorted(folder.rglob("*")):
    if path.is_file() and path.name != MODEL_MANIFEST:
      entry = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
      count = _tensor_count(path)
      if count is not None:
        entry["tensors"] = count
      files[path.relative_to(folder).as_posix()] = entry
  manifest = {"files": files, **extra}
  (folder / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
  return manifest


def verify_model_folder(folder: str | os.PathLike, *, stage: str | None = None) -> None:
  """Checks every file of a model folder against its manifest (size, then sha256); raises
  CorruptOutputError naming the first file that differs. Verified once per process.

  Args:
    folder: the model folder.
    stage: the stage that wrote it (named in the error's fix); None: not named.

  Raises:
    CorruptOutputError: the manifest is missing or unreadable, or a file differs from it.
  """
  folder = Path(folder)
  manifest_path = folder / MODEL_MANIFEST
  fix = (
    f"rerun with --config.recompute={stage} to train it again" if stage else "recreate the folder"
  )
  if not manifest_path.exists():
    raise CorruptOutputError(
      f"{folder}: no {MODEL_MANIFEST} (file sizes and checksums); the "
      f"model folder is incomplete or was not written by glore-jax: {fix}"
    )
  key = (str(folder.resolve()), manifest_path.stat().st_mtime_ns)
  if _VERIFIED.get(key):
    return
  try:
    files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    expected = {name: (int(e["bytes"]), str(e["sha256"])) for name, e in files.items()}
  except (ValueError, KeyError, TypeError) as e:
    raise CorruptOutputError(f"{manifest_path}: unreadable ({e}); {fix}") from None
  for name, (size, digest) in sorted(expected.items()):
    path = folder / name
    if not path.is_file():
      raise CorruptOutputError(f"{path}: missing from the model folder; {fix}")
    have = path.stat().st_size
    if have != size:
      raise CorruptOutputError(
        f"{path}: {have} bytes, the manifest says {size} (truncated or replaced); {fix}"
      )
    if _sha256(path) != digest:
      raise CorruptOutputError(
        f"{path}: checksum differs from the manifest (the file is damaged or was edited); {fix}"
      )
  _VERIFIED[key] = True


def check_finite(array: np.ndarray, what: str) -> None:
  """Raises CorruptOutputError when a float array holds NaN or Inf (`what` names it).

  Args:
    array: the array to check (non-float arrays pass).
    what: its name in the error.

  Raises:
    CorruptOutputError: the array holds NaN or Inf.
  """
  if array.dtype.kind not in "fc" and "float" not in str(array.dtype):
    return
  finite = np.isfinite(array)
  if not finite.all():
    bad = int(array.size - np.count_nonzero(finite))
    raise CorruptOutputError(
      f"{what}: {bad} of {array.size} values are NaN or Inf; the weights "
      "are damaged (or were saved from a diverged run)"
    )


# ---- train-state checkpoints ------------------------------------------------------------------


def tree_checksums(tree: Any) -> list[int]:
  """One uint32 per leaf: the sum of the leaf's raw bits, modulo 2**32. Exact whatever the
  sharding or the order of reduction, and any flipped bit changes it. Computed on device."""
  import jax

  leaves = jax.tree.leaves(tree)
  return [int(x) for x in jax.device_get(_bit_sums(leaves))]


def _bit_sums(leaves):
  import jax
  import jax.numpy as jnp

  def one(x):
    x = jnp.asarray(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
      return jnp.sum(x.astype(jnp.uint32), dtype=jnp.uint32)
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, width) if x.dtype != width else x
    return jnp.sum(bits.astype(jnp.uint32), dtype=jnp.uint32)

  return jax.jit(lambda ls: [one(x) for x in ls])(leaves)


def verify_checkpoint(tree: Any, saved: list[int] | None, where: str) -> None:
  """Compares a restored train state with the checksums saved beside it and checks its floats
  are finite; raises CorruptOutputError naming the checkpoint and the first bad leaf.

  Args:
    tree: the restored train state.
    saved: the per-leaf checksums saved with it (`tree_checksums`); None: finiteness only.
    where: the checkpoint's folder, named in the error.

  Raises:
    CorruptOutputError: a leaf's checksum differs or a float leaf holds NaN or Inf.
  """
  import jax

  leaves = jax.tree_util.tree_leaves_with_path(tree)
  fix = (
    f"delete {where} to resume from the checkpoint before it (or delete the whole "
    "checkpoints folder to start the training over)"
  )
  if saved is not None:
    have = tree_checksums(tree)
    if len(have) != len(saved):
      raise CorruptOutputError(
        f"checkpoint {where}: {len(have)} arrays, saved with {len(saved)}; {fix}"
      )
    for (path, _), a, b in zip(leaves, have, saved):
      if a != b:
        raise CorruptOutputError(
          f"checkpoint {where}: array {jax.tree_util.keystr(path)} does "
          f"not match its saved checksum (damaged); {fix}"
        )
  import jax.numpy as jnp

  for path, x in leaves:
    if jnp.issubdtype(getattr(x, "dtype", np.int32), jnp.floating) and not bool(
      jax.device_get(jnp.isfinite(x).all())
    ):
      raise CorruptOutputError(
        f"checkpoint {where}: array {jax.tree_util.keystr(path)} holds NaN or Inf; {fix}"
      )
