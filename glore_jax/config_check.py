"""Validates a stage config before any compute; every error names the offending key."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from typing import Any, Callable

from etils import epath

from glore_jax.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here)

STAGES = ("policy", "sample", "label", "train_orm", "train_sorm", "refine_data", "train_global",
          "train_local", "evaluate")
# SVAMP (glore_jax.data.sources.load_svamp) is a test set only: every stage here also needs the
# training split, so it is not a pipeline source.
SOURCES = ("synthetic", "gsm8k", "gsm8k_tfds")
# How the label stage picks the prefixes it rolls out from (glore_jax.stages.label).
LABELINGS = ("exhaustive", "first_error_search")
SEARCH_STRATEGIES = ("bisect", "gallop")  # glore_jax.method.first_error_search.STRATEGIES


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


# ---- per-key rules: one row per key (or glob pattern), first match wins ---------------------


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a numeric key accepts: `ok(value)`, said in words, and out-of-range examples
  (`bad`, walked by tests/reliability/test_config_ranges.py)."""
  expected: str
  ok: Callable[[Any], bool]
  bad: tuple = ()


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_rule(expected: str, pred: Callable[[int], bool], bad: tuple) -> Rule:
  return Rule(expected, lambda v: _is_int(v) and pred(v), bad)


def _num_rule(expected: str, pred: Callable[[float], bool], bad: tuple) -> Rule:
  return Rule(expected, lambda v: _is_num(v) and pred(v), bad)


POSITIVE_INT = _int_rule("a positive integer", lambda v: v > 0, (0, -1))
NONNEGATIVE_INT = _int_rule("an integer >= 0", lambda v: v >= 0, (-1,))
POSITIVE = _num_rule("a number > 0", lambda v: v > 0, (0.0, -1.0))
NONNEGATIVE = _num_rule("a number >= 0", lambda v: v >= 0, (-0.5,))

RULES: dict[str, Rule] = {
    "seed": NONNEGATIVE_INT,
    "mesh.*": _int_rule("a positive size or -1 (the remaining devices)",
                        lambda v: v >= 1 or v == -1, (0, -2)),
    "distributed.num_processes": _int_rule("an integer >= 0 (0: detected)", lambda v: v >= 0, (-1,)),
    "distributed.process_id": _int_rule("-1 (detected) or a process index >= 0",
                                        lambda v: v >= -1, (-2,)),
    "data.bucket_multiple": _int_rule("an integer >= 0 (0: powers of two)", lambda v: v >= 0, (-1,)),
    # here a number >= 0; the synthetic task's own checks (SyntheticConfig) run below
    "data.synthetic.*": _num_rule("a number >= 0 the synthetic task accepts "
                                  "(glore_jax/data/synthetic.py)", lambda v: v >= 0, (-1,)),
    "*.train.learning_rate": POSITIVE,
    "*.train.weight_decay": NONNEGATIVE,
    # negative: the fused AdamW would scale the update by it, i.e. gradient ascent
    "*.train.grad_clip": _num_rule("a gradient-norm bound >= 0 (0: no clipping)",
                                   lambda v: v >= 0, (-1.0,)),
    "*.train.max_epochs": _num_rule("a number of epochs >= 0 (0: off)", lambda v: v >= 0, (-1.0,)),
    "*.train.warmup_steps": NONNEGATIVE_INT,
    "*.train.checkpoint_every": _int_rule("an integer >= 0 (0: only at the end)",
                                          lambda v: v >= 0, (-1,)),
    "*.train.eval_every": _int_rule("an integer >= 0 (0: only at the end)", lambda v: v >= 0, (-1,)),
    "*.train.*": POSITIVE_INT,  # steps, batch_size, grad_accum, keep_last
    "*.temperature": _num_rule("a temperature >= 0 (0: greedy)", lambda v: v >= 0, (-0.1,)),
    "*.top_k": _int_rule("an integer >= 0 (0: off)", lambda v: v >= 0, (-1,)),
    "*.top_p": _num_rule("a probability in (0, 1] (1: off)", lambda v: 0 < v <= 1, (0.0, 1.5, -0.1)),
    "evaluate.threshold": _num_rule("a probability in (0, 1)", lambda v: 0 < v < 1, (0.0, 1.0, 1.5)),
    "evaluate.where_threshold": _num_rule("a probability in (0, 1)", lambda v: 0 < v < 1,
                                          (0.0, 1.0, 1.5)),
    "refine.correct_draft_pairs": NONNEGATIVE_INT,
    "evaluate.heldout_fraction": _num_rule("a fraction in [0, 1)", lambda v: 0 <= v < 1,
                                           (1.0, -0.1)),
    # counts and lengths: samples, rollouts, questions, tokens, layers, batch and shard sizes
    "*.num_*": POSITIVE_INT,
    "*.max_*": POSITIVE_INT,
    "*_size": POSITIVE_INT,
    "evaluate.best_of": POSITIVE_INT,
    "evaluate.bootstrap_resamples": POSITIVE_INT,
    # anything else (a key added later and not listed above): a finite number >= 0
    "*": NONNEGATIVE,
}


