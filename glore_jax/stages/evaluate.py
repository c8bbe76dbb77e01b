"""Stage `evaluate`: the paper's tables for this run.

Per test question: a greedy draft D; the SORM scores D's steps and the first step under the
threshold is where to refine; one global refinement G (question + D) and one local refinement L
(D with the marker before that step); the ORM reranks the candidates. Plus best-of-N policy
samples reranked by the ORM, and the step-level comparison of ORM and SORM on held-out steps.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from glore_jax.data.grading import solution_correct
from glore_jax.data.steps import join_steps, split_steps
from glore_jax.method import evaluation as ev
from glore_jax.sampling import generate
from glore_jax.stages import models, sharded
from glore_jax.stages.common import Context, is_heldout, problems, timed, tokenizer_for
from glore_jax.stages.scoring import score_steps
from glore_jax.workdir import read_json, write_json_atomic


@dataclasses.dataclass
class Candidate:
  steps: list[str]
  correct: bool


def _grade(steps: Sequence[str], gold: str) -> bool:
  return solution_correct(join_steps(steps), gold)


def _greedy(ctx: Context, model, tokenizer, prompts: Sequence[str], *, num_samples: int = 1,
            temperature: float = 0.0, seed_offset: int = 0) -> list[list[list[str]]]:
  section = ctx.config.evaluate
  ids = [tokenizer(p)["input_ids"] for p in prompts]
  out = generate(model, ids, max_new_tokens=section.max_new_tokens, temperature=temperature,
                 num_samples=num_samples, seed=ctx.config.seed + seed_offset, mesh=ctx.mesh,
                 batch_size=section.batch_size)
  return [[split_steps(tokenizer.decode(s.tokens, skip_special_tokens=True)) for s in row]
          for row in out]


def _scores(ctx, model, tokenizer, questions, solutions) -> list[list[float]]:
  prompts = [ctx.prompts.reward_prompt(q) for q in questions]
  return score_steps(model, tokenizer, prompts, solutions, max_length=ctx.config.data.max_length,
                     mesh=ctx.mesh)


def _final(scores: list[float]) -> float:
  return scores[-1] if scores else 0.0


def candidates(ctx: Context, tests) -> dict:
  """Generates D, G, L and best-of-N for every test question, and their ORM scores."""
  section = ctx.config.evaluate
  policy_dir = ctx.require("policy", "evaluate")
  paths = {k: ctx.require(k, "evaluate") for k in ("orm", "sorm", "global", "local")}
  tokenizer = tokenizer_for(ctx.config, policy_dir)
  questions = [p.question for p in tests]
  gold = [p.answer for p in tests]
  prompts = ctx.prompts

  policy = models.load(ctx, policy_dir)
  drafts = [row[0] for row in _greedy(ctx, policy, tokenizer,
                                      [prompts.policy_prompt(q) for q in questions])]
  best_of = _greedy(ctx, policy, tokenizer, [prompts.policy_prompt(q) for q in questions],
                    num_samples=section.best_of, temperature=section.temperature, seed_offset=7)
  del policy

  sorm = models.load(ctx, paths["sorm"], value_head=True)
  sorm_draft_scores = _scores(ctx, sorm, tokenizer, questions, drafts)
  del sorm
  where = [ev.first_step_below(s, section.threshold) for s in sorm_draft_scores]

  refiner_tok = tokenizer_for(ctx.config, paths["global"])
  global_model = models.load(ctx, paths["global"])
  globals_ = [row[0] for row in _greedy(ctx, global_model, refiner_tok,
                                        [prompts.global_refine_input(q, d)
                                         for q, d in zip(questions, drafts)])]
  del global_model

  local_tok = tokenizer_for(ctx.config, paths["local"], with_marker=True)
  local_model = models.load(ctx, paths["local"])
  flagged = [i for i, w in enumerate(where) if w is not None and drafts[i]]
  outputs = _greedy(ctx, local_model, local_tok,
                    [prompts.local_refine_input(questions[i], drafts[i], where[i]) for i in flagged])
  locals_ = [list(d) for d in drafts]  # no flagged step: the draft stands
  for i, out in zip(flagged, outputs):
    locals_[i] = list(drafts[i][:where[i]]) + list(out[0])
  del local_model

  orm = models.load(ctx, paths["orm"], value_head=True)
  flat = drafts + globals_ + locals_ + [s for row in best_of for s in row]
  orm_scores = [_final(s) for s in _scores(ctx, orm, tokenizer, questions * 3 + [
      q for q in questions for _ in range(section.best_of)], flat)]
  del orm
  n = len(tests)
  return {
      "gold": gold, "drafts": drafts, "globals": globals_, "locals": locals_, "best_of": best_of,
      "where": where, "sorm_draft_scores": sorm_draft_scores,
      "orm": {"draft": orm_scores[:n], "global": orm_scores[n:2 * n],
              "local": orm_scores[2 * n:3 * n],
              "best_of": [orm_scores[3 * n + i * section.best_of: 3 * n + (i + 1) * section.best_of]
                          for i in range(n)]},
  }


def answer_rows(c: dict, threshold: float, resamples: int, seed: int) -> dict:
  """The main table: accuracy, n and a bootstrap 95% interval per strategy."""
  gold = c["gold"]
  correct = {k: [_grade(s, g) for s, g in zip(c[name], gold)]
             for k, name in (("draft", "drafts"), ("global", "globals"), ("local", "locals"))}
  best_correct = [[_grade(s, g) for s in row] for row, g in zip(c["best_of"], gold)]
  orm = c["orm"]

  def grid(names):
    scores = [[orm[k][i] for k in names] for i in range(len(gold))]
    corr = [[correct[k][i] for k in names] for i in range(len(gold))]
    return scores, corr

  def reranked(names):
    return ev.rerank(*grid(names))

  row = lambda corr: ev.accuracy_row(corr, num_resamples=resamples, seed=seed)
  rows = {
      "greedy": row(correct["draft"]),
      "best_of_3": row(ev.rerank(orm["best_of"], best_correct)),
      "global": row(correct["global"]),
      "local": row(correct["local"]),
      "draft_global": row(reranked(("draft", "global"))),
      "draft_local": row(reranked(("draft", "local"))),
      "draft_global_local": row(reranked(("draft", "global", "local"))),
      "orm_gated": row(ev.gated_rerank(*grid(("draft", "global", "local")), threshold)),
      "oracle": row([any(correct[k][i] for k in correct) for i in range(len(gold))]),
  }
  wrong = [i for i, ok in enumerate(correct["draft"]) if not ok]
  fixes = {"wrong_drafts": len(wrong),
           "fixed_by_global": sum(correct["global"][i] for i in wrong),
           "fixed_by_local": sum(correct["local"][i] for i in wrong),
           "fixed_by_both": sum(correct["global"][i] and correct["local"][i] for i in wrong),
           "fixed_by_either": sum(correct["global"][i] or correct["local"][i] for i in wrong),
           "refined_locally": sum(w is not None for w in c["where"])}
  return {"rows": rows, "fixes": fixes}


def step_level(ctx: Context) -> tuple[dict, dict]:
  """ORM vs SORM on held-out training questions' steps, labelled by rollouts."""
  records = [r for r in sharded.read(ctx, "label", "evaluate") if is_heldout(ctx.config, r["problem_id"])
             and r["steps"]]
  questions = {p.id: p.question for p in problems(ctx.config, "train")}
  tokenizer = tokenizer_for(ctx.config, ctx.path("policy"))
  qs = [questions[r["problem_id"]] for r in records]
  sols = [r["steps"] for r in records]
  metrics, curves = {}, {}
  for kind in ("orm", "sorm"):
    model = models.load(ctx, ctx.path(kind), value_head=True)
    scores = _scores(ctx, model, tokenizer, qs, sols)
    del model
    per_step = [s[:-1] for s in scores]  # intermediate steps (the last one is the outcome)
    labels = [r["sorm_hard"][:len(s)] for r, s in zip(records, per_step)]
    finals = [_final(s) for s in scores]
    outcomes = [r["outcome"] for r in records]
    metrics[kind] = ev.step_level_metrics(per_step, labels, finals, outcomes)
    curves[kind] = ([p for s in per_step for p in s], [l for ls in labels for l in ls])
  return metrics, curves


