"""The label stage against a scripted policy: exact hard and soft SORM labels, the three
post-processing rules, and the balancing counts the SORM is then trained on.

The fake sampler stands behind the real interface (`rollouts_from_prefixes_batch` returning
`glore_jax.sampling.Rollouts`); which of its K rollouts from each prefix are correct, and
whether they build on the prefix, is scripted per (question, sample, prefix), so every label is
known by hand. The stage itself (segmentation of sampled tokens into step prefixes, grading,
shards, statistics) runs unchanged.
"""

from __future__ import annotations

import pytest

from glore_jax import fingerprint
from glore_jax import workdir as wd
from glore_jax.data.steps import encode_steps
from glore_jax.sampling import Rollouts, Sample
from glore_jax.stages import label as label_stage
from glore_jax.stages import outputs, train_reward
from glore_jax.stages.common import problems, tokenizer_for

from .conftest import make_ctx, micro_config

K = 4
WRONG = "777"  # micro golds are <= 99, so never equal to WRONG or to the step results below
S0, S1, S1b = "Tom has 1000+234=1234 pens.", "Now 5555-1234=4321 pens.", "So 4321 pens in all."
RESULTS = {S0: "1234", S1: "4321", S1b: "4321"}

# (question_index, sample_index) -> (steps, outcome, rollout kinds per prefix except the last)
# C: correct and builds on the prefix (the step's result reappears); I: correct but ignores the
# prefix; W: wrong. "{gold}" is the question's gold answer.
SCRIPT = {
  (0, 0): ([S0, S1, f"#### {WRONG}"], False, ["CWIW", "WWWW"]),
  (0, 1): ([S0, S1b, f"#### {WRONG}"], False, ["WWWW", "CCWI"]),
  (1, 0): ([S0, S1, "#### {gold}"], True, ["IIII", "WIWW"]),
  (1, 1): ([S0, f"#### {WRONG}"], False, ["CCCC"]),
  (2, 0): (["#### {gold}"], True, []),
}
ORDER = list(SCRIPT)

# Expected labels: {(consistency, propagate_positive): {id: (hard, soft)}}.
EXPECTED = {
  (True, False): {
    (0, 0): ([1, 0, 0], [0.25, 0, 0]),
    (0, 1): ([0, 1, 0], [0, 0.5, 0]),
    (1, 0): ([0, 0, 1], [0, 0, 1]),
    (1, 1): ([1, 0], [1, 0]),
    (2, 0): ([1], [1]),
  },
  (True, True): {
    (0, 0): ([1, 0, 0], [0.25, 0, 0]),
    (0, 1): ([1, 1, 0], [0, 0.5, 0]),
    (1, 0): ([1, 1, 1], [0, 0, 1]),
    (1, 1): ([1, 0], [1, 0]),
    (2, 0): ([1], [1]),
  },
  (False, False): {
    (0, 0): ([1, 0, 0], [0.5, 0, 0]),
    (0, 1): ([0, 1, 0], [0, 0.75, 0]),
    (1, 0): ([1, 1, 1], [1, 0.25, 1]),
    (1, 1): ([1, 0], [1, 0]),
    (2, 0): ([1], [1]),
  },
  (False, True): {
    (0, 0): ([1, 0, 0], [0.5, 0, 0]),
    (0, 1): ([1, 1, 0], [0, 0.75, 0]),
    (1, 0): ([1, 1, 1], [1, 0.25, 1]),
    (1, 1): ([1, 0], [1, 0]),
    (2, 0): ([1], [1]),
  },
}


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizer_for(micro_config())  # what the stage uses (no tokenizer in the policy folder)


@pytest.fixture(scope="module")
def train_problems():
  return problems(micro_config(), "train")[:3]


def _steps(key, train_problems):
  steps, outcome, kinds = SCRIPT[key]
  gold = train_problems[key[0]].answer
  return [s.format(gold=gold) for s in steps], outcome, kinds


def _rollout_text(kind: str, step: str, gold: str) -> str:
  result = RESULTS[step]
  return {
    "C": f"So {result} is right.\n#### {gold}",
    "I": f"Start again.\n#### {gold}",
    "W": f"So {result} is right.\n#### {WRONG}",
  }[kind]


