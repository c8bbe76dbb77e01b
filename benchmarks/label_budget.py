"""Label budget (issue 17): exhaustive SORM labels vs first-error search, on the same samples.

    python benchmarks/label_budget.py --config=configs/demo.py \\
        --exhaustive=RUNS/ex4 --search=RUNS/search4 [--sweep=RUNS/ex8 --ks 2 4 8] \\
        [--test_records=RUNS/demo-base/evaluate/candidates.json] --out=RUNS/label_budget.json --plot=RUNS/label_budget.png

Inputs are work directories of the same config and policy whose `label` stages ran with
`sorm.labeling=exhaustive` (--exhaustive) and `first_error_search` (--search), each followed by
`train_sorm`; --sweep is an exhaustive label stage with the largest K of the sweep.

Reported per labeling (synthetic task, ground truth from `glore_jax.data.step_truth`):
  * cost: rollouts and generated tokens per labelled solution, label stage wall time;
  * hard-label agreement of the search with exhaustive labeling (steps, solutions);
  * label quality against ground truth, on intermediate steps (the last step's label is the
    outcome), as the evaluate stage's `label_quality` counts it: step accuracy of the hard labels
    against prefix soundness, and how often the first negative label is the first wrong step;
  * the SORM trained on each: step AUROC against prefix soundness on held-out training
    questions' samples (never trained on) and, given --test_records, on the evaluate stage's test
    solutions; the paired difference with a bootstrap interval over solutions.
Sweep: rollout k from a prefix has the same random key whatever K and whichever prefixes are
evaluated, so labels at K' <= K and the search's labels are replayed exactly from the K-rollout
exhaustive records (`search_from_rollouts`); the run checks this against the real search stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from glore_jax import workdir as wd  # noqa: E402
from glore_jax.data.step_truth import reference_equations, step_truth  # noqa: E402
from glore_jax.method.evaluation import auroc  # noqa: E402
from glore_jax.method.first_error_search import (  # noqa: E402
  compare_hard_labels,
  first_negative,
  non_monotone,
  search_from_rollouts,
)
from glore_jax.method.labels import StepRollouts, sorm_labels  # noqa: E402
from glore_jax.stages.common import Context, is_heldout, problems, tokenizer_for  # noqa: E402


def load_config(path: str):
  from glore_jax.config_files import load_config_file

  return load_config_file(path)


def truth_table(config) -> dict[str, tuple]:
  """problem id -> (reference equations, gold answer) for the training split."""
  return {p.id: (reference_equations(p.reference), p.answer) for p in problems(config, "train")}


def ground_truth(steps, ref, gold) -> tuple[list[int], int | None] | None:
  """(prefix soundness of the intermediate steps, first wrong step) or None without truth."""
  if not ref or not steps:
    return None
  truth = step_truth(steps, ref, gold)
  return [int(x) for x in truth.prefix_sound[:-1]], truth.first_error


def label_quality(rows, truth) -> dict:
  """Hard labels (one list per solution, aligned with `truth`) against ground truth.

  step_accuracy: intermediate steps whose label equals prefix soundness. first_error_accuracy:
  over solutions whose first wrong step is an intermediate one, how often the first negative
  label sits there. exact_solutions: solutions whose intermediate labels are all right.
  """
  steps = right = hits = with_error = exact = counted = 0
  for hard, t in zip(rows, truth):
    if t is None or len(hard) < 2:
      continue
    sound, first_error = t
    inter = [int(h) for h in hard[:-1]]
    steps += len(sound)
    ok = sum(a == b for a, b in zip(inter, sound))
    right += ok
    exact += ok == len(sound)
    counted += 1
    if first_error is not None and first_error < len(hard) - 1:
      with_error += 1
      hits += (inter.index(0) if 0 in inter else None) == first_error
  return {
    "step_accuracy": right / steps if steps else None,
    "intermediate_steps": steps,
    "first_error_accuracy": hits / with_error if with_error else None,
    "solutions_with_intermediate_error": with_error,
    "exact_solutions": exact / counted if counted else None,
  }


def cost(records) -> dict:
  n = len(records)
  rollouts = sum(len(p) for r in records for p in r["rollouts"])
  tokens = sum(x["num_tokens"] for r in records for p in r["rollouts"] for x in p)
  return {
    "solutions": n,
    "rollouts_per_solution": rollouts / n,
    "generated_tokens_per_solution": tokens / n,
  }


MODES = ("exhaustive", "bisect", "gallop")


def add_token_counts(config, workdir: Path, records) -> bool:
  """Label records written before rollouts carried `num_tokens` get an estimate: the rollout's
  text re-encoded, plus one for the EOS token. Returns whether any count was estimated."""
  missing = [x for r in records for p in r["rollouts"] for x in p if "num_tokens" not in x]
  if not missing:
    return False
  tokenizer = tokenizer_for(config, Path(workdir) / "policy" / "model")
  for x in missing:
    x["num_tokens"] = len(tokenizer(x["text"], add_special_tokens=False)["input_ids"]) + 1
  return True


def replay(records, consistency: bool, k: int) -> dict:
  """Exhaustive labels and both searches' at K = k, replayed from records with >= k rollouts per
  prefix: {mode: {"labels", "tokens", "rollouts"}}, the count of non-monotone solutions, and
  `floor_tokens`: what measuring only the boundary pair of the exhaustive labels would cost."""
  out = {m: {"labels": [], "tokens": 0, "rollouts": 0} for m in MODES}
  out["non_monotone"] = out["floor_tokens"] = 0
  for r in records:
    sol = StepRollouts.from_json(r)
    cut = StepRollouts(sol.steps, sol.outcome, [p[:k] for p in sol.rollouts])
    tokens = [sum(x["num_tokens"] for x in p[:k]) for p in r["rollouts"]]
    ex = out["exhaustive"]
    ex["labels"].append(sorm_labels(cut, consistency=consistency, propagate_positive=True).hard)
    ex["tokens"] += sum(tokens)
    ex["rollouts"] += sum(len(p[:k]) for p in r["rollouts"])
    for strategy in ("bisect", "gallop"):
      found = search_from_rollouts(sol, consistency=consistency, num_rollouts=k, strategy=strategy)
      out[strategy]["labels"].append(found.hard)
      out[strategy]["tokens"] += sum(tokens[i] for i in found.evaluations)
      out[strategy]["rollouts"] += k * len(found.evaluations)
    raw = sorm_labels(cut, consistency=consistency, propagate_positive=False).hard
    out["non_monotone"] += non_monotone(raw)
    # the floor of any search that measures what it claims: the last positive and the first
    # negative prefix (those that exist and are not the whole solution), told where they are
    b = first_negative(ex["labels"][-1])
    out["floor_tokens"] += sum(tokens[i] for i in {b - 1, b} if 0 <= i < len(sol.steps) - 1)
  return out


def score(config, workdir: Path, items) -> list[list[float]]:
  """The SORM of `workdir` on (question, steps) items."""
  from glore_jax.stages import models
  from glore_jax.stages.scoring import score_steps

  ctx = Context(config=config, workdir=epath.Path(workdir), mesh=None)
  tokenizer = tokenizer_for(config, ctx.path("policy"))
  model = models.load(ctx, ctx.path("sorm"), value_head=True)
  prompts = [ctx.prompts.reward_prompt(q) for q, _ in items]
  return score_steps(
    model,
    tokenizer,
    prompts,
    [s for _, s in items],
    max_length=config.data.max_length,
    batch_size=64,
  )


def step_auroc(scores, truth) -> tuple[float | None, int, list]:
  """AUROC of intermediate-step scores against prefix soundness; per-solution (scores, labels)
  for the bootstrap."""
  per = []
  for s, t in zip(scores, truth):
    if t is None or len(s) < 2 or len(s[:-1]) != len(t[0]):
      continue
    per.append((list(s[:-1]), t[0]))
  ys = [y for _, l in per for y in l]
  ps = [p for s, _ in per for p in s]
  return auroc(ps, ys), len(ys), per


def paired_auroc_difference(a, b, resamples: int = 1000, seed: int = 0) -> dict:
  """AUROC(a) - AUROC(b) on the same solutions, with a bootstrap 95% interval over solutions."""
  if len(a) != len(b):
    raise ValueError(f"score the same solutions: {len(a)} vs {len(b)}")
  rng = np.random.default_rng(seed)
  flat = lambda per, idx: ([p for i in idx for p in per[i][0]], [y for i in idx for y in per[i][1]])
  full = range(len(a))
  diff = auroc(*flat(a, full)) - auroc(*flat(b, full))
  draws = []
  for _ in range(resamples):
    idx = rng.integers(0, len(a), len(a))
    x, y = auroc(*flat(a, idx)), auroc(*flat(b, idx))
    if x is not None and y is not None:
      draws.append(x - y)
  lo, hi = np.percentile(draws, [2.5, 97.5])
  return {"difference": diff, "ci95": [float(lo), float(hi)], "resamples": len(draws)}


def heldout_items(config, records, truths):
  questions = {p.id: p.question for p in problems(config, "train")}
  items, truth = [], []
  for r in records:
    if is_heldout(config, r["problem_id"]) and r["steps"]:
      items.append((questions[r["problem_id"]], r["steps"]))
      ref, gold = truths[r["problem_id"]]
      truth.append(ground_truth(r["steps"], ref, gold))
  return items, truth


def test_items(config, candidates_json: Path):
  """The evaluate stage's test solutions (greedy drafts and policy samples, from its
  candidates.json) with their ground truth."""
  tests = {p.id: p for p in problems(config, "test")}
  items, truth = [], []
  for rec in json.loads(Path(candidates_json).read_text())["questions"]:
    p = tests[rec["id"]]
    for c in rec["candidates"]:
      if c["role"] in ("draft", "sample") and c["steps"]:
        items.append((p.question, c["steps"]))
        truth.append(ground_truth(c["steps"], reference_equations(p.reference), p.answer))
  return items, truth


def timing(workdir: Path, stage: str):
  path = Path(workdir) / "timings.json"
  return json.loads(path.read_text()).get(stage) if path.exists() else None


def plot(sweep: dict, path: Path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(8, 3.2), dpi=110)
  FigureCanvasAgg(fig)
  panels = [
    ("first_error_accuracy", "first negative = first wrong step"),
    ("step_accuracy", "hard label = prefix soundness"),
  ]
  for n, (key, title) in enumerate(panels):
    ax = fig.add_subplot(1, 2, n + 1)
    for mode, marker in (("exhaustive", "o-"), ("bisect", "s--"), ("gallop", "^:")):
      xs = [sweep[k][mode]["generated_tokens_per_solution"] for k in sorted(sweep, key=int)]
      ys = [sweep[k][mode]["quality"][key] for k in sorted(sweep, key=int)]
      ax.plot(xs, ys, marker, label=mode if mode == "exhaustive" else f"search: {mode}")
      for k, x, y in zip(sorted(sweep, key=int), xs, ys):
        ax.annotate(f"K={k}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("rollout tokens per labelled solution")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if n == 0:
      ax.set_ylabel("accuracy vs ground truth")
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--exhaustive", required=True, type=Path)
  ap.add_argument(
    "--search",
    type=Path,
    nargs="*",
    default=[],
    help="first_error_search work directories (one per strategy); none: only the "
    "sweep, replayed from --exhaustive's records unless --sweep is given",
  )
  ap.add_argument("--sweep", type=Path)
  ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
  ap.add_argument(
    "--test_records", type=Path, help="an evaluate stage's candidates.json (test solutions)"
  )
  ap.add_argument("--no_sorm", action="store_true", help="skip scoring the trained SORMs")
  ap.add_argument("--out", type=Path, required=True)
  ap.add_argument("--plot", type=Path, nargs="*", default=[])
  args = ap.parse_args()
  config = load_config(args.config)
  consistency = config.sorm.consistency
  truths = truth_table(config)
  key = lambda r: (r["question_index"], r["sample_index"])
  ex = wd.read_all(args.exhaustive / "label")
  estimated = add_token_counts(config, args.exhaustive, ex)
  dirs = {"exhaustive": args.exhaustive}
  for d in args.search:
    strategy = wd.read_manifest(d / "label")["summary"].get("search_strategy", "bisect")
    dirs[f"search_{strategy}"] = d
  records = {
    name: ex if name == "exhaustive" else wd.read_all(d / "label") for name, d in dirs.items()
  }
  for name, recs in records.items():
    if [key(r) for r in recs] != [key(r) for r in ex]:
      raise SystemExit(f"{name} ({dirs[name]}) did not label the same samples as --exhaustive")
  truth = [ground_truth(r["steps"], *truths[r["problem_id"]]) for r in ex]
  incorrect = [i for i, r in enumerate(ex) if not r["outcome"]]
  out: dict = {
    "config": args.config,
    "num_rollouts": config.sorm.num_rollouts,
    "label_dirs": {k: str(v) for k, v in dirs.items()},
    "tokens_estimated": estimated,
  }
  for name, recs in records.items():
    manifest = wd.read_manifest(dirs[name] / "label")
    row = {
      **cost(recs),
      "label_seconds": timing(dirs[name], "label"),
      "train_sorm_seconds": timing(dirs[name], "train_sorm"),
      "quality": label_quality([r["sorm_hard"] for r in recs], truth),
      "quality_incorrect": label_quality(
        [recs[i]["sorm_hard"] for i in incorrect], [truth[i] for i in incorrect]
      ),
      "summary": {k: v for k, v in manifest["summary"].items() if k != "statistics"},
    }
    if name != "exhaustive":
      strategy = name.removeprefix("search_")
      row["agreement"] = compare_hard_labels(
        [r["sorm_hard"] for r in recs], [r["sorm_hard"] for r in ex]
      )
      row["agreement_incorrect"] = compare_hard_labels(
        [recs[i]["sorm_hard"] for i in incorrect], [ex[i]["sorm_hard"] for i in incorrect]
      )
      row["token_ratio"] = out["exhaustive"]["generated_tokens_per_solution"] / max(
        row["generated_tokens_per_solution"], 1e-9
      )
      # the search stage against the search replayed on the exhaustive rollouts (same keys)
      replayed = [
        search_from_rollouts(StepRollouts.from_json(r), consistency=consistency, strategy=strategy)
        for r in ex
      ]
      row["replay_mismatches"] = sum(
        s["sorm_hard"] != p.hard or s["sorm_soft"] != p.soft or s["sorm_measured"] != p.measured
        for s, p in zip(recs, replayed)
      )
    out[name] = row
  out["first_negative_histogram"] = {
    "exhaustive": np.bincount([first_negative(r["sorm_hard"]) for r in ex]).tolist(),
    "num_steps": np.bincount([len(r["steps"]) for r in ex]).tolist(),
  }

  if args.sweep or not args.search:
    sw = wd.read_all(args.sweep / "label") if args.sweep else ex
    sweep_estimated = add_token_counts(config, args.exhaustive, sw) or (
      not args.sweep and estimated
    )
    if [key(r) for r in sw] != [key(r) for r in ex]:
      raise SystemExit("the sweep labelled other samples")
    sw_truth = [ground_truth(r["steps"], *truths[r["problem_id"]]) for r in sw]
    out["sweep"] = {}
    out["sweep_tokens_estimated"] = sweep_estimated
    for k in args.ks:
      rep = replay(sw, consistency, k)
      n = len(sw)
      row = {
        m: {
          "generated_tokens_per_solution": rep[m]["tokens"] / n,
          "rollouts_per_solution": rep[m]["rollouts"] / n,
          "quality": label_quality(rep[m]["labels"], sw_truth),
        }
        for m in MODES
      }
      for m in ("bisect", "gallop"):
        row[m]["agreement"] = compare_hard_labels(rep[m]["labels"], rep["exhaustive"]["labels"])
        row[m]["token_ratio"] = rep["exhaustive"]["tokens"] / max(rep[m]["tokens"], 1)
      row["non_monotone_solutions"] = rep["non_monotone"]
      row["floor_tokens_per_solution"] = rep["floor_tokens"] / n
      row["floor_token_ratio"] = rep["exhaustive"]["tokens"] / max(rep["floor_tokens"], 1)
      for name, recs in records.items():  # the replay at a stage's own K must be that stage
        if k == max((len(p) for r in recs for p in r["rollouts"]), default=0):
          mode = name.removeprefix("search_")
          row[f"matches_stage_{mode}"] = rep[mode]["labels"] == [r["sorm_hard"] for r in recs]
      out["sweep"][str(k)] = row
    for p in args.plot:
      plot(out["sweep"], p)

  if not args.no_sorm:
    sets = {"heldout": heldout_items(config, ex, truths)}
    if args.test_records:
      sets["test"] = test_items(config, args.test_records)
    out["sorm_auroc_truth"] = {}
    for set_name, (items, t) in sets.items():
      per, row = {}, {"solutions": len(items)}
      for name, d in dirs.items():
        if not (d / "sorm" / "model" / "config.json").exists():
          continue
        value, n, per[name] = step_auroc(score(config, d, items), t)
        row[name], row["steps"] = value, n
      for name in per:
        if name != "exhaustive" and "exhaustive" in per:
          row[f"{name}_minus_exhaustive"] = paired_auroc_difference(per[name], per["exhaustive"])
      out["sorm_auroc_truth"][set_name] = row
  args.out.write_text(json.dumps(out, indent=1))
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
