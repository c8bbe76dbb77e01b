"""The whole micro pipeline through `python -m glore_jax.main` (a real subprocess, 8 simulated
CPU devices, so the data-parallel mesh is exercised), its outputs, and an instant rerun."""

from __future__ import annotations

import json
import re

import pytest

from glore_jax.config_check import STAGES
from glore_jax.method.evaluation import ROWS

from .conftest import micro_config, run_main

pytestmark = pytest.mark.slow  # one micro pipeline run: ~1-2 min of compiles on a 2-core CPU

ROW_KEYS = (
  "greedy",
  "mean_sample",
  "random_of_3",
  "majority_of_3",
  "likelihood_of_3",
  "best_of_3",
  "global",
  "local",
  "draft_global",
  "draft_local",
  "draft_global_local",
  "orm_gated",
  "oracle",
  "best_of_3+lik",
  "draft_global+lik",
  "draft_local+lik",
  "draft_global_local+lik",
)
STEP_KEYS = {
  "step_accuracy",
  "final_accuracy",
  "auroc",
  "ece",
  "n_steps",
  "auroc_truth",
  "n_truth_steps",
  "final_auroc",
  "within_question_pairs",
  "within_question",
  "localisation",
}


def test_micro_pipeline_results(micro_run):
  results = json.loads((micro_run.workdir / "evaluate" / "results.json").read_text())
  n = micro_config().evaluate.num_questions
  assert set(ROW_KEYS) == set(ROWS)
  for key in ROW_KEYS:
    row = results[key]
    assert set(row) == {"accuracy", "n", "ci95"}, key
    assert row["n"] == n, key
    assert 0.0 <= row["accuracy"] <= 1.0, key
    if key != "mean_sample":  # accuracy is k/n for whole questions
      assert abs(row["accuracy"] * n - round(row["accuracy"] * n)) < 1e-9, key
    lo, hi = row["ci95"]
    assert 0.0 <= lo <= hi <= 1.0, key
  # The oracle (any of D, G, L correct) bounds every strategy that picks among D, G, L.
  for key in (
    "greedy",
    "global",
    "local",
    "draft_global",
    "draft_local",
    "draft_global_local",
    "orm_gated",
    "draft_global+lik",
    "draft_local+lik",
    "draft_global_local+lik",
  ):
    assert results[key]["accuracy"] <= results["oracle"]["accuracy"], key

  step = results["step_level"]
  assert set(step) >= {"orm", "sorm"}
  for kind in ("orm", "sorm"):
    assert set(step[kind]) == STEP_KEYS, kind
    assert isinstance(step[kind]["n_steps"], int)
  # both reward models are scored on the same test steps, against rollouts and ground truth
  assert step["orm"]["n_steps"] == step["sorm"]["n_steps"]
  assert step["orm"]["n_truth_steps"] == step["sorm"]["n_truth_steps"] > 0
  assert results["label_quality"]["intermediate_steps"] > 0
  assert 0.0 <= results["label_quality"]["sorm_label_accuracy"] <= 1.0

  timings = results["timings"]
  assert set(timings) >= set(STAGES), f"stages without a timing: {set(STAGES) - set(timings)}"
  assert all(isinstance(t, (int, float)) and t >= 0 for t in timings.values())

  fixes = results["fixes"]
  assert fixes["wrong_drafts"] == round((1 - results["greedy"]["accuracy"]) * n)

  png = micro_run.workdir / "evaluate" / "reliability.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_row_recomputes_from_candidates_json(micro_run):
  """candidates.json is the audit trail: each question's id, gold answer and every candidate
  (draft, samples, G, L) with text, answer, grade, ORM/SORM scores and ground truth."""
  from tests.recompute_table import recompute

  evaluate = micro_run.workdir / "evaluate"
  results = json.loads((evaluate / "results.json").read_text())
  candidates = json.loads((evaluate / "candidates.json").read_text())
  questions = candidates["questions"]
  assert len(questions) == micro_config().evaluate.num_questions
  for q in questions:
    assert {"id", "gold", "where", "candidates"} <= set(q)
    roles = [c["role"] for c in q["candidates"]]
    assert roles == ["draft"] + ["sample"] * 3 + ["global", "local"]
    for c in q["candidates"]:
      assert {
        "steps",
        "answer",
        "correct",
        "orm",
        "orm_steps",
        "sorm_steps",
        "truth",
        "mean_logprob",
        "orm_lik",
      } <= set(c)
      assert len(c["orm_steps"]) == len(c["sorm_steps"]) <= len(c["steps"])
      assert c["truth"] is None or len(c["truth"]["ok"]) == len(c["steps"])
  recomputed = recompute(candidates)
  assert set(recomputed) == set(ROW_KEYS)
  for key, accuracy in recomputed.items():
    assert results[key]["accuracy"] == pytest.approx(accuracy), key