def _write_samples(ctx, tokenizer, train_problems):
  """A finished sample stage holding the scripted solutions as generated tokens (+ EOS)."""
  records = []
  for qi, si in ORDER:
    steps, outcome, _ = _steps((qi, si), train_problems)
    tokens = tokenizer("\n".join(steps), add_special_tokens=False)["input_ids"]
    records.append(
      {
        "problem_id": train_problems[qi].id,
        "question_index": qi,
        "sample_index": si,
        "tokens": tokens + [tokenizer.eos_token_id],
        "finish_reason": "eos",
        "text": "\n".join(steps),
        "steps": steps,
        "correct": outcome,
      }
    )
  stage = wd.ShardedStage(
    ctx.path("sample"),
    "sample",
    config=fingerprint.record(ctx.config, "sample"),
    num_items=len(records),
    shard_size=len(records),
  )
  stage.write_shard(0, records)
  wd.mark_done(ctx.path("sample"))
  (ctx.path("policy")).mkdir(parents=True)
  (ctx.path("policy") / "config.json").write_text("{}")  # the stage only loads it through models
  outputs.write_record(ctx, "policy")  # ... and checks its fingerprint


class ScriptedPolicy:
  """`rollouts_from_prefixes_batch` with scripted rollouts; checks what the stage asks for."""

  def __init__(self, ctx, tokenizer, train_problems):
    self.ctx, self.tok, self.problems = ctx, tokenizer, train_problems
    self.calls = []

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
    section = self.ctx.config.sorm
    assert model == "fake-policy"
    assert num_rollouts == section.num_rollouts and max_new_tokens == section.max_new_tokens
    assert kwargs["temperature"] == section.temperature
    assert len(prompt_ids) == len(draft_ids) == len(prefix_ends) == len(example_ids)
    self.calls.append([tuple(e) for e in example_ids])
    out = []
    for prompt, draft, ends, key in zip(prompt_ids, draft_ids, prefix_ends, example_ids):
      key = tuple(key)
      steps, _, kinds = _steps(key, self.problems)
      problem = self.problems[key[0]]
      assert self.tok.decode(prompt, skip_special_tokens=True) == self.ctx.prompts.policy_prompt(
        problem.question
      )
      # one prefix per step but the last, each ending at its step's terminator
      assert len(ends) == len(steps) - 1
      for j, e in enumerate(ends):
        assert self.tok.decode(draft[: e + 1]) == "\n".join(steps[: j + 1]) + "\n", (key, j)
      samples = []
      for j in range(len(ends)):
        row = []
        for kind in kinds[j]:
          text = _rollout_text(kind, steps[j], problem.answer)
          ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
          row.append(Sample(tokens=ids, logprobs=[0.0] * len(ids), finish_reason="eos"))
        samples.append(row)
      out.append(
        Rollouts(
          samples,
          prefill_tokens=len(prompt) + len(draft),
          naive_prefill_tokens=2 * (len(prompt) + len(draft)),
          naive_per_rollout_tokens=2 * K * (len(prompt) + len(draft)),
        )
      )
    return out


def _run_label(tmp_path, monkeypatch, tokenizer, train_problems, **overrides):
  config = micro_config(**{"sorm.num_rollouts": K, "sorm.shard_size": 2, **overrides})
  ctx = make_ctx(tmp_path, config)
  _write_samples(ctx, tokenizer, train_problems)
  fake = ScriptedPolicy(ctx, tokenizer, train_problems)
  monkeypatch.setattr(label_stage, "rollouts_from_prefixes_batch", fake)
  monkeypatch.setattr(label_stage.models, "load", lambda ctx, folder, **kw: "fake-policy")
  label_stage.run(ctx)
  records = wd.read_all(ctx.path("label"))
  return ctx, fake, records


