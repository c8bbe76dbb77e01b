"""Stage `policy`: supervised fine-tuning of the student on reference solutions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from glore_jax.data.steps import split_steps
from glore_jax.data.tokenizer import padding_id
from glore_jax.stages import models, outputs
from glore_jax.stages.common import Context, problems, timed, tokenizer_for, try_encode
from glore_jax.training import SFTExample

if TYPE_CHECKING:
  from collections.abc import Iterable

  from transformers import PreTrainedTokenizerFast

  from glore_jax.data.records import Problem


def sft_examples(
  ctx: Context, tokenizer: PreTrainedTokenizerFast, items: Iterable[Problem]
) -> list[SFTExample]:
  """The policy's SFT examples: each question's prompt and its reference solution.

  Args:
    ctx: the run's context (prompt format, `config.data.max_length`).
    tokenizer: the policy's tokenizer.
    items: the problems; those that do not encode (too long, no steps) are skipped.
  """
  prompts = ctx.prompts
  out = []
  for p in items:
    enc = try_encode(
      tokenizer,
      prompts.policy_prompt(p.question),
      split_steps(p.reference),
      ctx.config.data.max_length,
    )
    if enc is not None and enc.step_ends:
      out.append(SFTExample(enc.ids, enc.prompt_length))
  return out


def run(ctx: Context) -> None:
  """The policy stage: SFT of the student on the training questions' reference solutions."""
  folder = ctx.path("policy")
  if outputs.start(ctx, "policy"):
    print(f"[policy] already trained: {folder}")
    return
  with timed(ctx, "policy") as summary:
    tokenizer = tokenizer_for(ctx.config)
    train = problems(ctx.config, "train")
    cut = max(1, len(train) // 20)  # 5% of the reference solutions for the eval loss
    examples = sft_examples(ctx, tokenizer, train[cut:])
    eval_examples = sft_examples(ctx, tokenizer, train[:cut])
    model = models.new_policy(ctx, tokenizer)
    model, metrics = models.fit(
      ctx,
      model,
      examples,
      eval_examples,
      ctx.config.policy,
      loss="lm",
      run_dir=folder.parent / "train",
      pad_id=padding_id(tokenizer),
    )
    models.save(ctx, model, tokenizer, folder)
    summary.update(
      examples=len(examples), **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    )
