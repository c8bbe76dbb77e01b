"""What every stage shares: the work-directory layout, problems, tokenizer, models, prompts."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from etils import epath

from glore_jax.data.prompts import PromptFormat
from glore_jax.data.records import Problem
from glore_jax.data.sources import load_problems
from glore_jax.data.steps import PromptTooLongError, encode_steps
from glore_jax.data.tokenizer import add_marker_token, load_tokenizer
from glore_jax.stages.layout import Context
from glore_jax.stages.local_files import local_copy
from glore_jax.workdir import read_json, write_json_atomic

if TYPE_CHECKING:
  import ml_collections
  from transformers import PreTrainedTokenizerFast

  from glore_jax.data.steps import EncodedSteps

log = logging.getLogger("glore_jax.stages")


def problems(config: ml_collections.ConfigDict, split: str) -> list[Problem]:
  """The problems of `split` ('train' or 'test') from the configured source.

  Args:
    config: the run config (`config.data` names the source and its options).
    split: 'train' or 'test'.
  """
  data = config.data
  n = data.train_size if split == "train" else data.test_size
  if data.source == "synthetic":
    found = load_problems("synthetic", split, seed=config.seed, n=n, **data.synthetic.to_dict())
  elif data.source == "gsm8k":
    found = load_problems("gsm8k", split, data_dir=data.path, on_error=data.on_error)
  else:  # gsm8k_tfds (config_check admits no other source)
    found = load_problems("gsm8k_tfds", split, data_dir=data.path or None)
  return list(found)[:n]


def tokenizer_for(
  config: ml_collections.ConfigDict, folder: epath.Path | None = None, *, with_marker: bool = False
) -> PreTrainedTokenizerFast:
  """The tokenizer saved beside a model folder, else the configured one; the local refiner's
  marker is added as one token only when the config asks for it. A model folder on gs:// (the
  folder or config.model.checkpoint) is read from its local copy (`local_files.local_copy`).

  Args:
    config: the run config (`model.checkpoint`, `tokenizer`, `prompts`).
    folder: a model folder whose saved tokenizer takes precedence; None: the configured one.
    with_marker: add the local refiner's marker token (when the prompt format uses one).
  """
  if folder is not None and (folder / "tokenizer_config.json").exists():
    spec = os.fspath(local_copy(folder))
  elif config.model.checkpoint:
    spec = os.fspath(local_copy(config.model.checkpoint))
  else:
    spec = config.tokenizer
  tokenizer = load_tokenizer(spec)
  if with_marker:
    add_marker_token(tokenizer, PromptFormat.from_config(config.prompts))
  return tokenizer


def try_encode(
  tokenizer: PreTrainedTokenizerFast, prompt: str, steps: Sequence[str], max_length: int
) -> EncodedSteps | None:
  """`encode_steps`, or None for an empty solution or a prompt that alone is too long (such
  examples are skipped and counted by the caller rather than crashing a long stage).

  Args:
    tokenizer: the tokenizer to encode with.
    prompt: the prompt text, fed to the model but not trained on.
    steps: the solution's steps (empty: None).
    max_length: the longest encoding in tokens; steps past it are cut.
  """
  if not steps:
    return None
  try:
    return encode_steps(tokenizer, prompt, list(steps), max_length=max_length)
  except PromptTooLongError:
    return None


def stable_fraction(key: str) -> float:
  """A deterministic number in [0, 1) per key (held-out splits independent of order)."""
  return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def is_heldout(config: ml_collections.ConfigDict, problem_id: str) -> bool:
  """Training questions kept out of reward-model training for the step-level evaluation.

  Args:
    config: the run config (`seed`, `evaluate.heldout_fraction`).
    problem_id: the training question's id.
  """
  return stable_fraction(f"heldout/{config.seed}/{problem_id}") < config.evaluate.heldout_fraction


@contextlib.contextmanager
def timed(ctx: Context, stage: str, *, record: bool = True) -> Iterator[dict]:
  """Times a stage and records its summary in <workdir>/timings.json (read by evaluate);
  `record=False` for a rerun of a finished stage, whose first timing stands.

  Args:
    ctx: the run's context.
    stage: the stage's name (the key in timings.json).
    record: write the time to timings.json (process 0 only).

  Yields:
    A dict the stage fills with its summary figures (printed with the time).
  """
  summary: dict = {}
  start = time.perf_counter()
  yield summary
  seconds = time.perf_counter() - start
  if ctx.is_leader and record:
    path = ctx.workdir / "timings.json"
    timings = read_json(path) if path.exists() else {}
    timings[stage] = round(seconds, 2)
    write_json_atomic(path, timings)
  from glore_jax.console import format_summary

  print(f"[{stage}] {seconds:.1f} s  {format_summary(summary)}", flush=True)  # once, on stdout
