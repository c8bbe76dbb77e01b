"""One fingerprint per stage output: everything in the config that determines it.

A stage's record is the flat {dotted key: value} of every config key it reads *and* every key
its inputs read, transitively, plus its inputs' fingerprints; its fingerprint is the sha256 of
that record. So a change upstream (say `policy.train.steps`) changes the fingerprint of every
stage below it, and a stored output whose fingerprint differs from the current config's is
stale: the stage refuses it (exit 3), naming the changed keys, unless `--config.recompute`
names the stage.

The table reads whole config sections, so keys added to a section are covered without
touching this file; a new top-level section must be listed in READS or RUN_ONLY (a test
checks that every top-level key of the defaults is classified).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  import ml_collections

# Pipeline order; every stage's inputs come before it.
STAGES = (
  "policy",
  "sample",
  "label",
  "train_orm",
  "train_sorm",
  "refine_data",
  "train_global",
  "train_local",
  "evaluate",
)
# Config sections every stage reads (problems, tokenizer, model numerics, prompt formats).
SHARED = ("seed", "model", "tokenizer", "data", "prompts")
# Top-level keys that choose how and where a run happens, not what it computes.
RUN_ONLY = ("stages", "mesh", "distributed", "recompute", "tracking")
# Keys that a resumed run may change freely: shard and batch sizes of the samplers (their
# randomness is keyed by example, not by batch) and the training loop's bookkeeping.
RESUME_FREE = (
  "sample.batch_size",
  "sample.shard_size",
  "sorm.batch_size",
  "sorm.shard_size",
  "*.train.checkpoint_every",
  "*.train.keep_last",
  "*.train.eval_every",
)


@dataclasses.dataclass(frozen=True)
class StageSpec:
  reads: tuple[str, ...]  # config sections or dotted keys, besides SHARED
  inputs: tuple[str, ...] = ()  # stages whose outputs it reads
  exclude: tuple[str, ...] = ()  # dotted keys (glob patterns) of `reads` it does not use
  # (stage, dotted bool key): an input read only when the key is true
  optional_inputs: tuple[tuple[str, str], ...] = ()


SPECS: dict[str, StageSpec] = {
  "policy": StageSpec(("policy",)),
  # A model folder given in config.inputs replaces a stage's output: whoever reads it reads
  # its path (evaluate reads them all).
  "sample": StageSpec(("sample", "inputs.policy"), ("policy",)),
  "label": StageSpec(("sorm", "inputs.policy"), ("policy", "sample"), exclude=("sorm.balance",)),
  "train_orm": StageSpec(
    ("reward", "evaluate.heldout_fraction", "inputs.policy"),
    ("policy", "sample"),
    optional_inputs=(("label", "reward.orm_rollouts"),),
  ),
  "train_sorm": StageSpec(
    ("reward", "sorm.balance", "evaluate.heldout_fraction", "inputs.policy"), ("policy", "label")
  ),
  "refine_data": StageSpec(("refine", "sorm.consistency"), ("label",), exclude=("refine.train.*",)),
  "train_global": StageSpec(("refine", "inputs.policy"), ("policy", "refine_data")),
  "train_local": StageSpec(("refine", "inputs.policy"), ("policy", "refine_data")),
  "evaluate": StageSpec(
    ("evaluate", "inputs"),
    ("policy", "sample", "label", "train_orm", "train_sorm", "train_global", "train_local"),
  ),
}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
  """{dotted key: leaf} of a ConfigDict / dict (lists stay leaves).

  Args:
    node: a ConfigDict, dict or leaf.
    prefix: prepended to every key (e.g. "data.").
  """
  if hasattr(node, "to_dict"):
    node = node.to_dict()
  if isinstance(node, Mapping):
    out: dict[str, Any] = {}
    for key in sorted(node, key=str):
      out.update(flatten(node[key], f"{prefix}{key}."))
    return out
  if isinstance(node, tuple):
    node = list(node)
  return {prefix.rstrip("."): node}


def _read(config, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _free(key: str, patterns) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def own_keys(config: ml_collections.ConfigDict, stage: str) -> dict[str, Any]:
  """The config keys `stage` itself reads, flat, minus the resume-free ones.

  Args:
    config: the run config.
    stage: a stage name (a key of SPECS).
  """
  spec = SPECS[stage]
  out: dict[str, Any] = {}
  for name in SHARED + spec.reads:
    out.update(flatten(_read(config, name), f"{name}."))
  out = {k: v for k, v in out.items() if not _free(k, RESUME_FREE + spec.exclude)}
  out.update(_file_identities(config, stage))
  return out


def inputs(stage: str, config: ml_collections.ConfigDict | None = None) -> tuple[str, ...]:
  """The stages whose outputs `stage` reads under `config` (None: every one it may read).

  Args:
    stage: a stage name.
    config: the run config (optional inputs count only when enabled); None: all of them.
  """
  spec = SPECS[stage]
  optional = tuple(
    s for s, key in spec.optional_inputs if config is None or bool(_get_or(config, key, False))
  )
  return spec.inputs + optional


def _get_or(config, dotted: str, default: Any) -> Any:
  try:
    return _read(config, dotted)
  except (KeyError, AttributeError):
    return default


def closure(stage: str, config: ml_collections.ConfigDict | None = None) -> list[str]:
  """`stage` and every stage it depends on (under `config`), in pipeline order.

  Args:
    stage: a stage name.
    config: the run config; None: with every optional input.
  """
  seen = {stage}
  todo = [stage]
  while todo:
    for inp in inputs(todo.pop(), config):
      if inp not in seen:
        seen.add(inp)
        todo.append(inp)
  return [s for s in STAGES if s in seen]


def downstream(stage: str) -> list[str]:
  """`stage` and every stage that depends on it, in pipeline order."""
  return [s for s in STAGES if stage in closure(s)]


def record(config: ml_collections.ConfigDict, stage: str) -> dict[str, Any]:
  """What determines `stage`'s output: its keys and its inputs' keys, and its inputs'
  fingerprints. JSON-ready; stored in the output's manifest.

  Args:
    config: the run config.
    stage: a stage name.
  """
  keys: dict[str, Any] = {}
  for s in closure(stage, config):
    keys.update(own_keys(config, s))
  fingerprints = {s: fingerprint(config, s) for s in inputs(stage, config)}
  return {"stage": stage, "keys": dict(sorted(keys.items())), "inputs": fingerprints}


def fingerprint(config: ml_collections.ConfigDict, stage: str) -> str:
  """sha256 of `record(config, stage)` (the same function as `workdir.fingerprint`).

  Args:
    config: the run config.
    stage: a stage name.
  """
  from glore_jax.workdir import fingerprint as of_record

  return of_record(record(config, stage))


def changed_keys(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
  """'key: old -> new' for every key whose value differs between two records.

  Args:
    old: the stored record's keys; None: nothing stored.
    new: the current record's keys.
  """
  old_keys = dict((old or {}).get("keys") or {})
  new_keys = dict(new.get("keys") or {})
  out = []
  for k in sorted(set(old_keys) | set(new_keys)):
    a, b = old_keys.get(k, "<absent>"), new_keys.get(k, "<absent>")
    if a != b:
      out.append(f"{k}: {_short(a)} -> {_short(b)}")
  return out


def _short(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def recompute_list(config: ml_collections.ConfigDict) -> list[str]:
  """The stages named in `config.recompute` ('' or a comma-separated list)."""
  value = config.get("recompute", "") if hasattr(config, "get") else ""
  if isinstance(value, str):
    return [s.strip() for s in value.split(",") if s.strip()]
  return list(value or ())


# ---- contents of input files the config names ----------------------------------------------

_FILE_CACHE: dict[tuple, str] = {}


def _sha256_file(path: str) -> str:
  st = os.stat(path)
  key = (path, st.st_size, st.st_mtime_ns)
  if key not in _FILE_CACHE:
    h = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    _FILE_CACHE[key] = h.hexdigest()
  return _FILE_CACHE[key]


def _file_identities(config, stage: str) -> dict[str, Any]:
  """Content hashes of the GSM8K JSONL files a stage reads, so an edited file at the same
  path does not pass for the old one (only for local files; gs:// paths are named by path)."""
  data = config.data
  if data.source != "gsm8k" or not data.path or "://" in str(data.path):
    return {}
  splits = ("train", "test") if stage == "evaluate" else ("train",)
  out = {}
  for split in splits:
    path = os.path.join(str(data.path), f"{split}.jsonl")
    if os.path.isfile(path):
      out[f"data.path/{split}.jsonl (sha256)"] = _sha256_file(path)
  return out
