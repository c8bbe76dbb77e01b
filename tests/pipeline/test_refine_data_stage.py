"""Refiner data at the stage level: global pairs and local triples from hand-made label records,
the stage's stored rows, and the tokenized refiner examples with the [BAD] marker in place."""

from __future__ import annotations

import pytest

from glore_jax import fingerprint
from glore_jax import workdir as wd
from glore_jax.stages import refine_data, train_refiner
from glore_jax.stages.common import problems, tokenizer_for

from .conftest import make_ctx, micro_config

A0, A1 = "Tom has 1000+234=1234 pens.", "Now 5555-1234=4321 pens."
B0 = "Ann has 2000+468=2468 cups."


def ro(text, correct):
  return {"text": text, "correct": correct}


@pytest.fixture(scope="module")
def probs():
  return problems(micro_config(), "train")[:3]


def label_records(probs):
  """Label-stage records (steps, outcome, rollouts per prefix, SORM labels), by hand."""
  (p0, g0), (p1, g1), (p2, g2) = [(p.id, p.answer) for p in probs]
  wrong1 = [A0, A1, "#### 777"]
  return [
    # P0: a wrong draft whose prefix P_0 is still good (a consistent correct rollout from it)
    {
      "problem_id": p0,
      "steps": wrong1,
      "outcome": False,
      "sorm_hard": [1, 0, 0],
      "sorm_soft": [0.5, 0.0, 0.0],
      "rollouts": [
        [ro(f"So 1234 and 9.\n#### {g0}", True), ro("Oops 3.\n#### 777", False)],
        [ro("#### 777", False), ro("#### 778", False)],
        [],
      ],
    },
    # P0: a correct solution
    {
      "problem_id": p0,
      "steps": ["Tom has 1234 pens.", f"#### {g0}"],
      "outcome": True,
      "sorm_hard": [1, 1],
      "sorm_soft": [1.0, 1.0],
      "rollouts": [[ro(f"#### {g0}", True)] * 2, []],
    },
    # P0: the same wrong draft sampled again
    {
      "problem_id": p0,
      "steps": wrong1,
      "outcome": False,
      "sorm_hard": [1, 0, 0],
      "sorm_soft": [0.5, 0.0, 0.0],
      "rollouts": [
        [ro(f"So 1234 and 9.\n#### {g0}", True), ro("#### 1", False)],
        [ro("#### 2", False)] * 2,
        [],
      ],
    },
    # P0: a wrong draft that is bad from its first step
    {
      "problem_id": p0,
      "steps": ["Bad start 5.", "#### 778"],
      "outcome": False,
      "sorm_hard": [0, 0],
      "sorm_soft": [0.0, 0.0],
      "rollouts": [[ro("#### 3", False)] * 2, []],
    },
    # P1: wrong only; the one correct rollout from P_0 ignores the prefix (no 2468 in it)
    {
      "problem_id": p1,
      "steps": [B0, "#### 779"],
      "outcome": False,
      "sorm_hard": [1, 0],
      "sorm_soft": [0.5, 0.0],
      "rollouts": [[ro(f"Start over.\n#### {g1}", True), ro("#### 4", False)], []],
    },
    # P2: correct only
    {
      "problem_id": p2,
      "steps": [f"#### {g2}"],
      "outcome": True,
      "sorm_hard": [1],
      "sorm_soft": [1.0],
      "rollouts": [[]],
    },
  ]


def _pairs(pairs):
  return sorted((p.problem_id, tuple(p.draft_steps), tuple(p.target_steps)) for p in pairs)


