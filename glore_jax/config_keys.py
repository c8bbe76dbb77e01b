"""Every config key, once: its dotted name, default (whose type is the key's type), the values it
accepts (a `Rule`) and a one-line doc.

Derived from this table: the defaults (`glore_jax.defaults.get_config`), the per-key checks of
`glore_jax.config_check.validate` (type, range, choices; cross-key checks stay there), the
trainer's settings (`train_settings`: `*.train.steps` -> `TrainConfig.total_steps`, ...) and
`python -m glore_jax.main --config=... --describe`. A new key is one `Key` row below; a numeric
key cannot be added without its range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from glore_jax.fingerprint import STAGES  # the pipeline's order, defined once

# SVAMP (glore_jax.data.sources.load_svamp) is a test set only: every stage here also needs the
# training split, so it is not a pipeline source.
SOURCES = ("synthetic", "gsm8k", "gsm8k_tfds")
# How the label stage picks the prefixes it rolls out from (glore_jax.stages.label).
LABELINGS = ("exhaustive", "first_error_search")
SEARCH_STRATEGIES = ("bisect", "gallop")  # glore_jax.method.first_error_search.STRATEGIES
DTYPES = ("float32", "bfloat16", "float16")


# ---- rules: what a key accepts, in words, with out-of-range examples -------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a key accepts: `ok(value)`, said in words (`expected`, the end of the error message),
  and values it refuses (`bad`, walked by tests/reliability/test_config_ranges.py)."""

  expected: str
  ok: Callable[[Any], bool]
  bad: tuple = ()


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def int_rule(expected: str, pred: Callable[[int], bool], bad: tuple) -> Rule:
  """An integer (not a bool) for which `pred` holds.

  Args:
    expected: the accepted values in words ("a positive integer").
    pred: the range test, given an int.
    bad: integers outside the range (test examples).
  """
  return Rule(expected, lambda v: _is_int(v) and pred(v), bad)


def num_rule(expected: str, pred: Callable[[float], bool], bad: tuple) -> Rule:
  """A finite int or float (not a bool) for which `pred` holds.

  Args:
    expected: the accepted values in words ("a number > 0").
    pred: the range test, given the number.
    bad: numbers outside the range (test examples).
  """
  return Rule(expected, lambda v: _is_num(v) and pred(v), bad)


def one_of(choices: Iterable[str], expected: str | None = None) -> Rule:
  """One of a few strings.

  Args:
    choices: the accepted strings.
    expected: the words of the error message; default "one of a, b, c".
  """
  choices = tuple(choices)
  return Rule(
    expected or "one of " + ", ".join(choices),
    lambda v: isinstance(v, str) and v in choices,
    ("nope",),
  )


POSITIVE_INT = int_rule("a positive integer", lambda v: v > 0, (0, -1))
NONNEGATIVE_INT = int_rule("an integer >= 0", lambda v: v >= 0, (-1,))
POSITIVE = num_rule("a number > 0", lambda v: v > 0, (0.0, -1.0))
NONNEGATIVE = num_rule("a number >= 0", lambda v: v >= 0, (-0.5,))
EVERY = int_rule("an integer >= 0 (0: only at the end)", lambda v: v >= 0, (-1,))
MESH_SIZE = int_rule(
  "a positive size or -1 (the remaining devices)", lambda v: v >= 1 or v == -1, (0, -2)
)
TEMPERATURE = num_rule("a temperature >= 0 (0: greedy)", lambda v: v >= 0, (-0.1,))
OPEN_PROBABILITY = num_rule("a probability in (0, 1)", lambda v: 0 < v < 1, (0.0, 1.0, 1.5))
# here a number >= 0; the synthetic task's own checks (SyntheticConfig) run in validate
SYNTHETIC = num_rule(
  "a number >= 0 the synthetic task accepts (glore_jax/data/synthetic.py)", lambda v: v >= 0, (-1,)
)
BOOL = Rule("True or False", lambda v: isinstance(v, bool), ("yes", 1))
TEXT = Rule("a string", lambda v: isinstance(v, str), (7,))
STAGE_LIST = Rule(
  "a comma-separated list of stages", lambda v: isinstance(v, (str, list, tuple)), (7,)
)


