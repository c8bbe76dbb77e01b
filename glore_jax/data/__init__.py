"""The data layer: problems and sources, exact grading, step-aware tokenization, prompt formats.

Nothing here needs the model; everything downstream trusts it for labels, so it is exact and
loud about malformed input.
"""

from glore_jax.data.grading import (
  answers_match,
  extract_answer,
  format_number,
  normalize_number,
  strip_calculator_marks,
)
from glore_jax.data.prompts import DEFAULT_TEMPLATES, PromptFormat
from glore_jax.data.records import (
  DataError,
  FieldError,
  JsonRecord,
  Problem,
  RecordList,
  Solution,
  read_jsonl,
  write_jsonl,
)
from glore_jax.data.sources import (
  SOURCES,
  load_gsm8k_jsonl,
  load_problems,
  load_svamp,
  load_tfds_gsm8k,
  problems_from_gsm8k_records,
  register_source,
)
from glore_jax.data.steps import (
  EncodedSteps,
  PromptTooLongError,
  StepBoundaryError,
  encode_steps,
  join_steps,
  split_steps,
  step_ends_from_tokens,
)
from glore_jax.data.synthetic import SyntheticConfig, make_split

# The tokenizer helpers import transformers (seconds); load them only when first used.
_LAZY = {"load_tokenizer", "add_special_token", "embedded_tokenizer"}


def __getattr__(name: str):
  if name in _LAZY:
    from glore_jax.data import tokenizer

    return getattr(tokenizer, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
  "DEFAULT_TEMPLATES",
  "SOURCES",
  "DataError",
  "EncodedSteps",
  "FieldError",
  "JsonRecord",
  "Problem",
  "PromptFormat",
  "PromptTooLongError",
  "RecordList",
  "Solution",
  "StepBoundaryError",
  "SyntheticConfig",
  "add_special_token",
  "answers_match",
  "embedded_tokenizer",
  "encode_steps",
  "extract_answer",
  "format_number",
  "join_steps",
  "load_gsm8k_jsonl",
  "load_problems",
  "load_svamp",
  "load_tfds_gsm8k",
  "load_tokenizer",
  "make_split",
  "normalize_number",
  "problems_from_gsm8k_records",
  "read_jsonl",
  "register_source",
  "split_steps",
  "step_ends_from_tokens",
  "strip_calculator_marks",
  "write_jsonl",
]
