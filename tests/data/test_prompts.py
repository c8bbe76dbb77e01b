"""Prompt formats: defaults, overrides from config, and the local refiner's marker handling."""

from __future__ import annotations

import pytest

from glore_jax.data.prompts import DEFAULT_TEMPLATES, PromptFormat
from glore_jax.data.steps import encode_steps, join_steps

Q = "Tom has 3 boxes of 12 apples. He buys 5 more. How many apples does Tom have?"
DRAFT = ["Tom has 3*12=35 apples.", "He has 35+5=40 apples.", "#### 40"]
FIXED = ["Tom has 3*12=36 apples.", "He has 36+5=41 apples.", "#### 41"]


def test_default_formats():
  f = PromptFormat()
  assert f.policy_prompt(Q) == f"Question: {Q}\nAnswer:\n"
  assert f.reward_prompt(Q) == f.policy_prompt(Q)  # the ORM scores the policy's own stream
  assert f.global_refine_input(Q, DRAFT) == (
    f"Question: {Q}\nDraft:\n{join_steps(DRAFT)}\nImproved answer:\n"
  )
  assert f.global_refine_target(FIXED) == FIXED


def test_local_refiner_marks_the_first_wrong_step():
  f = PromptFormat()
  assert f.mark_draft(DRAFT, 1) == (
    "Tom has 3*12=35 apples.\n[BAD] He has 35+5=40 apples.\n#### 40"
  )
  text = f.local_refine_input(Q, DRAFT, 0)
  assert text == (
    f"Question: {Q}\nDraft:\n[BAD] Tom has 3*12=35 apples.\n"
    f"He has 35+5=40 apples.\n#### 40\nImproved answer from [BAD]:\n"
  )
  assert text.count("[BAD]") == 2
  # Target: the corrected solution from the marker on; the prefix before it is shared.
  assert f.local_refine_target(FIXED, 0) == FIXED
  assert f.local_refine_target(FIXED, 2) == ["#### 41"]
  assert f.apply_local_refinement(DRAFT, 1, "He has 36+5=41 apples.\n#### 41") == [
    DRAFT[0],
    "He has 36+5=41 apples.",
    "#### 41",
  ]
  for bad in (-1, 3):
    with pytest.raises(IndexError, match="out of range"):
      f.local_refine_input(Q, DRAFT, bad)
    with pytest.raises(IndexError):
      f.local_refine_target(FIXED, bad)


def test_overrides_from_config():
  cfg = {
    "policy": "Q: {question}\nA:\n",
    "marker": "<<ERR>>",
    "local_refine": "{question}|{draft}|{marker}\n",
  }
  f = PromptFormat.from_config(cfg)
  assert f.policy_prompt("x") == "Q: x\nA:\n"
  assert f.global_refine == DEFAULT_TEMPLATES["global_refine"]
  assert f.local_refine_input("x", ["a", "b"], 1) == "x|a\n<<ERR>> b|<<ERR>>\n"

  class FakeConfigDict:  # ml_collections.ConfigDict exposes to_dict()
    def to_dict(self):
      return {"reward": "R {question}\n"}

  assert PromptFormat.from_config(FakeConfigDict()).reward_prompt("x") == "R x\n"
  assert PromptFormat.from_config(None) == PromptFormat()


def test_questions_with_braces_are_literal():
  f = PromptFormat()
  assert f.policy_prompt("what is {x} or {question.__class__}?") == (
    "Question: what is {x} or {question.__class__}?\nAnswer:\n"
  )


@pytest.mark.parametrize(
  "cfg, words",
  [
    ({"policy": "no field"}, "must contain"),
    ({"global_refine": "{question}"}, "must contain \\['draft'\\]"),
    ({"policy": "{question.__class__}"}, "unknown field"),
    ({"policy": "{question} {answer}"}, "unknown field"),
    ({"policy": "{question"}, "malformed"),
    ({"marker": ""}, "marker"),
    ({"colour": "red"}, "unknown prompt option"),
  ],
)
def test_bad_templates_are_rejected(cfg, words):
  with pytest.raises(ValueError, match=words):
    PromptFormat.from_config(cfg)


def test_every_format_encodes_with_exact_boundaries(embedded_tok, llama_tok):
  f = PromptFormat()
  for tok in (embedded_tok, llama_tok):
    for prompt, target in [
      (f.policy_prompt(Q), FIXED),
      (f.global_refine_input(Q, DRAFT), f.global_refine_target(FIXED)),
      (f.local_refine_input(Q, DRAFT, 1), f.local_refine_target(FIXED, 1)),
    ]:
      enc = encode_steps(tok, prompt, target)
      assert len(enc.step_ends) == len(target)
      assert tok.decode(enc.ids[enc.prompt_length : enc.step_ends[0] + 1]) == target[0] + "\n"


def test_marker_token_only_when_asked():
  from glore_jax.data.tokenizer import add_marker_token, embedded_tokenizer

  tok = embedded_tokenizer()
  assert add_marker_token(tok, PromptFormat()) is None and len(tok) == 100
  f = PromptFormat.from_config({"marker_as_token": True})
  bad = add_marker_token(tok, f)
  assert bad == 100 and len(tok) == 101
  ids = tok(f.local_refine_input("q", ["a", "b"], 1))["input_ids"]
  assert ids.count(bad) == 2