# ---- keys ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key.

  Attributes:
    name: dotted path in the config ("sorm.num_rollouts").
    default: the value `get_config()` gives it; its type is the key's type.
    doc: one line for `--describe`.
    rule: the values accepted; required for numbers, else `BOOL` or `TEXT` by the default's type.
    train_field: for `*.train.*` keys, the `TrainConfig` field the key sets (None: read elsewhere).
  """

  name: str
  default: bool | int | float | str
  doc: str
  rule: Rule | None = None
  train_field: str | None = None

  def __post_init__(self) -> None:
    if self.rule is None:
      if isinstance(self.default, bool):
        object.__setattr__(self, "rule", BOOL)
      elif isinstance(self.default, str):
        object.__setattr__(self, "rule", TEXT)
      else:
        raise ValueError(f"config key {self.name}: a numeric key needs a Rule (its range)")
    if not self.doc.strip():
      raise ValueError(f"config key {self.name}: no doc")

  @property
  def type(self) -> type:
    return type(self.default)

  @property
  def is_number(self) -> bool:
    return isinstance(self.default, (int, float)) and not isinstance(self.default, bool)


# The `<section>.train.*` keys (policy, reward, refine): the same keys, each section its defaults.
# (leaf, rule, the TrainConfig field it sets or None when read elsewhere, doc)
_TRAIN_ROWS = (
  ("steps", POSITIVE_INT, "total_steps", "optimizer steps (fewer when max_epochs ends first)"),
  ("batch_size", POSITIVE_INT, None, "examples per optimizer step (a multiple of grad_accum)"),
  ("learning_rate", POSITIVE, "learning_rate", "peak AdamW learning rate, cosine decay after"),
  ("warmup_steps", NONNEGATIVE_INT, "warmup_steps", "linear warm-up steps"),
  ("weight_decay", NONNEGATIVE, "weight_decay", "AdamW weight decay"),
  # negative: the fused AdamW would scale the update by it, i.e. gradient ascent
  (
    "grad_clip",
    num_rule("a gradient-norm bound >= 0 (0: no clipping)", lambda v: v >= 0, (-1.0,)),
    "grad_clip",
    "global gradient-norm bound (0: no clipping)",
  ),
  ("grad_accum", POSITIVE_INT, "grad_accum", "micro-batches per step (same result, less memory)"),
  ("checkpoint_every", EVERY, "checkpoint_every", "steps between checkpoints (0: at the end)"),
  ("keep_last", POSITIVE_INT, "keep_last", "checkpoints kept"),
  ("eval_every", EVERY, "eval_every", "steps between held-out evaluations (0: only at the end)"),
  (
    "max_epochs",
    num_rule("a number of epochs >= 0 (0: off)", lambda v: v >= 0, (-1.0,)),
    None,
    "> 0: stop after this many passes over the data, if before `steps`",
  ),
)
# `<section>.train` leaf -> TrainConfig field (batch_size and max_epochs: stages.models.fit)
TRAIN_FIELDS: dict[str, str] = {leaf: field for leaf, _, field, _ in _TRAIN_ROWS if field}
_TRAIN_DEFAULTS = {
  "steps": 600,
  "batch_size": 32,
  "learning_rate": 3e-3,
  "warmup_steps": 50,
  "weight_decay": 0.01,
  "grad_clip": 1.0,
  "grad_accum": 1,
  "checkpoint_every": 200,
  "keep_last": 2,
  "eval_every": 200,
  "max_epochs": 0.0,
}


def _train(section: str, **defaults: Any) -> list[Key]:
  values = {**_TRAIN_DEFAULTS, **defaults}
  return [
    Key(f"{section}.train.{leaf}", values[leaf], doc, rule, field)
    for leaf, rule, field, doc in _TRAIN_ROWS
  ]


SECTIONS: dict[str, str] = {
  "mesh": "devices: sizes of the ('data', 'fsdp', 'tensor') mesh",
  "distributed": "multi-host: left empty, TPU VM workers are detected; set all three for "
  "explicit clusters",
  "model": "the policy model: a preset trained from scratch, or an HF Llama folder to fine-tune",
  "inputs": "model folders given from outside (HF folders, local or gs://): each replaces the "
  "work directory's own output of that stage, which then is not trained",
  "tracking": "optional trackers fed by the trainer's metrics (glore_jax/tracking.py)",
  "data": "problems: the embedded synthetic task, GSM8K JSONL files, or GSM8K from TFDS",
  "data.synthetic": "the embedded synthetic arithmetic task (glore_jax/data/synthetic.py)",
  "prompts": "prompt templates (glore_jax/data/prompts.py)",
  "policy": "stage policy: SFT of the student",
  "sample": "stage sample: N policy samples per training question, graded (ORM data)",
  "sorm": "stage label: K rollouts per step prefix of every sample (SORM labels)",
  "reward": "stages train_orm and train_sorm: the value-head reward models",
  "refine": "stages refine_data, train_global and train_local: the refiners",
  "evaluate": "stage evaluate: drafts, where to refine, refinements, reranking, tables",
}

_ALL: list[Key] = [
  Key(
    "stages",
    ",".join(STAGES),
    "comma-separated stages, run in this order; each skips work already finished in the workdir",
    STAGE_LIST,
  ),
  Key(
    "recompute",
    "",
    "comma-separated stages whose stale or damaged outputs may be discarded "
    "and computed again (else they stop the run)",
    STAGE_LIST,
  ),
  Key("seed", 0, "seed of model initialisation, data order and sampling", NONNEGATIVE_INT),
  Key("mesh.data", -1, "data-parallel axis size (-1: the remaining devices)", MESH_SIZE),
  Key(
    "mesh.fsdp", 1, "fully sharded data-parallel axis size (-1: the remaining devices)", MESH_SIZE
  ),
  Key("mesh.tensor", 1, "tensor-parallel axis size (-1: the remaining devices)", MESH_SIZE),
  Key("distributed.coordinator_address", "", "host:port of process 0 ('': detected)"),
  Key(
    "distributed.num_processes",
    0,
    "processes in the cluster (0: detected)",
    int_rule("an integer >= 0 (0: detected)", lambda v: v >= 0, (-1,)),
  ),
  Key(
    "distributed.process_id",
    -1,
    "this process's index (-1: detected)",
    int_rule("-1 (detected) or a process index >= 0", lambda v: v >= -1, (-2,)),
  ),
  Key(
    "model.checkpoint",
    "",
    "HF folder (config.json + safetensors) to fine-tune; '': `preset` from scratch",
  ),
  Key("model.preset", "tiny", "architecture preset (glore_jax.model.config.PRESETS)"),
  Key("model.hidden_size", 128, "width, from scratch", POSITIVE_INT),
  Key("model.intermediate_size", 384, "MLP width, from scratch", POSITIVE_INT),
  Key("model.num_layers", 4, "transformer blocks, from scratch", POSITIVE_INT),
  Key("model.num_heads", 4, "query heads, from scratch", POSITIVE_INT),
  Key(
    "model.num_kv_heads", 2, "key/value heads (grouped-query attention), from scratch", POSITIVE_INT
  ),
  Key("model.max_position_embeddings", 512, "context length in tokens, from scratch", POSITIVE_INT),
  Key(
    "model.dtype", "float32", "compute dtype", one_of(DTYPES, "'float32', 'bfloat16' or 'float16'")
  ),
  Key(
    "model.param_dtype",
    "float32",
    "dtype of the stored weights",
    one_of(DTYPES, "'float32', 'bfloat16' or 'float16'"),
  ),
  Key("model.remat", False, "recompute activations in the backward pass (less memory)"),
  Key(
    "inputs.policy",
    "",
    "HF folder replacing the policy stage's output (and model.checkpoint's SFT)",
  ),
  Key("inputs.orm", "", "HF folder replacing the train_orm stage's output"),
  Key("inputs.sorm", "", "HF folder replacing the train_sorm stage's output"),
  Key("inputs.refiner_global", "", "HF folder replacing the train_global stage's output"),
  Key("inputs.refiner_local", "", "HF folder replacing the train_local stage's output"),
  Key("tracking.wandb", False, "also send training metrics to Weights & Biases (the wandb extra)"),
  Key("tracking.wandb_project", "glore-jax", "W&B project"),
  Key("tracking.wandb_entity", "", "W&B entity ('': your default)"),
  Key("tracking.wandb_group", "", "W&B group ('': none)"),
  Key(
    "tokenizer",
    "embedded-bpe",
    "'embedded-bpe' (BPE trained on the synthetic task), "
    "'embedded' (characters), or a tokenizer folder / file; ignored with model.checkpoint",
  ),
  Key("data.source", "synthetic", "where problems come from", one_of(SOURCES)),
  Key("data.path", "", "gsm8k: folder with train.jsonl and test.jsonl; gsm8k_tfds: TFDS data_dir"),
  Key("data.train_size", 2000, "training problems (at most)", POSITIVE_INT),
  Key("data.test_size", 200, "test problems (at most)", POSITIVE_INT),
  Key(
    "data.on_error",
    "raise",
    "a bad data record: 'raise', or 'skip' (counted, logged)",
    one_of(("raise", "skip"), "'raise' or 'skip'"),
  ),
  Key("data.synthetic.min_steps", 2, "fewest reasoning steps of a problem", SYNTHETIC),
  Key("data.synthetic.max_steps", 4, "most reasoning steps of a problem", SYNTHETIC),
  Key("data.synthetic.max_operand", 30, "largest operand", SYNTHETIC),
  Key("data.synthetic.max_multiplier", 9, "largest multiplier", SYNTHETIC),
  Key("data.synthetic.max_value", 999, "largest intermediate value", SYNTHETIC),
  Key("data.synthetic.distractors", 0, "irrelevant facts per question", SYNTHETIC),
  Key(
    "data.max_length",
    256,
    "tokens of prompt + solution; longer examples drop whole trailing steps",
    POSITIVE_INT,
  ),
  Key(
    "data.bucket_multiple",
    0,
    "pad training batches to a multiple of this (0: powers of two)",
    int_rule("an integer >= 0 (0: powers of two)", lambda v: v >= 0, (-1,)),
  ),
  Key("prompts.policy", "Question: {question}\nAnswer:\n", "policy prompt template"),
  Key("prompts.reward", "Question: {question}\nAnswer:\n", "reward-model prompt template"),
  Key(
    "prompts.global_refine",
    "Question: {question}\nDraft:\n{draft}\nImproved answer:\n",
    "global refiner prompt template",
  ),
  Key(
    "prompts.local_refine",
    "Question: {question}\nDraft:\n{draft}\nImproved answer from {marker}:\n",
    "local refiner prompt template",
  ),
  Key("prompts.marker", "[BAD]", "marks the first wrong step for the local refiner"),
  Key(
    "prompts.marker_as_token",
    True,
    "add the marker to the tokenizer as one token (grows the embedding)",
  ),
  *_train("policy"),
  Key("sample.num_samples", 4, "samples per training question", POSITIVE_INT),
  Key("sample.temperature", 0.8, "sampling temperature", TEMPERATURE),
  Key(
    "sample.top_k",
    0,
    "keep the k likeliest tokens (0: off)",
    int_rule("an integer >= 0 (0: off)", lambda v: v >= 0, (-1,)),
  ),
  Key(
    "sample.top_p",
    1.0,
    "nucleus sampling mass (1: off)",
    num_rule("a probability in (0, 1] (1: off)", lambda v: 0 < v <= 1, (0.0, 1.5, -0.1)),
  ),
  Key("sample.max_new_tokens", 160, "tokens generated per sample", POSITIVE_INT),
  Key("sample.batch_size", 256, "decode rows per batch (per host)", POSITIVE_INT),
  Key("sample.num_questions", 500, "training questions sampled", POSITIVE_INT),
  Key("sample.shard_size", 100, "questions per saved shard", POSITIVE_INT),
  Key("sorm.num_rollouts", 4, "rollouts K per step prefix", POSITIVE_INT),
  Key("sorm.temperature", 0.8, "rollout temperature", TEMPERATURE),
  Key("sorm.max_new_tokens", 160, "tokens generated per rollout", POSITIVE_INT),
  Key("sorm.batch_size", 256, "decode rows per batch (per host)", POSITIVE_INT),
  Key("sorm.shard_size", 25, "solutions per saved shard", POSITIVE_INT),
  Key(
    "sorm.consistency",
    True,
    "a prefix whose rollouts reach the draft's own correct answer counts as correct",
  ),
  Key("sorm.propagate_positive", True, "a positive step makes every earlier step positive"),
  Key("sorm.balance", True, "balance positive and negative steps for SORM training"),
  Key(
    "sorm.labeling",
    "exhaustive",
    "'exhaustive': K rollouts from every prefix; "
    "'first_error_search': only from prefixes a search for the first negative one picks",
    one_of(LABELINGS),
  ),
  Key(
    "sorm.search_strategy",
    "bisect",
    "first_error_search: 'bisect', or 'gallop' from prefix 0",
    one_of(SEARCH_STRATEGIES),
  ),
  *_train("reward", steps=300, learning_rate=1e-3, warmup_steps=30, max_epochs=3.0),
  Key("reward.train_backbone", True, "train the whole model (False: the value head alone)"),
  Key(
    "reward.orm_rollouts",
    False,
    "also train the ORM on the label stage's rollouts (prefix + continuation)",
  ),
  Key(
    "reward.truth_labels",
    False,
    "diagnostic (synthetic task only): SORM trained on ground-truth step labels",
  ),
  Key(
    "reward.targets",
    "hard",
    "value targets: 'hard' (0/1), or 'soft' (fraction of rollouts that succeeded)",
    one_of(("hard", "soft"), "'hard' or 'soft'"),
  ),
  *_train("refine", steps=300, learning_rate=1e-3, warmup_steps=30, max_epochs=4.0),
  Key("refine.max_pairs_per_question", 2, "refinement pairs kept per question", POSITIVE_INT),
  Key(
    "refine.correct_draft_pairs",
    0,
    "> 0: also train the global refiner on right -> right pairs (keeps right drafts)",
    NONNEGATIVE_INT,
  ),
  Key("refine.max_length", 384, "tokens of question + draft + target", POSITIVE_INT),
  Key("evaluate.num_questions", 200, "test questions evaluated", POSITIVE_INT),
  Key(
    "evaluate.threshold",
    0.5,
    "ORM gate: refine only drafts the ORM scores below this",
    OPEN_PROBABILITY,
  ),
  Key(
    "evaluate.where_threshold",
    0.5,
    "SORM: the first step scored below this is where to refine",
    OPEN_PROBABILITY,
  ),
  Key(
    "evaluate.tune_where_threshold",
    False,
    "choose where_threshold on held-out training questions' rollout labels",
  ),
  Key(
    "evaluate.keep_confident_answer",
    False,
    "don't refine when only the answer line is flagged and the ORM trusts the draft",
  ),
  Key(
    "evaluate.rollout_labels",
    True,
    "K rollouts per prefix of test solutions, for the step-level table",
  ),
  Key("evaluate.best_of", 3, "policy samples per question for the reranking rows", POSITIVE_INT),
  Key("evaluate.temperature", 0.8, "temperature of those samples", TEMPERATURE),
  Key(
    "evaluate.max_new_tokens", 160, "tokens generated per draft, sample or refinement", POSITIVE_INT
  ),
  Key("evaluate.batch_size", 256, "decode rows per batch (per host)", POSITIVE_INT),
  Key(
    "evaluate.bootstrap_resamples",
    1000,
    "bootstrap resamples of the confidence intervals",
    POSITIVE_INT,
  ),
  Key(
    "evaluate.heldout_fraction",
    0.2,
    "training questions held out (reward-model eval, where_threshold tuning)",
    num_rule("a fraction in [0, 1)", lambda v: 0 <= v < 1, (1.0, -0.1)),
  ),
]

KEYS: dict[str, Key] = {key.name: key for key in _ALL}
if len(KEYS) != len(_ALL):
  raise ValueError("a config key is listed twice in glore_jax/config_keys.py")


def rule_for(name: str) -> Rule:
  """The rule of a dotted key.

  Args:
    name: a key of `KEYS` ("sample.top_p").
  """
  return KEYS[name].rule


def train_settings(train: Mapping[str, Any]) -> dict[str, Any]:
  """{TrainConfig field: value} of one `<section>.train` config node, by `TRAIN_FIELDS`
  (`steps` -> `total_steps`, ...).

  Args:
    train: a `policy.train`, `reward.train` or `refine.train` node (ConfigDict or dict).
  """
  return {field: train[leaf] for leaf, field in TRAIN_FIELDS.items()}


def _text(value: Any) -> str:
  return repr(value) if isinstance(value, str) else str(value)


def describe(values: Mapping[str, Any]) -> str:
  """A table of every key: name, type, value as configured (`*`: not the default), default, doc;
  keys of `values` that the registry lacks are listed at the end as unknown.

  Args:
    values: {dotted key: value}, e.g. `glore_jax.fingerprint.flatten(config)`.
  """
  rows, headed = [], set()
  for key in KEYS.values():
    parts = key.name.split(".")
    for n in range(1, len(parts)):
      section = ".".join(parts[:n])
      if section in SECTIONS and section not in headed:
        headed.add(section)
        rows += [("", "", "", "", ""), (f"[{section}]", "", "", "", SECTIONS[section])]
    value = values.get(key.name, "<missing>")
    changed = "*" if value != key.default or type(value) is not type(key.default) else " "
    rows.append((key.name, key.type.__name__, changed + _text(value), _text(key.default), key.doc))
  unknown = sorted(set(values) - set(KEYS))
  if unknown:
    rows.append(("", "", "", "", ""))
    rows += [
      (
        name,
        type(values[name]).__name__,
        " " + _text(values[name]),
        "-",
        "UNKNOWN: not a config key (validation refuses it)",
      )
      for name in unknown
    ]
  widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((34, 5, 24, 24))]
  header = ("key", "type", " value", "default", "doc")
  lines = []
  for row in (header, *rows):
    cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[4]]
    lines.append("  ".join(cells).rstrip())
  lines.append("(* marks a value that differs from the default)")
  return "\n".join(lines)
