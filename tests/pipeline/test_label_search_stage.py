"""The label stage with `sorm.labeling=first_error_search`: against the scripted policy of
test_label_stage (which prefixes each search round asks for, batched per shard, labels, flags),
and with the real micro policy (killed and resumed; every measured prefix gets exactly the
rollouts exhaustive labeling gave it, and the labels are the search replayed on those)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from glore_jax import workdir as wd
from glore_jax.config_check import ConfigError
from glore_jax.method.first_error_search import search_from_rollouts
from glore_jax.method.labels import StepRollouts
from glore_jax.sampling import Rollouts
from glore_jax.stages import label as label_stage
from glore_jax.stages import train_reward

from .conftest import REPO, main_command, make_ctx, micro_config, run_main
from .test_label_stage import (  # noqa: F401  (fixtures)
  EXPECTED,
  ORDER,
  K,
  ScriptedPolicy,
  _steps,
  _write_samples,
  tokenizer,
  train_problems,
)

SEARCH = {"sorm.labeling": "first_error_search"}


class ScriptedSearchPolicy(ScriptedPolicy):
  """The scripted rollouts, for whichever prefixes are asked; logs (sample, prefix index)."""

  def __call__(
    self,
    model,
    prompt_ids,
    draft_ids,
    prefix_ends,
    *,
    num_rollouts,
    max_new_tokens,
    example_ids,
    **kwargs,
  ):
    assert model == "fake-policy" and num_rollouts == K
    out, call, logged = [], [], len(self.calls)
    for prompt, draft, ends, key in zip(prompt_ids, draft_ids, prefix_ends, example_ids):
      key = tuple(key)
      steps, _, _kinds = _steps(key, self.problems)
      assert len(ends) == 1, "one prefix per draft per search round"
      # which step's prefix ends at this token
      j = next(
        j
        for j in range(len(steps) - 1)
        if self.tok.decode(draft[: ends[0] + 1]) == "\n".join(steps[: j + 1]) + "\n"
      )
      call.append((key, j))
      full = super().__call__(
        model,
        [prompt],
        [draft],
        [label_stage.segment_steps(self.tok, draft)[1][:-1]],
        num_rollouts=num_rollouts,
        max_new_tokens=max_new_tokens,
        example_ids=[key],
        temperature=kwargs["temperature"],
      )[0]
      out.append(Rollouts([full.samples[j]], 1, 1, K))
    del self.calls[logged:]  # the exhaustive helper logged its own calls
    self.calls.append(call)
    return out


def _run(tmp_path, monkeypatch, tokenizer, train_problems, **overrides):  # noqa: F811
  config = micro_config(**{"sorm.num_rollouts": K, "sorm.shard_size": 2, **SEARCH, **overrides})
  ctx = make_ctx(tmp_path, config)
  _write_samples(ctx, tokenizer, train_problems)
  policy = ScriptedSearchPolicy if config.sorm.labeling == "first_error_search" else ScriptedPolicy
  fake = policy(ctx, tokenizer, train_problems)
  monkeypatch.setattr(label_stage, "rollouts_from_prefixes_batch", fake)
  monkeypatch.setattr(label_stage.models, "load", lambda ctx, folder, **kw: "fake-policy")
  label_stage.run(ctx)
  return ctx, fake, wd.read_all(ctx.path("label"))


def test_search_rounds_labels_and_flags(tmp_path, monkeypatch, tokenizer, train_problems):  # noqa: F811
  ctx, fake, records = _run(tmp_path, monkeypatch, tokenizer, train_problems)
  # shards of 2: each round is one batched call over the shard's samples still searching.
  # (0,0): 3 steps, wrong; asks prefix 1 (all fail) then 0 (a consistent success): boundary 1.
  # (0,1): asks 1 (successes): boundary 2. (1,1): 2 steps, asks 0. Correct ones ask nothing.
  assert fake.calls == [[((0, 0), 1), ((0, 1), 1)], [((0, 0), 0)], [((1, 1), 0)]]
  assert [(r["question_index"], r["sample_index"]) for r in records] == ORDER
  soft = {(0, 0): [0.25, 0, 0], (0, 1): [1, 0.5, 0], (1, 0): [1, 1, 1], (1, 1): [1, 0], (2, 0): [1]}
  measured = {
    (0, 0): [True] * 3,
    (0, 1): [False, True, True],
    (1, 0): [False, False, True],
    (1, 1): [True, True],
    (2, 0): [True],
  }
  rollouts = {(0, 0): 8, (0, 1): 4, (1, 0): 0, (1, 1): 4, (2, 0): 0}
  for r in records:
    key = (r["question_index"], r["sample_index"])
    # the same hard labels as exhaustive labeling (consistency + propagation) on this script
    assert r["sorm_hard"] == EXPECTED[(True, True)][key][0], key
    assert r["sorm_soft"] == pytest.approx(soft[key]), key
    assert r["sorm_measured"] == measured[key], key
    assert r["rollouts_sampled"] == rollouts[key]
    assert [len(p) for p in r["rollouts"]] == [
      K if m and j < len(r["steps"]) - 1 else 0 for j, m in enumerate(measured[key])
    ]
  summary = wd.read_manifest(ctx.path("label"))["summary"]
  assert summary["labeling"] == "first_error_search"
  assert summary["rollouts"] == 16 and summary["rollouts_per_solution"] == pytest.approx(16 / 5)
  assert summary["measured_label_fraction"] == pytest.approx(9 / 12)
  assert summary["search_rounds"] == 2

  # balancing and the SORM's examples work on these records as on exhaustive ones
  # (test_label_stage.test_balancing_counts_per_step_index: the same hard labels, six kept)
  ctx.config.evaluate.heldout_fraction = 0.0
  ctx.config.sorm.balance = True
  train, _ = train_reward.reward_examples(ctx, "sorm", tokenizer)
  assert sum(len(ex.labels) for ex in train) == 6


def test_gallop_strategy_asks_from_the_first_prefix(
  tmp_path,
  monkeypatch,
  tokenizer,  # noqa: F811
  train_problems,  # noqa: F811 (a fixture)
):
  ctx, fake, records = _run(
    tmp_path, monkeypatch, tokenizer, train_problems, **{"sorm.search_strategy": "gallop"}
  )
  # (0,0): prefix 0 succeeds, 1 fails. (0,1): prefix 0 fails (its rollouts are all wrong though
  # prefix 1 has successes): boundary 0, where exhaustive labeling propagates 1 back to it.
  assert fake.calls == [[((0, 0), 0), ((0, 1), 0)], [((0, 0), 1)], [((1, 1), 0)]]
  hard = {(r["question_index"], r["sample_index"]): r["sorm_hard"] for r in records}
  want = {k: h for k, (h, _) in EXPECTED[(True, True)].items()}
  assert {k: h for k, h in hard.items() if h != want[k]} == {(0, 1): [0, 0, 0]}
  manifest = wd.read_manifest(ctx.path("label"))
  assert manifest["config"]["keys"]["sorm.search_strategy"] == "gallop"  # in the fingerprint
  assert manifest["summary"]["search_strategy"] == "gallop"


def test_exhaustive_records_count_non_monotone_rollouts(
  tmp_path,
  monkeypatch,
  tokenizer,  # noqa: F811
  train_problems,  # noqa: F811 (a fixture)
):
  ctx, _, records = _run(
    tmp_path, monkeypatch, tokenizer, train_problems, **{"sorm.labeling": "exhaustive"}
  )
  # with consistency, (0,1) measures [fail, success, wrong outcome] and (1,0) [fail (rollouts
  # ignore the prefix), fail, correct outcome]: a negative before a positive, which propagation
  # turns positive and a search may not see.
  flags = {(r["question_index"], r["sample_index"]): r["non_monotone"] for r in records}
  assert flags == {(0, 0): False, (0, 1): True, (1, 0): True, (1, 1): False, (2, 0): False}
  summary = wd.read_manifest(ctx.path("label"))["summary"]
  assert summary["non_monotone_solutions"] == 2 and summary["measured_label_fraction"] == 1.0
  assert summary["rollouts"] == K * 7  # from each of the 7 prefixes that are not a whole solution


def test_search_needs_positive_propagation():
  with pytest.raises(ConfigError, match="propagate_positive"):
    micro_config(**SEARCH, **{"sorm.propagate_positive": False})
  with pytest.raises(ConfigError, match="config.sorm.labeling='all'"):
    micro_config(**{"sorm.labeling": "all"})
  with pytest.raises(ConfigError, match="config.sorm.search_strategy='linear'"):
    micro_config(**{"sorm.search_strategy": "linear"})


def _kill_after_first_shard(env, workdir, log, *overrides) -> int:
  with open(log, "w") as out:
    p = subprocess.Popen(
      main_command(workdir, *overrides), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
    )
    try:
      deadline = time.monotonic() + 300
      while time.monotonic() < deadline:
        if list((workdir / "label").glob("shard-*.jsonl")):
          p.send_signal(signal.SIGKILL)
          p.wait(timeout=60)
          return len(list((workdir / "label").glob("shard-*.jsonl")))
        if p.poll() is not None:
          raise AssertionError(
            f"run ended (exit {p.returncode}) before a label shard:\n"
            + Path(log).read_text()[-4000:]
          )
        time.sleep(0.01)
      raise AssertionError("no label shard within the deadline")
    finally:
      if p.poll() is None:
        p.kill()
        p.wait()


@pytest.mark.slow
def test_search_stage_with_the_micro_policy_resumes_and_matches_exhaustive(
  micro_run, subprocess_env, tmp_path
):
  ref = micro_run.workdir  # its label stage is exhaustive, same seed and K
  w = tmp_path / "w"
  for stage in ("policy", "sample"):
    shutil.copytree(ref / stage, w / stage)
  args = ("--config.stages=label", "--config.sorm.labeling=first_error_search")
  n = _kill_after_first_shard(subprocess_env, w, tmp_path / "run1.log", *args)
  cfg = micro_config()
  total = -(-cfg.sample.num_questions * cfg.sample.num_samples // cfg.sorm.shard_size)
  assert 1 <= n < total
  final = run_main(subprocess_env, w, *args)
  assert final.returncode == 0, final.stderr[-4000:]
  assert f"[label] resuming: {n} of {total} shards already done" in final.stdout

  got, want = wd.read_all(w / "label"), wd.read_all(ref / "label")
  assert [(r["question_index"], r["sample_index"]) for r in got] == [
    (r["question_index"], r["sample_index"]) for r in want
  ]
  saved = 0
  for g, e in zip(got, want):
    replay = search_from_rollouts(StepRollouts.from_json(e), consistency=cfg.sorm.consistency)
    assert g["sorm_hard"] == replay.hard and g["sorm_soft"] == replay.soft
    assert g["sorm_measured"] == replay.measured and g["evaluations"] == replay.evaluations
    for i, rollouts in enumerate(g["rollouts"]):
      # a measured prefix has exactly the exhaustive rollouts (same keys); the others none
      measured_prefix = replay.measured[i] and i < len(g["steps"]) - 1
      assert rollouts == (e["rollouts"][i] if measured_prefix else [])
    saved += e["rollouts_sampled"] - g["rollouts_sampled"]
  assert saved >= 0
  manifest = json.loads((w / "label" / "manifest.json").read_text())
  assert manifest["done"] and manifest["config"]["keys"]["sorm.labeling"] == "first_error_search"
  ref_keys = json.loads((ref / "label" / "manifest.json").read_text())["config"]["keys"]
  assert ref_keys["sorm.labeling"] == "exhaustive"  # the mode is part of the label fingerprint
