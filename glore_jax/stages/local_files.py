"""Model folders on object stores (gs://, ...) read through a local copy, for readers that need
local files (safetensors, tokenizers)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile

from etils import epath

log = logging.getLogger("glore_jax.stages")


def is_local(path: str | os.PathLike) -> bool:
  """False for gs://, s3:// and other URIs that only etils.epath can open."""
  return "://" not in os.fspath(path)


def local_copy(folder: str | os.PathLike) -> epath.Path:
  """`folder` itself when it is on the local disk; else a copy of it in a local cache folder
  ($GLORE_CACHE, default ~/.cache/glore_jax/models), for readers that need local files
  (safetensors, tokenizers). The copy is refreshed when the remote config.json changes."""
  src = epath.Path(folder)
  if is_local(src):
    return src
  marker = (src / "config.json").read_text() if (src / "config.json").exists() else ""
  key = hashlib.sha256(f"{src}\n{marker}".encode()).hexdigest()[:16]
  root = epath.Path(os.environ.get("GLORE_CACHE", os.path.expanduser("~/.cache/glore_jax")))
  dst = root / "models" / f"{src.name}-{key}"
  if (dst / ".complete").exists():
    return dst
  tmp = epath.Path(tempfile.mkdtemp(prefix=f".{src.name}-", dir=_mkdir(root / "models")))
  for relative, path in files_below(src):
    (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
    path.copy(tmp / relative, overwrite=True)
  (tmp / ".complete").write_text(str(src))
  if dst.exists():
    shutil.rmtree(dst)
  tmp.rename(dst)
  log.info("copied %s to %s", src, dst)
  return dst


def files_below(root: epath.Path) -> list[tuple[str, epath.Path]]:
  """(path relative to root, path) of every file below root (object stores allow no '**')."""
  out = []
  for dirpath, _, files in root.walk():
    for name in files:
      path = epath.Path(dirpath) / name
      out.append((os.path.relpath(os.fspath(path), os.fspath(root)), path))
  return sorted(out)


def _mkdir(path: epath.Path) -> str:
  path.mkdir(parents=True, exist_ok=True)
  return os.fspath(path)