def rule_for(key: str) -> Rule:
  """The rule of a dotted numeric key (the first pattern of RULES it matches)."""
  return next(rule for pattern, rule in RULES.items() if fnmatch.fnmatchcase(key, pattern))


def _numeric_leaves(config) -> dict[str, Any]:
  from glore_jax.fingerprint import flatten
  return {k: v for k, v in flatten(config).items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _check_numbers(config) -> None:
  from glore_jax.defaults import get_config
  from glore_jax.fingerprint import flatten
  defaults = _numeric_leaves(get_config())
  for key, value in _numeric_leaves(config).items():
    rule = rule_for(key)
    if not rule.ok(value):
      raise ConfigError(f"config.{key}={value!r}: expected {rule.expected}")
  # a numeric default overridden with a string, list or bool (config files can do that)
  for key, value in flatten(config).items():
    if key in defaults and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
      raise ConfigError(f"config.{key}={value!r}: expected {rule_for(key).expected}")


def context_length(config) -> int:
  """Positions the policy has: model.checkpoint's config.json, else model.max_position_embeddings."""
  checkpoint = config.model.checkpoint
  if not checkpoint:
    return config.model.max_position_embeddings
  from glore_jax.model.config import LlamaConfig
  path = epath.Path(checkpoint) / "config.json"
  try:
    return LlamaConfig.from_hf(json.loads(path.read_text())).max_position_embeddings
  except json.JSONDecodeError as e:
    raise ConfigError(f"config.model.checkpoint: {path} is not valid JSON ({e.msg} at line "
                      f"{e.lineno})") from None
  except (ValueError, TypeError, KeyError) as e:
    raise ConfigError(f"config.model.checkpoint: {path}: {e}") from None


def _check_context(config) -> None:
  """Every sequence a stage builds fits the model's positions (the prompt needs room too)."""
  context = context_length(config)
  where = (f"config.model.checkpoint's max_position_embeddings={context}" if config.model.checkpoint
           else f"config.model.max_position_embeddings={context}")
  need = {
      "data.max_length": config.data.max_length,
      "refine.max_length": config.refine.max_length,
      # a generation needs its prompt (at least one token) beside its new tokens
      "sample.max_new_tokens + 1": config.sample.max_new_tokens + 1,
      "evaluate.max_new_tokens + 1": config.evaluate.max_new_tokens + 1,
      # a rollout continues a sampled solution from the prompt
      "sample.max_new_tokens + sorm.max_new_tokens + 1":
          config.sample.max_new_tokens + config.sorm.max_new_tokens + 1,
      # a refinement reads the draft, then writes a new solution
      "2 * evaluate.max_new_tokens + 1": 2 * config.evaluate.max_new_tokens + 1,
  }
  for what, n in need.items():
    if n > context:
      raise ConfigError(f"{what} = {n} positions exceed {where}: lower it, or use a model with a "
                        "longer context")


def _check_files(config) -> None:
  """Files the stages will read exist, before any compute."""
  data = config.data
  if data.source == "gsm8k":
    _check(config, "data.path", lambda v: bool(v) and epath.Path(v).exists(),
           "an existing folder with GSM8K train.jsonl and test.jsonl")
    for split in ("train", "test"):
      path = epath.Path(data.path) / f"{split}.jsonl"
      if not path.exists():
        raise ConfigError(f"config.data.path={data.path!r}: no {split}.jsonl there (GSM8K's "
                          "official JSONL files train.jsonl and test.jsonl are needed)")
      if path.stat().length == 0:
        raise ConfigError(f"config.data.path: {path} is empty")
  checkpoint = config.model.checkpoint
  if checkpoint and not (epath.Path(checkpoint) / "config.json").exists():
    raise ConfigError(f"config.model.checkpoint={checkpoint!r}: no HF config.json there")
  tokenizer = config.tokenizer
  if not checkpoint and tokenizer not in ("embedded", "embedded-bpe") \
      and not epath.Path(tokenizer).exists():
    raise ConfigError(f"config.tokenizer={tokenizer!r}: expected 'embedded', 'embedded-bpe', or an "
                      "existing tokenizer folder / tokenizer.json / .gguf file")


def validate(config) -> None:
  """Checks every key of `config` (types, ranges, cross-key constraints, files to be read);
  raises ConfigError naming the first bad key. Touches no file and runs no computation."""
  for stage in stage_list(config):
    if stage not in STAGES:
      raise ConfigError(f"config.stages: unknown stage {stage!r}; stages are {', '.join(STAGES)}")
  if not stage_list(config):
    raise ConfigError("config.stages is empty; name at least one of " + ", ".join(STAGES))
  from glore_jax.fingerprint import recompute_list
  for stage in recompute_list(config):
    if stage not in STAGES:
      raise ConfigError(f"config.recompute: unknown stage {stage!r}; stages are "
                        f"{', '.join(STAGES)}")
  _check_numbers(config)
  from glore_jax.tracking import TrackingError, check
  try:
    check(config)  # a tracker asked for but not installed
  except TrackingError as e:
    raise ConfigError(str(e)) from None
  for key, folder in (getattr(config, "inputs", None) or {}).items():
    if folder and not (epath.Path(folder) / "config.json").exists():
      raise ConfigError(f"config.inputs.{key}={folder!r}: expected an HF model folder (config.json)")
  for key in ("dtype", "param_dtype"):
    _check(config, f"model.{key}", lambda v: v in ("float32", "bfloat16", "float16"),
           "'float32', 'bfloat16' or 'float16'")
  _check(config, "data.source", lambda v: v in SOURCES, "one of " + ", ".join(SOURCES))
  _check(config, "data.on_error", lambda v: v in ("raise", "skip"), "'raise' or 'skip'")
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
  _check(config, "sorm.labeling", lambda v: v in LABELINGS, "one of " + ", ".join(LABELINGS))
  _check(config, "sorm.search_strategy", lambda v: v in SEARCH_STRATEGIES,
         "one of " + ", ".join(SEARCH_STRATEGIES))
  if config.sorm.labeling == "first_error_search" and not config.sorm.propagate_positive:
    raise ConfigError("config.sorm.labeling='first_error_search' fills labels by monotonicity, "
                      "which needs config.sorm.propagate_positive=True")
  _check(config, "reward.targets", lambda v: v in ("hard", "soft"), "'hard' or 'soft'")
  _check(config, "reward.orm_rollouts", lambda v: isinstance(v, bool), "True or False")
  _check(config, "reward.truth_labels", lambda v: v is False or (v is True and config.data.source == "synthetic"),
         "False, or True with data.source='synthetic' (the only source with per-step ground truth)")
  for key in ("tune_where_threshold", "keep_confident_answer", "rollout_labels"):
    _check(config, f"evaluate.{key}", lambda v: isinstance(v, bool), "True or False")
  for section in ("policy", "reward", "refine"):
    _check(config, f"{section}.train.batch_size",
           lambda v, s=section: v % _get(config, f"{s}.train.grad_accum") == 0,
           f"a multiple of {section}.train.grad_accum")
  _check_files(config)
  _check_context(config)