@pytest.mark.parametrize("consistency", [True, False])
@pytest.mark.parametrize("propagate", [True, False])
def test_label_stage_hard_and_soft_labels(
  tmp_path, monkeypatch, tokenizer, train_problems, consistency, propagate
):
  ctx, fake, records = _run_label(
    tmp_path,
    monkeypatch,
    tokenizer,
    train_problems,
    **{"sorm.consistency": consistency, "sorm.propagate_positive": propagate},
  )
  # shard_size 2: three shards, each one batched call, in item order
  assert fake.calls == [ORDER[0:2], ORDER[2:4], ORDER[4:5]]
  assert [(r["question_index"], r["sample_index"]) for r in records] == ORDER
  expected = EXPECTED[(consistency, propagate)]
  for r in records:
    key = (r["question_index"], r["sample_index"])
    steps, outcome, kinds = _steps(key, train_problems)
    hard, soft = expected[key]
    assert r["steps"] == steps, key
    assert r["outcome"] is outcome
    assert r["sorm_hard"] == hard, (key, r["sorm_hard"])
    assert r["sorm_soft"] == pytest.approx(soft), (key, r["sorm_soft"])
    assert r["orm"] == [int(outcome)] * len(steps)
    # the graded rollouts are kept (refine_data builds on them); none after the last step
    assert [[x["correct"] for x in p] for p in r["rollouts"]] == [
      [k != "W" for k in ks] for ks in kinds
    ] + [[]]
    assert all(
      x["text"] == _rollout_text(k, steps[j], train_problems[key[0]].answer)
      for j, ks in enumerate(kinds)
      for x, k in zip(r["rollouts"][j], ks)
    )
  manifest = wd.read_manifest(ctx.path("label"))
  assert manifest["done"] is True
  stats = manifest["summary"]["statistics"]
  positives = [sum(h[j] for h, _ in expected.values() if len(h) > j) for j in range(3)]
  negatives = [sum(1 - h[j] for h, _ in expected.values() if len(h) > j) for j in range(3)]
  assert stats["positives_per_index"] == positives
  assert stats["negatives_per_index"] == negatives
  assert stats["num_solutions"] == 5 and stats["num_correct_solutions"] == 2
  agree = sum(int(h == int(SCRIPT[k][1])) for k, (hs, _) in expected.items() for h in hs)
  assert stats["agreement_with_outcome"] == pytest.approx(agree / 12)


def test_label_stage_reruns_nothing_when_done(tmp_path, monkeypatch, tokenizer, train_problems):
  ctx, fake, records = _run_label(tmp_path, monkeypatch, tokenizer, train_problems)
  timings = (ctx.workdir / "timings.json").read_text()
  fake.calls.clear()
  label_stage.run(ctx)
  assert fake.calls == []
  assert wd.read_all(ctx.path("label")) == records
  assert (ctx.workdir / "timings.json").read_text() == timings  # the first run's timing stands


def _kept_by_index(ctx, tokenizer, records, examples):
  """(kept positives, kept negatives) per step index of the SORM's training examples."""
  questions = {p.id: p.question for p in problems(ctx.config, "train")}
  by_ids = {}
  for r in records:
    enc = encode_steps(
      tokenizer,
      ctx.prompts.reward_prompt(questions[r["problem_id"]]),
      r["steps"],
      max_length=ctx.config.data.max_length,
    )
    by_ids[tuple(enc.ids)] = (r, list(enc.step_ends))
  pos, neg = [0, 0, 0], [0, 0, 0]
  for ex in examples:
    r, ends = by_ids[tuple(ex.ids)]
    for end, y in zip(ex.step_ends, ex.labels):
      j = ends.index(end)
      assert y == r["sorm_hard"][j]  # a kept step keeps its own label
      (pos if y else neg)[j] += 1
  return pos, neg


def test_balancing_counts_per_step_index(tmp_path, monkeypatch, tokenizer, train_problems):
  ctx, _, records = _run_label(
    tmp_path,
    monkeypatch,
    tokenizer,
    train_problems,
    **{"sorm.balance": True, "evaluate.heldout_fraction": 0.0},
  )
  # consistency + propagation: hard labels (0,0) [1,0,0], (0,1) [1,1,0], (1,0) [1,1,1],
  # (1,1) [1,0], (2,0) [1]. Index 0: 5 positives, 0 negatives -> none kept; index 1: 2 and 2 ->
  # all four kept; index 2: 1 positive, 2 negatives -> one of each kept.
  train, heldout = train_reward.reward_examples(ctx, "sorm", tokenizer)
  assert heldout == []
  assert _kept_by_index(ctx, tokenizer, records, train) == ([0, 2, 1], [0, 2, 1])
  assert sum(len(ex.labels) for ex in train) == 6
  # soft targets travel with the kept steps
  for ex in train:
    assert ex.soft is not None and len(ex.soft) == len(ex.labels)

  # without balancing every step is a training label
  ctx.config.sorm.balance = False
  train, _ = train_reward.reward_examples(ctx, "sorm", tokenizer)
  assert _kept_by_index(ctx, tokenizer, records, train) == ([5, 2, 1], [0, 2, 2])


def test_orm_examples_use_the_outcome_at_every_step(
  tmp_path, monkeypatch, tokenizer, train_problems
):
  ctx, _, _ = _run_label(
    tmp_path, monkeypatch, tokenizer, train_problems, **{"evaluate.heldout_fraction": 0.0}
  )
  train, _ = train_reward.reward_examples(ctx, "orm", tokenizer)
  samples = wd.read_all(ctx.path("sample"))
  assert [list(ex.labels) for ex in train] == [
    [float(s["correct"])] * len(s["steps"]) for s in samples
  ]
