"""Validates a stage config before any compute; every error names the offending key."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from typing import Any

import ml_collections
from etils import epath

from glore_jax.config_keys import KEYS, LABELINGS, SEARCH_STRATEGIES, SOURCES, STAGES
from glore_jax.errors import ConfigError

# the stage and choice lists and ConfigError are re-exported: callers import them from here
__all__ = [
  "LABELINGS",
  "SEARCH_STRATEGIES",
  "SOURCES",
  "STAGES",
  "ConfigError",
  "context_length",
  "stage_list",
  "validate",
]


def _get(config, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError):
      raise ConfigError(
        f"config.{dotted} is missing (configs should start from configs/base.py)"
      ) from None
  return node


def _check(config, key: str, ok: Callable[[Any], bool], expected: str) -> None:
  value = _get(config, key)
  try:
    good = ok(value)
  except TypeError:
    good = False
  if not good:
    raise ConfigError(f"config.{key}={value!r}: expected {expected}")


def stage_list(config: ml_collections.ConfigDict) -> list[str]:
  """The stages of `config.stages` (a comma-separated string, or a list), in order.

  Args:
    config: a stage config.
  """
  stages = config.stages
  if isinstance(stages, str):
    stages = [s.strip() for s in stages.split(",") if s.strip()]
  return list(stages)


def _check_keys(config) -> None:
  """Every key is one of `config_keys.KEYS` and its value passes the key's rule (type, range,
  choices); a key the registry lacks (a typo in a config file) is an error too."""
  from glore_jax.fingerprint import flatten

  for key in flatten(config):
    if key not in KEYS:
      close = difflib.get_close_matches(key, list(KEYS), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(
        f"config.{key}: unknown key{hint}; every key, its default and doc: "
        "glore_jax/config_keys.py, or --describe"
      )
  for key in KEYS.values():
    _check(config, key.name, key.rule.ok, key.rule.expected)


def context_length(config: ml_collections.ConfigDict) -> int:
  """Positions the policy has: model.checkpoint's config.json, else model.max_position_embeddings.

  Args:
    config: a stage config.
  """
  checkpoint = config.model.checkpoint
  if not checkpoint:
    return config.model.max_position_embeddings
  from glore_jax.model.config import LlamaConfig

  path = epath.Path(checkpoint) / "config.json"
  try:
    return LlamaConfig.from_hf(json.loads(path.read_text())).max_position_embeddings
  except json.JSONDecodeError as e:
    raise ConfigError(
      f"config.model.checkpoint: {path} is not valid JSON ({e.msg} at line {e.lineno})"
    ) from None
  except (ValueError, TypeError, KeyError) as e:
    raise ConfigError(f"config.model.checkpoint: {path}: {e}") from None


def _check_context(config) -> None:
  """Every sequence a stage builds fits the model's positions (the prompt needs room too)."""
  context = context_length(config)
  where = (
    f"config.model.checkpoint's max_position_embeddings={context}"
    if config.model.checkpoint
    else f"config.model.max_position_embeddings={context}"
  )
  need = {
    "data.max_length": config.data.max_length,
    "refine.max_length": config.refine.max_length,
    # a generation needs its prompt (at least one token) beside its new tokens
    "sample.max_new_tokens + 1": config.sample.max_new_tokens + 1,
    "evaluate.max_new_tokens + 1": config.evaluate.max_new_tokens + 1,
    # a rollout continues a sampled solution from the prompt
    "sample.max_new_tokens + sorm.max_new_tokens + 1": config.sample.max_new_tokens
    + config.sorm.max_new_tokens
    + 1,
    # a refinement reads the draft, then writes a new solution
    "2 * evaluate.max_new_tokens + 1": 2 * config.evaluate.max_new_tokens + 1,
  }
  for what, n in need.items():
    if n > context:
      raise ConfigError(
        f"{what} = {n} positions exceed {where}: lower it, or use a model with a longer context"
      )


def _check_files(config) -> None:
  """Files the stages will read exist, before any compute."""
  data = config.data
  if data.source == "gsm8k":
    _check(
      config,
      "data.path",
      lambda v: bool(v) and epath.Path(v).exists(),
      "an existing folder with GSM8K train.jsonl and test.jsonl",
    )
    for split in ("train", "test"):
      path = epath.Path(data.path) / f"{split}.jsonl"
      if not path.exists():
        raise ConfigError(
          f"config.data.path={data.path!r}: no {split}.jsonl there (GSM8K's "
          "official JSONL files train.jsonl and test.jsonl are needed)"
        )
      if path.stat().length == 0:
        raise ConfigError(f"config.data.path: {path} is empty")
  checkpoint = config.model.checkpoint
  if checkpoint and not (epath.Path(checkpoint) / "config.json").exists():
    raise ConfigError(f"config.model.checkpoint={checkpoint!r}: no HF config.json there")
  tokenizer = config.tokenizer
  if (
    not checkpoint
    and tokenizer not in ("embedded", "embedded-bpe")
    and not epath.Path(tokenizer).exists()
  ):
    raise ConfigError(
      f"config.tokenizer={tokenizer!r}: expected 'embedded', 'embedded-bpe', or an "
      "existing tokenizer folder / tokenizer.json / .gguf file"
    )


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every key of `config` (types, ranges, cross-key constraints, files to be read);
  raises ConfigError naming the first bad key. Touches no file and runs no computation.

  Args:
    config: a stage config (`glore_jax.defaults.get_config()` with a config file's changes).
  """
  _check_keys(config)  # every key known, of its type, in its range (config_keys.KEYS)
  for stage in stage_list(config):
    if stage not in STAGES:
      raise ConfigError(f"config.stages: unknown stage {stage!r}; stages are {', '.join(STAGES)}")
  if not stage_list(config):
    raise ConfigError("config.stages is empty; name at least one of " + ", ".join(STAGES))
  from glore_jax.fingerprint import recompute_list

  for stage in recompute_list(config):
    if stage not in STAGES:
      raise ConfigError(
        f"config.recompute: unknown stage {stage!r}; stages are {', '.join(STAGES)}"
      )
  from glore_jax.tracking import TrackingError, check

  try:
    check(config)  # a tracker asked for but not installed
  except TrackingError as e:
    raise ConfigError(str(e)) from None
  for key, folder in config.inputs.items():
    if folder and not (epath.Path(folder) / "config.json").exists():
      raise ConfigError(
        f"config.inputs.{key}={folder!r}: expected an HF model folder (config.json)"
      )
  try:
    from glore_jax.data.synthetic import SyntheticConfig

    SyntheticConfig.from_dict(config.data.synthetic.to_dict())
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.data.synthetic: {e}") from None
  try:
    from glore_jax.data.prompts import PromptFormat

    PromptFormat.from_config(config.prompts)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.prompts: {e}") from None
  if config.sorm.labeling == "first_error_search" and not config.sorm.propagate_positive:
    raise ConfigError(
      "config.sorm.labeling='first_error_search' fills labels by monotonicity, "
      "which needs config.sorm.propagate_positive=True"
    )
  _check(
    config,
    "reward.truth_labels",
    lambda v: v is False or (v is True and config.data.source == "synthetic"),
    "False, or True with data.source='synthetic' (the only source with per-step ground truth)",
  )
  for section in ("policy", "reward", "refine"):
    _check(
      config,
      f"{section}.train.batch_size",
      lambda v, s=section: v % _get(config, f"{s}.train.grad_accum") == 0,
      f"a multiple of {section}.train.grad_accum",
    )
  _check_files(config)
  _check_context(config)
