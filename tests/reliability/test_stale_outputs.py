"""A changed config never reuses old outputs (issue 14, item 1). Before stage fingerprints,
`--config.evaluate.threshold=0.3` on a finished work directory reprinted the old table with
exit 0, and so did changes of `policy.train.steps`, `reward.train.learning_rate` and
`refine.max_pairs_per_question`; the sample stage's fingerprint left out the policy; a
half-trained policy resumed under another learning rate with a warning only."""

from __future__ import annotations

import json

import pytest

from glore_jax import workdir as wd
from glore_jax.stages import sharded

from .conftest import (
  assert_one_line_error,
  copy_workdir,
  make_ctx,
  micro_config,
  run_many,
  snapshot,
)

# override -> (changed key in the message, the stage that refuses)
CASES = {
  "threshold": (["--config.evaluate.threshold=0.3"], "evaluate.threshold", "evaluate"),
  "policy_steps": (["--config.policy.train.steps=61"], "policy.train.steps", "policy"),
  "reward_lr": (
    ["--config.reward.train.learning_rate=0.002"],
    "reward.train.learning_rate",
    "train_orm",
  ),
  "pairs": (
    ["--config.refine.max_pairs_per_question=3"],
    "refine.max_pairs_per_question",
    "refine_data",
  ),
  # the policy is not rerun here: the sample stage itself knows which policy it sampled
  "sample_of_other_policy": (
    ["--config.stages=sample", "--config.policy.train.learning_rate=0.02"],
    "policy.train.learning_rate",
    "sample",
  ),
}


@pytest.fixture(scope="module")
def stale_runs(micro_run, subprocess_env, tmp_path_factory):
  cases, before = {}, {}
  for name, (args, _, _) in CASES.items():
    w = copy_workdir(micro_run.workdir, tmp_path_factory.mktemp(name) / "w")
    before[name] = snapshot(w)
    cases[name] = (w, args)
  return cases, before, run_many(subprocess_env, cases)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_changed_config_refuses_stale_outputs(stale_runs, name):
  cases, before, results = stale_runs
  rc, _, stderr = results[name]
  _, key, stage = CASES[name]
  assert_one_line_error(rc, stderr, 3, key, f"stage {stage!r}", "--config.recompute=")
  assert f"--config.recompute={stage}" in stderr  # the refusing stage comes first in the list
  assert snapshot(cases[name][0]) == before[name], "a refused run changed the work directory"


@pytest.mark.slow
def test_recompute_replaces_a_stale_evaluation(micro_run, subprocess_env, tmp_path):
  w = copy_workdir(micro_run.workdir, tmp_path / "w")
  old = json.loads((w / "evaluate" / "fingerprint.json").read_text())["fingerprint"]
  args = ["--config.stages=evaluate", "--config.evaluate.threshold=0.3"]
  ((rc, out, err),) = run_many(
    subprocess_env, {"r": (w, args + ["--config.recompute=evaluate"])}
  ).values()
  assert rc == 0, err[-3000:]
  assert "[evaluate] discarding" in out and "| method |" in out
  new = json.loads((w / "evaluate" / "fingerprint.json").read_text())
  assert new["fingerprint"] != old and new["config"]["keys"]["evaluate.threshold"] == 0.3
  # the same command again: current, so reprinted; the old threshold is now the stale one
  results = run_many(subprocess_env, {"same": (w, args), "old": (w, ["--config.stages=evaluate"])})
  assert results["same"][0] == 0 and "already done" in results["same"][1]
  assert_one_line_error(results["old"][0], results["old"][2], 3, "evaluate.threshold: 0.3 -> 0.5")


def _finished_sample_stage(ctx):
  stage = wd.ShardedStage(
    ctx.path("sample"),
    "sample",
    config=__import__("glore_jax.fingerprint").fingerprint.record(ctx.config, "sample"),
    num_items=2,
    shard_size=1,
  )
  stage.run([{"a": 1}, {"a": 2}], lambda chunk: chunk)
  wd.mark_done(ctx.path("sample"))


def test_samples_of_another_policy_are_not_read(tmp_path):
  ctx = make_ctx(tmp_path, micro_config())
  _finished_sample_stage(ctx)
  assert sharded.read(ctx, "sample", "label") == [{"a": 1}, {"a": 2}]
  ctx.config.policy.train.steps = 61  # the samples came from a policy trained 60 steps
  with pytest.raises(Exception) as e:
    sharded.read(ctx, "sample", "label")
  assert "policy.train.steps: 60 -> 61" in str(e.value)
  assert getattr(e.value, "exit_code", None) == 3


