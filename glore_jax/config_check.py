"""Validates a stage config before any compute; every error names the offending key."""

from __future__ import annotations

from typing import Any, Callable

from etils import epath

STAGES = ("policy", "sample", "label", "train_orm", "train_sorm", "refine_data", "train_global",
          "train_local", "evaluate")
# SVAMP (glore_jax.data.sources.load_svamp) is a test set only: every stage here also needs the
# training split, so it is not a pipeline source.
SOURCES = ("synthetic", "gsm8k", "gsm8k_tfds")
# How the label stage picks the prefixes it rolls out from (glore_jax.stages.label).
LABELINGS = ("exhaustive", "first_error_search")
SEARCH_STRATEGIES = ("bisect", "gallop")  # glore_jax.method.first_error_search.STRATEGIES


class ConfigError(ValueError):
  """A config key has a value the pipeline cannot use."""


def _get(config, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError):
      raise ConfigError(f"config.{dotted} is missing (configs should start from configs/base.py)") from None
  return node


def _check(config, key: str, ok: Callable[[Any], bool], expected: str) -> None:
  value = _get(config, key)
  try:
    good = ok(value)
  except TypeError:
    good = False
  if not good:
    raise ConfigError(f"config.{key}={value!r}: expected {expected}")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def stage_list(config) -> list[str]:
  stages = config.stages
  if isinstance(stages, str):
    stages = [s.strip() for s in stages.split(",") if s.strip()]
  return list(stages)


def validate(config) -> None:
  positive = lambda v: _is_int(v) and v > 0
  for stage in stage_list(config):
    if stage not in STAGES:
      raise ConfigError(f"config.stages: unknown stage {stage!r}; stages are {', '.join(STAGES)}")
  if not stage_list(config):
    raise ConfigError("config.stages is empty; name at least one of " + ", ".join(STAGES))
  for axis in ("data", "fsdp", "tensor"):
    _check(config, f"mesh.{axis}", lambda v: _is_int(v) and (v >= 1 or v == -1), "a positive size or -1")
  _check(config, "seed", _is_int, "an integer")

  checkpoint = _get(config, "model.checkpoint")
  if checkpoint and not (epath.Path(checkpoint) / "config.json").exists():
    raise ConfigError(f"config.model.checkpoint={checkpoint!r}: no HF config.json there")
  for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
              "max_position_embeddings"):
    _check(config, f"model.{key}", positive, "a positive integer")
  for key in ("dtype", "param_dtype"):
    _check(config, f"model.{key}", lambda v: v in ("float32", "bfloat16", "float16"),
           "'float32', 'bfloat16' or 'float16'")

  _check(config, "data.source", lambda v: v in SOURCES, "one of " + ", ".join(SOURCES))
  if config.data.source == "gsm8k":
    _check(config, "data.path", lambda v: bool(v) and epath.Path(v).exists(),
           "an existing folder with GSM8K train.jsonl and test.jsonl")
  _check(config, "data.on_error", lambda v: v in ("raise", "skip"), "'raise' or 'skip'")
  for key in ("data.train_size", "data.test_size", "data.max_length", "refine.max_length"):
    _check(config, key, positive, "a positive integer")
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

  for section in ("sample", "sorm", "evaluate"):
    _check(config, f"{section}.max_new_tokens", positive, "a positive integer")
    _check(config, f"{section}.batch_size", positive, "a positive integer")
    _check(config, f"{section}.temperature", lambda v: v >= 0, "a temperature >= 0 (0 = greedy)")
  _check(config, "sample.num_samples", positive, "a positive integer (samples per question)")
  _check(config, "sample.num_questions", positive, "a positive integer")
  _check(config, "sorm.num_rollouts", positive, "a positive integer K (rollouts per step prefix)")
  _check(config, "sorm.labeling", lambda v: v in LABELINGS, "one of " + ", ".join(LABELINGS))
  _check(config, "sorm.search_strategy", lambda v: v in SEARCH_STRATEGIES,
         "one of " + ", ".join(SEARCH_STRATEGIES))
  if config.sorm.labeling == "first_error_search" and not config.sorm.propagate_positive:
    raise ConfigError("config.sorm.labeling='first_error_search' fills labels by monotonicity, "
                      "which needs config.sorm.propagate_positive=True")
  for key in ("sample.shard_size", "sorm.shard_size"):
    _check(config, key, positive, "a positive integer")
  _check(config, "reward.targets", lambda v: v in ("hard", "soft"), "'hard' or 'soft'")
  _check(config, "evaluate.threshold", lambda v: 0.0 < v < 1.0, "a probability in (0, 1)")
  _check(config, "reward.orm_rollouts", lambda v: isinstance(v, bool), "True or False")
  _check(config, "reward.truth_labels", lambda v: v is False or (v is True and config.data.source == "synthetic"),
         "False, or True with data.source='synthetic' (the only source with per-step ground truth)")
  _check(config, "refine.correct_draft_pairs", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
  _check(config, "evaluate.where_threshold", lambda v: 0.0 < v < 1.0, "a probability in (0, 1)")
  for key in ("tune_where_threshold", "keep_confident_answer", "rollout_labels"):
    _check(config, f"evaluate.{key}", lambda v: isinstance(v, bool), "True or False")
  _check(config, "evaluate.best_of", positive, "a positive integer")
  _check(config, "evaluate.num_questions", positive, "a positive integer")
  _check(config, "evaluate.heldout_fraction", lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")
  for section in ("policy", "reward", "refine"):
    for key in ("steps", "batch_size", "grad_accum"):
      _check(config, f"{section}.train.{key}", positive, "a positive integer")
    _check(config, f"{section}.train.learning_rate", lambda v: v > 0, "a positive learning rate")
    _check(config, f"{section}.train.warmup_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    _check(config, f"{section}.train.max_epochs", lambda v: v >= 0, "a number of epochs >= 0 (0 = off)")
    _check(config, f"{section}.train.batch_size",
           lambda v, s=section: v % _get(config, f"{s}.train.grad_accum") == 0,
           f"a multiple of {section}.train.grad_accum")
