"""Stages `train_global` and `train_local`: SFT of the refiners, initialised from the policy.

Global: (question, draft) -> a whole correct solution. Local: (question, draft with the marker
before the first step whose prefix can no longer be completed) -> the steps from the marker on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from glore_jax.data.tokenizer import padding_id
from glore_jax.stages import models, outputs
from glore_jax.stages.common import Context, problems, timed, tokenizer_for, try_encode
from glore_jax.stages.refine_data import read_examples
from glore_jax.training import SFTExample

if TYPE_CHECKING:
  from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)


def refiner_examples(
  ctx: Context, kind: str, tokenizer: PreTrainedTokenizerFast, rows: list[dict]
) -> list[SFTExample]:
  """SFT examples for a refiner: (question, draft[, bad step]) -> corrected steps.

  Args:
    ctx: the run's context (prompt format, `config.refine.max_length`).
    kind: 'global' or 'local'.
    tokenizer: the policy's tokenizer (with the marker token for 'local').
    rows: refine_data records of `kind`; those that do not encode are skipped.
  """
  questions = {p.id: p.question for p in problems(ctx.config, "train")}
  fmt = ctx.prompts
  out = []
  for r in rows:
    q = questions[r["problem_id"]]
    if kind == "global":
      prompt = fmt.global_refine_input(q, r["draft_steps"])
      target = fmt.global_refine_target(r["target_steps"])
    else:
      prompt = fmt.local_refine_input(q, r["draft_steps"], r["bad_index"])
      target = fmt.local_refine_target(r["target_steps"], r["bad_index"])
    enc = try_encode(tokenizer, prompt, target, ctx.config.refine.max_length)
    if enc is not None and enc.step_ends:
      out.append(SFTExample(enc.ids, enc.prompt_length))
  return out


def run(ctx: Context, kind: str) -> None:
  """The train_global / train_local stage: the policy fine-tuned into a refiner.

  Args:
    ctx: the run's context.
    kind: 'global' or 'local'.
  """
  stage = f"train_{kind}"
  folder = ctx.path(kind)
  if outputs.start(ctx, stage):
    print(f"[{stage}] already trained: {folder}")
    return
  policy_dir = outputs.require(ctx, "policy", stage)
  rows = read_examples(ctx, kind, stage)
  with timed(ctx, stage) as summary:
    tokenizer = tokenizer_for(ctx.config, policy_dir, with_marker=(kind == "local"))
    examples = refiner_examples(ctx, kind, tokenizer, rows)
    cut = len(examples) // 20
    model = models.load(ctx, policy_dir, vocab_size=len(tokenizer))
    metrics = {}
    if examples:
      model, metrics = models.fit(
        ctx,
        model,
        examples[cut:],
        examples[:cut],
        ctx.config.refine,
        loss="lm",
        run_dir=folder.parent / "train",
        pad_id=padding_id(tokenizer),
        max_length=ctx.config.refine.max_length,
      )
    else:
      # A policy that never (or always) succeeds gives no pairs; the pipeline still completes
      # and the evaluation shows the untrained refiner for what it is.
      log.warning(
        "stage %s: no %s refinement examples (the policy's samples are all wrong or all "
        "right); saving the policy itself as the refiner",
        stage,
        kind,
      )
    models.save(ctx, model, tokenizer, folder)
    summary.update(
      examples=len(examples), **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    )