def test_resuming_half_trained_model_with_another_config_refuses(tmp_path):
  """The trainer's own check (library users), besides the stage fingerprint."""
  from glore_jax.model import create_model, preset
  from glore_jax.training import SFTExample, TrainConfig, train
  from glore_jax.training.batch import make_batches

  examples = [SFTExample(list(range(1, 9)), 3) for _ in range(8)]
  batches = make_batches(examples, batch_size=4, kind="lm", pad_id=0, max_length=16, seed=0)
  cfg = TrainConfig(
    learning_rate=1e-3, total_steps=4, checkpoint_every=2, progress=False, async_checkpoint=False
  )

  class StopAfter2:
    def __init__(self):
      self.n = 0

    def __len__(self):
      return len(batches)

    def __getitem__(self, i):
      self.n += 1
      if self.n > 2:
        raise KeyboardInterrupt
      return batches[i]

  with pytest.raises(KeyboardInterrupt):
    train(create_model(preset("tiny"), seed=0), StopAfter2(), cfg, tmp_path)
  other = TrainConfig(**{**cfg.__dict__, "learning_rate": 3e-3})
  with pytest.raises(Exception, match=r"cannot resume .*\(learning_rate: 0.001 -> 0.003\)") as e:
    train(create_model(preset("tiny"), seed=0), batches, other, tmp_path)
  assert getattr(e.value, "exit_code", None) == 3


def test_half_trained_stage_with_another_config_refuses(tmp_path):
  from glore_jax.stages import outputs

  ctx = make_ctx(tmp_path, micro_config())
  assert outputs.start(ctx, "policy") is False  # writes policy/fingerprint.json
  (ctx.path("policy").parent / "train" / "checkpoints" / "30").mkdir(parents=True)
  ctx.config.policy.train.learning_rate = 0.02
  with pytest.raises(Exception, match="policy.train.learning_rate: 0.01 -> 0.02") as e:
    outputs.start(ctx, "policy")
  assert getattr(e.value, "exit_code", None) == 3
  assert (ctx.path("policy").parent / "train" / "checkpoints" / "30").exists()
  ctx.config.recompute = "policy"
  assert outputs.start(ctx, "policy") is False
  assert not (ctx.path("policy").parent / "train").exists()  # discarded, training starts over


def test_batch_and_shard_sizes_may_change_on_resume():
  from glore_jax import fingerprint as fp

  a = micro_config()
  b = micro_config(
    **{"sample.batch_size": 7, "sample.shard_size": 5, "policy.train.checkpoint_every": 7}
  )
  assert all(fp.fingerprint(a, s) == fp.fingerprint(b, s) for s in fp.STAGES)
  c = micro_config(**{"sample.top_p": 0.9})
  changed = [s for s in fp.STAGES if fp.fingerprint(a, s) != fp.fingerprint(c, s)]
  assert (
    changed
    == fp.downstream("sample")
    == [
      "sample",
      "label",
      "train_orm",
      "train_sorm",
      "refine_data",
      "train_global",
      "train_local",
      "evaluate",
    ]
  )


def test_every_top_level_key_is_classified():
  from glore_jax import fingerprint as fp
  from glore_jax.defaults import get_config

  read = {name.split(".")[0] for spec in fp.SPECS.values() for name in spec.reads} | set(fp.SHARED)
  unclassified = set(get_config().keys()) - read - set(fp.RUN_ONLY)
  assert not unclassified, f"add {unclassified} to a stage's reads or to RUN_ONLY in fingerprint.py"


def test_a_run_that_failed_before_any_shard_does_not_block_the_corrected_one(tmp_path):
  """The issue's `top_p=1.5` case: its manifest refused the corrected rerun."""
  from glore_jax import fingerprint as fp
  from glore_jax.stages import outputs

  ctx = make_ctx(tmp_path, micro_config(**{"sample.top_p": 0.5}))
  wd.ShardedStage(
    ctx.path("sample"), "sample", config=fp.record(ctx.config, "sample"), num_items=4, shard_size=2
  )  # started, then failed: a manifest, no shard
  ctx.config.sample.top_p = 0.9
  assert outputs.start(ctx, "sample") is False
  stage = wd.ShardedStage(
    ctx.path("sample"), "sample", config=fp.record(ctx.config, "sample"), num_items=4, shard_size=2
  )
  stage.run([1, 2, 3, 4], lambda chunk: [{"v": v} for v in chunk])
  ctx.config.sample.top_p = 0.5  # now there is finished work under 0.9: refused
  with pytest.raises(Exception, match="sample.top_p: 0.9 -> 0.5"):
    outputs.start(ctx, "sample")