def test_micro_pipeline_printed_tables_and_summaries(micro_run):
  out = micro_run.first.stdout
  assert "| method |" in out and "| reward model (test questions) |" in out
  for key in ROW_KEYS:
    assert re.search(rf"^\| {re.escape(key)} \|", out, re.M), f"row {key} not printed"
  for kind in ("orm", "sorm"):
    assert re.search(rf"^\| {kind} \|", out, re.M), f"step-level row {kind} not printed"
  for stage in STAGES:  # one summary line per stage
    assert re.search(rf"^\[{stage}\] [\d.]+ s", out, re.M), f"no summary line for {stage}"


def test_micro_pipeline_stage_outputs(micro_run):
  w = micro_run.workdir
  cfg = micro_config()
  num_samples = cfg.sample.num_questions * cfg.sample.num_samples
  for stage, shards in (
    ("sample", -(-cfg.sample.num_questions // cfg.sample.shard_size)),
    ("label", -(-num_samples // cfg.sorm.shard_size)),
  ):
    assert shards > 1  # the resume test kills runs between shards
    manifest = json.loads((w / stage / "manifest.json").read_text())
    assert manifest["done"] is True
    assert manifest["num_shards"] == shards
    assert len(list((w / stage).glob("shard-*.jsonl"))) == shards
    assert not list((w / stage).glob(".*tmp*")), "temp files left behind"
  samples = [
    json.loads(l)
    for f in sorted((w / "sample").glob("shard-*.jsonl"))
    for l in f.read_text().splitlines()
  ]
  assert len(samples) == num_samples
  labels = [
    json.loads(l)
    for f in sorted((w / "label").glob("shard-*.jsonl"))
    for l in f.read_text().splitlines()
  ]
  assert [(r["question_index"], r["sample_index"]) for r in labels] == [
    (r["question_index"], r["sample_index"]) for r in samples
  ]
  for r in labels:
    k = len(r["steps"])
    assert len(r["sorm_hard"]) == len(r["sorm_soft"]) == len(r["orm"]) == len(r["rollouts"]) == k
    if k:
      assert all(len(p) == cfg.sorm.num_rollouts for p in r["rollouts"][:-1])
      assert r["rollouts"][-1] == []  # the last prefix is the solution: its label is the outcome
      assert r["sorm_hard"][-1] == int(r["outcome"])
  for model in ("policy", "orm", "sorm", "refiner_global", "refiner_local"):
    assert (w / model / "model" / "config.json").exists(), model
  # the resolved config, written when the run started (glore_jax/provenance.py)
  assert json.loads((w / "resolved_config.json").read_text())["config"] == json.loads(
    json.dumps(cfg.to_dict())
  )


def _snapshot(workdir):
  """bytes and mtime of every file in the work directory."""
  return {
    str(p.relative_to(workdir)): (p.read_bytes(), p.stat().st_mtime_ns)
    for p in sorted(workdir.rglob("*"))
    if p.is_file()
  }


def test_rerun_skips_every_stage(micro_run, subprocess_env):
  w = micro_run.workdir
  before = _snapshot(w)
  rerun = run_main(subprocess_env, w)
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  after = _snapshot(w)
  assert after.keys() == before.keys()
  # Finished outputs are not rewritten (manifests may be re-marked done, with the same bytes);
  # timings.json keeps the first run's timings.
  changed = [k for k in before if before[k] != after[k] and not k.endswith("manifest.json")]
  assert not changed, f"a rerun rewrote finished outputs: {changed}"
  manifests = [k for k in before if k.endswith("manifest.json")]
  assert all(before[k][0] == after[k][0] for k in manifests)
  assert "| method |" in rerun.stdout  # the tables are printed again
  # Nothing was loaded, sampled or trained.
  assert not re.search(r"loaded .*: \d+ tensors", rerun.stderr), "a model was loaded"
  assert not re.search(r": training on \d+ examples", rerun.stderr), "a model was trained"
  assert rerun.seconds < max(0.5 * micro_run.first.seconds, 20.0), (
    f"rerun took {rerun.seconds:.0f} s (first run {micro_run.first.seconds:.0f} s)"
  )
