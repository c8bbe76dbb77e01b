"""Creating, loading, training and saving the stage models (all HF folders in the workdir)."""

from __future__ import annotations

import logging
import shutil
from typing import Any, Sequence

from etils import epath

from glore_jax.model import Llama, LlamaConfig, create_model, load_hf, preset, save_hf
from glore_jax.stages.common import Context
from glore_jax.training import TrainConfig, make_batches, train

log = logging.getLogger("glore_jax.stages")


def new_policy(ctx: Context, tokenizer) -> Llama:
  """The student: an HF checkpoint when configured, else a small Llama from scratch sized to
  the tokenizer (the embedded default)."""
  m = ctx.config.model
  if m.checkpoint:
    return load_hf(m.checkpoint, mesh=ctx.mesh, dtype=m.dtype, param_dtype=m.param_dtype,
                   vocab_size=max(len(tokenizer), LlamaConfig.from_hf(m.checkpoint).vocab_size))
  cfg = preset(m.preset).replace(
      vocab_size=len(tokenizer), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
      num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
      head_dim=0,  # re-derived from the new width
      max_position_embeddings=m.max_position_embeddings, dtype=m.dtype, param_dtype=m.param_dtype,
      remat=m.remat, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
  return create_model(cfg, seed=ctx.config.seed, mesh=ctx.mesh)


def load(ctx: Context, folder: epath.Path, *, value_head: bool = False,
         vocab_size: int | None = None) -> Llama:
  m = ctx.config.model
  if vocab_size is not None and vocab_size <= LlamaConfig.from_hf(folder).vocab_size:
    vocab_size = None  # the checkpoint already has a row for every token
  return load_hf(folder, mesh=ctx.mesh, dtype=m.dtype, param_dtype=m.param_dtype,
                 value_head=value_head, vocab_size=vocab_size, seed=ctx.config.seed)


def save(ctx: Context, model: Llama, tokenizer, folder: epath.Path) -> None:
  """Tokenizer first, then weights, config.json last: config.json marks a finished model."""
  if not ctx.is_leader:
    save_hf(model, folder)  # takes part in the gather; only process 0 writes
    return
  tmp = folder.parent / (folder.name + ".partial")
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  tokenizer.save_pretrained(str(tmp))
  save_hf(model, tmp)
  if folder.exists():
    shutil.rmtree(folder)
  tmp.rename(folder)


def train_config(section, *, loss: str, seed: int, **overrides: Any) -> TrainConfig:
  t = section.train
  fields = dict(loss=loss, learning_rate=t.learning_rate, warmup_steps=t.warmup_steps,
                total_steps=t.steps, weight_decay=t.weight_decay, grad_clip=t.grad_clip,
                grad_accum=t.grad_accum, checkpoint_every=t.checkpoint_every,
                keep_last=t.keep_last, eval_every=t.eval_every, seed=seed)
  fields.update(overrides)
  return TrainConfig(**fields)


def fit(ctx: Context, model: Llama, examples: Sequence[Any], eval_examples: Sequence[Any],
        section, *, loss: str, run_dir: epath.Path, pad_id: int, **overrides: Any):
  """Trains on examples (SFTExample / ValueExample) with checkpoints under `run_dir`; resumes."""
  cfg = train_config(section, loss=loss, seed=ctx.config.seed, **overrides)
  kind = "lm" if loss == "lm" else "value"
  batches = make_batches(examples, batch_size=section.train.batch_size, kind=kind,
                         value_targets=cfg.value_targets, pad_id=pad_id,
                         max_length=ctx.config.data.max_length, seed=ctx.config.seed)
  eval_batches = None
  if eval_examples:
    eval_batches = make_batches(eval_examples, batch_size=section.train.batch_size, kind=kind,
                                value_targets=cfg.value_targets, pad_id=pad_id,
                                max_length=ctx.config.data.max_length, shuffle=False)
  if not batches:
    raise ValueError(f"no training examples for {run_dir}: the previous stage produced none")
  log.info("training %s: %d examples in %d batches, %d steps", run_dir.name, len(examples),
           len(batches), cfg.total_steps)
  return train(model, batches, cfg, run_dir, eval_batches=eval_batches, mesh=ctx.mesh)