def test_global_pairs_and_local_triples(tmp_path, probs):
  ctx = make_ctx(tmp_path, micro_config())
  (p0, g0), (p1, g1), _ = [(p.id, p.answer) for p in probs]
  records = label_records(probs)
  pairs, triples, counts = refine_data.build(ctx, records)
  correct0 = ("Tom has 1234 pens.", f"#### {g0}")
  # every distinct wrong solution of P0 paired with its one correct solution; P1 has no correct
  # solution and P2 no wrong one, so neither gives a pair
  assert _pairs(pairs) == sorted(
    [(p0, (A0, A1, "#### 777"), correct0), (p0, ("Bad start 5.", "#### 778"), correct0)]
  )
  assert counts["global_pairs"] == 2 and counts["global_questions_with_pairs"] == 1
  assert counts["global_questions_without_correct"] == 1
  assert counts["global_questions_without_incorrect"] == 1

  got = sorted(
    (t.problem_id, tuple(t.draft_steps), t.bad_index, tuple(t.target_steps)) for t in triples
  )
  assert got == sorted(
    [
      # P_0 positive, P_1 negative: the marker goes before step 1; the target keeps step 0 and
      # continues with the correct rollout from P_0
      (p0, (A0, A1, "#### 777"), 1, (A0, "So 1234 and 9.", f"#### {g0}")),
      # no positive prefix: the marker goes before step 0, the target is a correct solution
      (p0, ("Bad start 5.", "#### 778"), 0, correct0),
    ]
  )
  assert counts["local_triples"] == 2
  assert counts["local_from_rollout"] == 1 and counts["local_from_empty_prefix"] == 1
  assert counts["local_duplicate_drafts"] == 1
  assert counts["local_no_correct_rollout"] == 1  # P1: its only correct rollout is inconsistent

  # Without the consistency rule, P1's correct rollout is a valid continuation.
  ctx.config.sorm.consistency = False
  _, triples, counts = refine_data.build(ctx, records)
  assert (p1, (B0, "#### 779"), 1, (B0, "Start over.", f"#### {g1}")) in [
    (t.problem_id, tuple(t.draft_steps), t.bad_index, tuple(t.target_steps)) for t in triples
  ]
  assert counts["local_triples"] == 3 and counts["local_no_correct_rollout"] == 0

  # The pair cap applies per question.
  ctx.config.sorm.consistency = True
  ctx.config.refine.max_pairs_per_question = 1
  pairs, _, counts = refine_data.build(ctx, records)
  assert len(pairs) == 1 and counts["global_pairs"] == 1
  assert pairs[0].target_steps == list(correct0)


def test_build_does_not_depend_on_record_order(tmp_path, probs):
  ctx = make_ctx(tmp_path, micro_config())
  records = label_records(probs)
  a = refine_data.build(ctx, records)
  b = refine_data.build(ctx, records[::-1])
  assert _pairs(a[0]) == _pairs(b[0])
  assert sorted(map(repr, a[1])) == sorted(map(repr, b[1]))
  assert a[2] == b[2]


def _finished_label_stage(ctx, records):
  stage = wd.ShardedStage(
    ctx.path("label"),
    "label",
    config=fingerprint.record(ctx.config, "label"),
    num_items=len(records),
    shard_size=4,
  )
  stage.run(records, lambda chunk: chunk)
  wd.mark_done(ctx.path("label"))


def test_refiner_examples_put_the_marker_before_the_bad_step(tmp_path, probs):
  ctx = make_ctx(tmp_path, micro_config())
  _finished_label_stage(ctx, label_records(probs))
  refine_data.run(ctx)
  pairs, triples, counts = refine_data.build(ctx, wd.read_all(ctx.path("label")))
  assert wd.read_manifest(ctx.path("refine_data"))["summary"] == counts
  local_rows = refine_data.read_examples(ctx, "local", "train_local")
  global_rows = refine_data.read_examples(ctx, "global", "train_global")
  assert len(local_rows) == len(triples) == 2 and len(global_rows) == len(pairs) == 2

  questions = {p.id: p.question for p in probs}
  marker = ctx.config.prompts.marker
  tok = tokenizer_for(ctx.config, None, with_marker=True)
  marker_id = tok.convert_tokens_to_ids(marker)
  assert marker_id == len(tok) - 1  # one added token, not five characters

  examples = train_refiner.refiner_examples(ctx, "local", tok, local_rows)
  assert len(examples) == len(local_rows)
  for row, ex in zip(local_rows, examples):
    prompt, target = ex.ids[: ex.prompt_length], ex.ids[ex.prompt_length :]
    draft, i = row["draft_steps"], row["bad_index"]
    # the marker: once before step i of the draft, once in the instruction ("from [BAD]:")
    where = [k for k, t in enumerate(prompt) if t == marker_id]
    assert len(where) == 2
    before = tok.decode(prompt[: where[0]], skip_special_tokens=True)
    after = tok.decode(prompt[where[0] + 1 :], skip_special_tokens=False)
    assert before == (
      f"Question: {questions[row['problem_id']]}\nDraft:\n" + "".join(s + "\n" for s in draft[:i])
    )
    assert after.startswith(" " + "\n".join(draft[i:]) + "\nImproved answer from ")
    assert marker not in tok.decode([t for t in prompt if t != marker_id])  # not spelled out
    # the target: the corrected solution from the marker on, then EOS
    assert target[-1] == tok.eos_token_id
    assert tok.decode(target[:-1]) == "\n".join(row["target_steps"][i:])

  g_examples = train_refiner.refiner_examples(ctx, "global", tok, global_rows)
  for row, ex in zip(global_rows, g_examples):
    prompt, target = ex.ids[: ex.prompt_length], ex.ids[ex.prompt_length :]
    assert marker_id not in prompt
    assert tok.decode(prompt, skip_special_tokens=True) == (
      f"Question: {questions[row['problem_id']]}\nDraft:\n"
      + "\n".join(row["draft_steps"])
      + "\nImproved answer:\n"
    )
    assert tok.decode(target[:-1]) == "\n".join(row["target_steps"])
