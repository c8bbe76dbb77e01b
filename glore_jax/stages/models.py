"""Creating, loading, training and saving the stage models (all HF folders in the workdir)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ml_collections
from etils import epath

from glore_jax import integrity
from glore_jax.config_keys import train_settings
from glore_jax.model import Llama, LlamaConfig, create_model, load_hf, preset, save_hf
from glore_jax.stages.common import Context
from glore_jax.stages.layout import LAYOUT, PRODUCER
from glore_jax.stages.local_files import files_below, is_local, local_copy
from glore_jax.stages.sync import barrier
from glore_jax.training import TrainConfig, make_batches, train

if TYPE_CHECKING:
  import jax
  from transformers import PreTrainedTokenizerFast

log = logging.getLogger("glore_jax.stages")


def new_policy(ctx: Context, tokenizer: PreTrainedTokenizerFast) -> Llama:
  """The student: an HF checkpoint when configured, else a small Llama from scratch sized to
  the tokenizer (the embedded default).

  Args:
    ctx: the run's context (`config.model`, mesh).
    tokenizer: the policy's tokenizer (its vocabulary sizes a model from scratch).
  """
  m = ctx.config.model
  if m.checkpoint:
    checkpoint = local_copy(m.checkpoint)
    return load_hf(
      checkpoint,
      mesh=ctx.mesh,
      dtype=m.dtype,
      param_dtype=m.param_dtype,
      vocab_size=max(len(tokenizer), LlamaConfig.from_hf(checkpoint).vocab_size),
    )
  cfg = preset(m.preset).replace(
    vocab_size=len(tokenizer),
    hidden_size=m.hidden_size,
    intermediate_size=m.intermediate_size,
    num_layers=m.num_layers,
    num_heads=m.num_heads,
    num_kv_heads=m.num_kv_heads,
    head_dim=0,  # re-derived from the new width
    max_position_embeddings=m.max_position_embeddings,
    dtype=m.dtype,
    param_dtype=m.param_dtype,
    remat=m.remat,
    bos_token_id=tokenizer.bos_token_id,
    eos_token_id=tokenizer.eos_token_id,
  )
  return create_model(cfg, seed=ctx.config.seed, mesh=ctx.mesh)


def load(
  ctx: Context,
  folder: epath.Path,
  *,
  value_head: bool = False,
  vocab_size: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> Llama:
  """Loads a model folder (local or gs://) onto `mesh` (default: the run's global mesh).

  Args:
    ctx: the run's context.
    folder: an HF model folder written by `save` (or the user's).
    value_head: add a fresh value head (a reward model made from the policy).
    vocab_size: grow the embeddings to this many rows (a marker token added); None or not
      larger than the checkpoint's: keep.
    mesh: the mesh to place the weights on; None: `ctx.mesh`.
  """
  m = ctx.config.model
  folder = local_copy(folder)
  integrity.verify_model_folder(folder, stage=_stage_of(folder))
  if vocab_size is not None and vocab_size <= LlamaConfig.from_hf(folder).vocab_size:
    vocab_size = None  # the checkpoint already has a row for every token
  return load_hf(
    folder,
    mesh=ctx.mesh if mesh is None else mesh,
    dtype=m.dtype,
    param_dtype=m.param_dtype,
    value_head=value_head,
    vocab_size=vocab_size,
    seed=ctx.config.seed,
  )


def _stage_of(folder) -> str | None:
  """The stage that writes a workdir model folder (for "recompute" advice)."""
  parent = epath.Path(folder).parent.name
  return next((PRODUCER[k] for k, v in LAYOUT.items() if v == f"{parent}/model"), None)


def save(
  ctx: Context, model: Llama, tokenizer: PreTrainedTokenizerFast, folder: epath.Path
) -> None:
  """Tokenizer first, then weights, config.json last: config.json marks a finished model.

  Written into a local temporary folder, then moved (local work directory: one rename) or
  copied file by file with config.json last (gs:// and other object stores, which have no
  folder rename). Every process returns once the folder is complete.

  Args:
    ctx: the run's context.
    model: the model to save (safetensors).
    tokenizer: saved beside the weights.
    folder: the model folder (local or gs://); replaced when it exists.
  """
  folder = epath.Path(folder)
  if not ctx.is_leader:
    save_hf(model, folder)  # takes part in the gather; only process 0 writes
    barrier(f"save-{folder.name}")
    return
  local_parent = folder.parent if is_local(folder) else None
  if local_parent is not None:
    local_parent.mkdir(parents=True, exist_ok=True)
  tmp = epath.Path(
    tempfile.mkdtemp(
      prefix=f".{folder.name}.partial-",
      dir=None if local_parent is None else os.fspath(local_parent),
    )
  )
  try:
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a model folder is shared like any
    tokenizer.save_pretrained(os.fspath(tmp))
    save_hf(model, tmp)
    integrity.write_model_manifest(tmp)  # file sizes, sha256, tensor counts: checked on load
    if folder.exists():
      folder.rmtree()
    if local_parent is not None:
      tmp.rename(folder)
    else:
      for relative, path in sorted(files_below(tmp), key=lambda f: f[0] == "config.json"):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        path.copy(folder / relative, overwrite=True)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  barrier(f"save-{folder.name}")


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def train_config(
  section: ml_collections.ConfigDict, *, loss: str, seed: int, **overrides: Any
) -> TrainConfig:
  """The trainer's settings of a training section, derived by `config_keys.TRAIN_FIELDS`
  (`train.steps` -> `total_steps`, ...).

  Args:
    section: `config.policy`, `config.reward` or `config.refine` (the one with `.train`).
    loss: 'lm' or 'value'.
    seed: the run's seed.
    **overrides: further TrainConfig fields (value_targets, train_backbone, ...).
  """
  return TrainConfig(**{**train_settings(section.train), "loss": loss, "seed": seed, **overrides})


def fit(
  ctx: Context,
  model: Llama,
  examples: Sequence[Any],
  eval_examples: Sequence[Any],
  section: ml_collections.ConfigDict,
  *,
  loss: str,
  run_dir: epath.Path,
  pad_id: int,
  max_length: int | None = None,
  **overrides: Any,
) -> tuple[Llama, dict[str, Any]]:
  """Trains on examples (SFTExample / ValueExample) with checkpoints under `run_dir`; resumes.

  Args:
    ctx: the run's context (seed, data options, mesh).
    model: the model to train (updated in place and returned).
    examples: the training examples.
    eval_examples: the examples of the eval loss (empty: no eval).
    section: the stage's config node (`policy`, `reward` or `refine`) holding `train`.
    loss: 'lm' or a value loss (see `TrainConfig.loss`).
    run_dir: the folder of checkpoints and logs.
    pad_id: the padding token id.
    max_length: the longest batch in tokens; None: `config.data.max_length`.
    **overrides: TrainConfig fields that replace the config's.

  Returns:
    (the trained model, the final metrics).

  Raises:
    ValueError: `examples` makes no batch.
  """
  cfg = train_config(section, loss=loss, seed=ctx.config.seed, **overrides)
  name = run_dir.parent.name  # the stage's output folder: policy, orm, sorm, refiner_global, ...
  max_length = max_length or ctx.config.data.max_length
  kind = "lm" if loss == "lm" else "value"
  batches = make_batches(
    examples,
    batch_size=section.train.batch_size,
    kind=kind,
    value_targets=cfg.value_targets,
    pad_id=pad_id,
    max_length=max_length,
    seed=ctx.config.seed,
    bucket_multiple=ctx.config.data.bucket_multiple or None,
  )
  eval_batches = None
  if eval_examples:
    eval_batches = make_batches(
      eval_examples,
      batch_size=section.train.batch_size,
      kind=kind,
      value_targets=cfg.value_targets,
      pad_id=pad_id,
      max_length=max_length,
      shuffle=False,
      bucket_multiple=ctx.config.data.bucket_multiple or None,
    )
  if not batches:
    raise ValueError(f"no training examples for {run_dir}: the previous stage produced none")
  epochs = section.train.max_epochs
  if epochs and cfg.total_steps > epochs * len(batches):
    # small data sets (a few hundred refinement pairs) would otherwise be seen 50+ times
    steps = max(1, math.ceil(epochs * len(batches)))
    log.info(
      "%s: %d steps cover max_epochs=%s of %d batches (config asked %d)",
      name,
      steps,
      epochs,
      len(batches),
      cfg.total_steps,
    )
    cfg = dataclasses.replace(
      cfg, total_steps=steps, warmup_steps=min(cfg.warmup_steps, steps // 10)
    )
  log.info(
    "%s: training on %d examples in %d batches, %d steps",
    name,
    len(examples),
    len(batches),
    cfg.total_steps,
  )
  from glore_jax.tracking import metrics_hook

  return train(
    model,
    batches,
    cfg,
    run_dir,
    eval_batches=eval_batches,
    mesh=ctx.mesh,
    metrics_hook=metrics_hook(ctx.config, name),
  )