def run(ctx: Context) -> None:
  section = ctx.config.evaluate
  out_dir = ctx.path("evaluate")
  if (out_dir / "results.json").exists() and (out_dir / "candidates.json").exists():
    print(f"[evaluate] already done: {out_dir / 'results.json'}", flush=True)
    if ctx.is_leader:
      print(ev.markdown_table(read_json(out_dir / "results.json")), flush=True)
    return
  with timed(ctx, "evaluate") as summary:
    tests = problems(ctx.config, "test")[:section.num_questions]
    c = candidates(ctx, tests)
    table = answer_rows(c, section.threshold, section.bootstrap_resamples, ctx.config.seed)
    steps, curves = step_level(ctx)
    summary.update(questions=len(tests))
  if not ctx.is_leader:
    return
  out_dir.mkdir(parents=True, exist_ok=True)
  ev.reliability_diagram(curves, out_dir / "reliability.png")
  timings_path = ctx.workdir / "timings.json"
  results = {**table["rows"], "step_level": steps, "fixes": table["fixes"],
             "timings": read_json(timings_path) if timings_path.exists() else {}}
  write_json_atomic(out_dir / "results.json", results)
  write_json_atomic(out_dir / "candidates.json", {k: c[k] for k in ("drafts", "globals", "locals", "where")})
  print(ev.markdown_table(results), flush=True)
