"""Stage `sample`: N policy samples per training question, graded (the ORM's data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from glore_jax.data.grading import extract_answer, solution_correct
from glore_jax.data.records import Problem
from glore_jax.data.steps import split_steps
from glore_jax.sampling import generate
from glore_jax.stages import models, outputs, sharded
from glore_jax.stages.common import Context, problems, timed, tokenizer_for

if TYPE_CHECKING:
  import ml_collections
  from transformers import PreTrainedTokenizerFast

  from glore_jax.model import Llama


def decode_solution(
  tokenizer: PreTrainedTokenizerFast, tokens: Sequence[int], gold: str
) -> dict[str, Any]:
  """Text, steps, answer and correctness of generated solution tokens.

  Args:
    tokenizer: the policy's tokenizer.
    tokens: the generated tokens (no prompt).
    gold: the question's gold answer.
  """
  text = tokenizer.decode(list(tokens), skip_special_tokens=True)
  return {
    "text": text,
    "steps": split_steps(text),
    "answer": extract_answer(text),
    "correct": solution_correct(text, gold),
  }


def sample_problems(
  ctx: Context,
  model: Llama,
  tokenizer: PreTrainedTokenizerFast,
  items: Sequence[tuple[int, Problem]],
  *,
  num_samples: int,
  temperature: float,
  section: ml_collections.ConfigDict,
) -> list[dict]:
  """One record per (question, sample); randomness keyed by the question's index, so the
  records do not depend on sharding or batching.

  Args:
    ctx: the run's context (seed, mesh, prompt format).
    model: the policy.
    tokenizer: the policy's tokenizer.
    items: (question index, problem) pairs.
    num_samples: samples per question.
    temperature: the sampling temperature (0: greedy).
    section: the config node with max_new_tokens, top_k, top_p and batch_size.
  """
  prompts = [tokenizer(ctx.prompts.policy_prompt(p.question))["input_ids"] for _, p in items]
  results = generate(
    model,
    prompts,
    max_new_tokens=section.max_new_tokens,
    temperature=temperature,
    top_k=section.top_k,
    top_p=section.top_p,
    num_samples=num_samples,
    seed=ctx.config.seed,
    example_ids=[(i,) for i, _ in items],
    mesh=ctx.mesh,
    batch_size=section.batch_size,
  )
  records = []
  for (i, p), samples in zip(items, results):
    for j, s in enumerate(samples):
      records.append(
        {
          "problem_id": p.id,
          "question_index": i,
          "sample_index": j,
          "tokens": list(map(int, s.tokens)),
          "finish_reason": s.finish_reason,
          **decode_solution(tokenizer, s.tokens, p.answer),
        }
      )
  return records


def run(ctx: Context) -> None:
  """The sample stage: the policy's samples on the training questions (sharded, resumable)."""
  section = ctx.config.sample
  if outputs.start(ctx, "sample"):
    print(f"[sample] already done: {ctx.path('sample')}", flush=True)
    return
  policy_dir = outputs.require(ctx, "policy", "sample")
  items = list(enumerate(problems(ctx.config, "train")[: section.num_questions]))
  with timed(ctx, "sample") as summary:
    tokenizer = tokenizer_for(ctx.config, policy_dir)
    model = None

    def work(chunk):
      nonlocal model
      model = model or models.load(ctx, policy_dir)
      return sample_problems(
        ctx,
        model,
        tokenizer,
        chunk,
        num_samples=section.num_samples,
        temperature=section.temperature,
        section=section,
      )

    records = sharded.run(ctx, "sample", items, work, shard_size=section.shard_size)
    correct = sum(r["correct"] for r in records)
    summary.update(
      samples=len(records), questions=len(items), accuracy=round(correct / max(len(records), 1), 4)
    )
    sharded.finish(ctx, "sample", dict(summary))
