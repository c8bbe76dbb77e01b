"""Stages `train_orm` and `train_sorm`: the policy backbone plus a scalar value head.

ORM targets: the sample's outcome at every step (V^pi). SORM targets: whether any of the K
rollouts from that step's prefix reached the gold answer (V*), hard or soft, optionally
balanced per step index. Questions held out for the step-level evaluation are not trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from glore_jax.data.step_truth import reference_equations, step_truth
from glore_jax.data.steps import split_steps
from glore_jax.data.tokenizer import padding_id
from glore_jax.method.labels import balance_by_step_index
from glore_jax.stages import models, outputs, sharded
from glore_jax.stages.common import Context, is_heldout, problems, timed, tokenizer_for, try_encode
from glore_jax.training import ValueExample

if TYPE_CHECKING:
  from transformers import PreTrainedTokenizerFast


def value_example(
  ctx: Context,
  tokenizer: PreTrainedTokenizerFast,
  question: str,
  steps: Sequence[str],
  hard: Sequence[float],
  soft: Sequence[float] | None = None,
  keep: Sequence[bool] | None = None,
) -> ValueExample | None:
  """Encodes (question, steps) for the value head; `keep` drops unbalanced steps' labels.

  Args:
    ctx: the run's context (prompt format, `config.data.max_length`).
    tokenizer: the policy's tokenizer.
    question: the question text.
    steps: the solution's steps.
    hard: a 0/1 target per step.
    soft: a target in [0, 1] per step; None: none.
    keep: whether each step's label is trained on; None: all.

  Returns:
    The example, or None when it does not encode or no step is kept.
  """
  enc = try_encode(
    tokenizer, ctx.prompts.reward_prompt(question), steps, ctx.config.data.max_length
  )
  if enc is None:
    return None
  n = len(enc.step_ends)
  keep = [True] * n if keep is None else list(keep[:n])
  idx = [i for i in range(n) if keep[i]]
  if not idx:
    return None
  return ValueExample(
    enc.ids,
    [enc.step_ends[i] for i in idx],
    [float(hard[i]) for i in idx],
    None if soft is None else [float(soft[i]) for i in idx],
  )


def rollout_solutions(label_records: Sequence[dict]) -> list[dict]:
  """The label stage's rollouts as more graded policy solutions for the ORM: prefix P_i of a
  sample followed by one of its K continuations. They are policy samples too (conditioned on a
  prefix), K x steps times as many as the samples, and rollouts from one prefix differ only after
  it: right and wrong solutions that share their start, the contrast a verifier learns from.
  Duplicates of a solution already seen for the same question are dropped."""
  seen: set[tuple[str, str]] = set()
  out = []
  for r in label_records:
    seen.add((r["problem_id"], "\n".join(r["steps"])))
  for r in label_records:
    for i, rollouts in enumerate(r["rollouts"]):
      for x in rollouts:
        steps = list(r["steps"][: i + 1]) + split_steps(x["text"])
        key = (r["problem_id"], "\n".join(steps))
        if key in seen:
          continue
        seen.add(key)
        out.append(
          {
            "problem_id": r["problem_id"],
            "sample_index": -1,
            "steps": steps,
            "correct": bool(x["correct"]),
          }
        )
  return out


def truth_rows(ctx: Context, records: Sequence[dict]) -> list[tuple]:
  """A diagnostic upper bound, not GLoRe: SORM targets from each step's ground truth on the
  synthetic task (prefix sound or not) instead of rollouts, i.e. what a verifier of this size
  could learn from perfect step labels.

  Args:
    ctx: the run's context.
    records: sample-stage records.

  Returns:
    (record, hard targets, soft targets) per record; both targets are the steps' truth.
  """
  refs = {p.id: (reference_equations(p.reference), p.answer) for p in problems(ctx.config, "train")}
  rows = []
  for r in records:
    ref, gold = refs[r["problem_id"]]
    sound = [float(x) for x in step_truth(r["steps"], ref, gold).prefix_sound]
    rows.append((r, sound, sound))
  return rows


def reward_examples(
  ctx: Context, kind: str, tokenizer: PreTrainedTokenizerFast
) -> tuple[list[ValueExample], list[ValueExample]]:
  """(train, held-out) ValueExamples for the ORM or the SORM.

  Args:
    ctx: the run's context.
    kind: 'orm' or 'sorm'.
    tokenizer: the policy's tokenizer.
  """
  questions = {p.id: p.question for p in problems(ctx.config, "train")}
  if kind == "orm":
    records = sharded.read(ctx, "sample", "train_orm")
    if ctx.config.reward.orm_rollouts:
      records = records + rollout_solutions(sharded.read(ctx, "label", "train_orm"))
    rows = [(r, [float(r["correct"])] * len(r["steps"]), None) for r in records]
  else:
    records = sharded.read(ctx, "label", "train_sorm")
    rows = [(r, r["sorm_hard"], r["sorm_soft"]) for r in records]
    if ctx.config.reward.truth_labels:
      rows = truth_rows(ctx, records)
  train, heldout = [], []
  train_rows = [row for row in rows if not is_heldout(ctx.config, row[0]["problem_id"])]
  keeps = [None] * len(train_rows)
  if kind == "sorm" and ctx.config.sorm.balance:
    keeps = balance_by_step_index(
      [list(map(int, hard)) for _, hard, _ in train_rows],
      seed=ctx.config.seed,
      keys=[(r["problem_id"], r["sample_index"]) for r, _, _ in train_rows],
    )
  for (r, hard, soft), keep in zip(train_rows, keeps):
    ex = value_example(ctx, tokenizer, questions[r["problem_id"]], r["steps"], hard, soft, keep)
    if ex is not None:
      train.append(ex)
  for r, hard, soft in rows:
    if is_heldout(ctx.config, r["problem_id"]):
      ex = value_example(ctx, tokenizer, questions[r["problem_id"]], r["steps"], hard, soft)
      if ex is not None:
        heldout.append(ex)
  return train, heldout


def run(ctx: Context, kind: str) -> None:
  """The train_orm / train_sorm stage: a value head on the policy, trained on the labels.

  Args:
    ctx: the run's context.
    kind: 'orm' or 'sorm'.
  """
  stage = f"train_{kind}"
  folder = ctx.path(kind)
  if outputs.start(ctx, stage):
    print(f"[{stage}] already trained: {folder}")
    return
  policy_dir = outputs.require(ctx, "policy", stage)
  with timed(ctx, stage) as summary:
    tokenizer = tokenizer_for(ctx.config, policy_dir)
    train, heldout = reward_examples(ctx, kind, tokenizer)
    if not train:
      hint = (
        " Balancing keeps equal positives and negatives per step index, so one-class labels "
        "leave nothing: train the policy longer or set --config.sorm.balance=False."
        if kind == "sorm" and ctx.config.sorm.balance
        else ""
      )
      raise ValueError(f"stage {stage!r}: no labelled steps to train on.{hint}")
    model = models.load(ctx, policy_dir, value_head=True)
    section = ctx.config.reward
    model, metrics = models.fit(
      ctx,
      model,
      train,
      heldout,
      section,
      loss="value",
      run_dir=folder.parent / "train",
      pad_id=padding_id(tokenizer),
      value_targets=section.targets,
      train_backbone=section.train_backbone,
    )
    models.save(ctx, model, tokenizer, folder)
    positives = sum(sum(ex.labels) for ex in train)
    steps = sum(len(ex.labels) for ex in train)
    summary.update(
      examples=len(train),
      labelled_steps=steps,
      positive_fraction=round(positives / max(steps, 1), 4),
      **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
    )
