"""Prompt formats for every model input in GLoRe, in one place, as plain-text templates.

Inputs are templates (overridable from the config); targets are lists of steps, so a trainer
encodes any example the same way: `encode_steps(tokenizer, prompt, target_steps)`. The reward model
reads the same prompt as the policy by default, so the value head scores exactly the stream the
policy produced. Templates should end with a newline: it keeps the prompt/solution boundary on a
token boundary for every tokenizer (`encode_steps` raises otherwise).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping, Sequence
from typing import Any

from glore_jax.data.steps import join_steps, split_steps

__all__ = ["DEFAULT_TEMPLATES", "PromptFormat"]

DEFAULT_TEMPLATES = {
  "policy": "Question: {question}\nAnswer:\n",
  "reward": "Question: {question}\nAnswer:\n",
  "global_refine": "Question: {question}\nDraft:\n{draft}\nImproved answer:\n",
  "local_refine": "Question: {question}\nDraft:\n{draft}\nImproved answer from {marker}:\n",
}
_REQUIRED = {
  "policy": {"question"},
  "reward": {"question"},
  "global_refine": {"question", "draft"},
  "local_refine": {"question", "draft"},
}
_ALLOWED = {"question", "draft", "marker"}


def _check_template(kind: str, template: str) -> None:
  if not isinstance(template, str):
    raise TypeError(f"prompt template {kind!r} must be a string, got {type(template).__name__}")
  try:
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
  except ValueError as e:
    raise ValueError(f"prompt template {kind!r} is malformed: {e}") from e
  bad = fields - _ALLOWED
  if bad:  # also rejects attribute/index access such as {question.__class__}
    raise ValueError(
      f"prompt template {kind!r} uses unknown field(s) {sorted(bad)}; allowed: {sorted(_ALLOWED)}"
    )
  missing = _REQUIRED[kind] - fields
  if missing:
    raise ValueError(f"prompt template {kind!r} must contain {sorted(missing)}")


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """All prompt templates plus the step separator and the local refiner's marker."""

  policy: str = DEFAULT_TEMPLATES["policy"]
  reward: str = DEFAULT_TEMPLATES["reward"]
  global_refine: str = DEFAULT_TEMPLATES["global_refine"]
  local_refine: str = DEFAULT_TEMPLATES["local_refine"]
  marker: str = "[BAD]"
  separator: str = "\n"
  marker_as_token: bool = False  # make the marker one added token (tokenizer.add_marker_token)

  def __post_init__(self) -> None:
    for kind in _REQUIRED:
      _check_template(kind, getattr(self, kind))
    if not self.marker or self.separator in self.marker:
      raise ValueError(f"marker must be non-empty and free of the separator: {self.marker!r}")

  @classmethod
  def from_config(cls, config: Mapping[str, Any] | Any | None = None) -> PromptFormat:
    """From a dict (or ml_collections ConfigDict) with any of the dataclass field names."""
    if config is None:
      return cls()
    if hasattr(config, "to_dict"):
      config = config.to_dict()
    config = dict(config)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
      raise ValueError(f"unknown prompt option(s) {unknown}; known: {sorted(known)}")
    return cls(**config)

  def _fill(self, template: str, **values: str) -> str:
    return template.format(marker=self.marker, **values)

  # --- policy (SFT and sampling) -----------------------------------------------------------
  def policy_prompt(self, question: str) -> str:
    """The policy's prompt for `question` (no solution yet)."""
    return self._fill(self.policy, question=question, draft="")

  # --- ORM / SORM scoring: prompt + the solution's steps, labels at step terminators ---------
  def reward_prompt(self, question: str) -> str:
    """The ORM / SORM prompt for `question`; the solution's steps follow it."""
    return self._fill(self.reward, question=question, draft="")

  # --- global refiner: (question, draft) -> a whole new solution ----------------------------
  def global_refine_input(self, question: str, draft_steps: Sequence[str]) -> str:
    """The global refiner's prompt: the question and the whole draft.

    Args:
      question: the question text.
      draft_steps: the draft's steps.
    """
    return self._fill(
      self.global_refine, question=question, draft=join_steps(draft_steps, self.separator)
    )

  def global_refine_target(self, solution_steps: Sequence[str]) -> list[str]:
    """The global refiner's target: the whole correct solution."""
    return list(solution_steps)

  # --- local refiner: (question, draft with marker before the first bad step) -> the rest ----
  def mark_draft(self, draft_steps: Sequence[str], bad_index: int) -> str:
    """The draft with the marker in front of step `bad_index` (0-based): "[BAD] step text".

    Args:
      draft_steps: the draft's steps.
      bad_index: the first wrong step (0-based).

    Raises:
      IndexError: `bad_index` is not a step of the draft.
    """
    _check_index(bad_index, len(draft_steps), "draft")
    steps = list(draft_steps)
    steps[bad_index] = f"{self.marker} {steps[bad_index]}"
    return join_steps(steps, self.separator)

  def local_refine_input(self, question: str, draft_steps: Sequence[str], bad_index: int) -> str:
    """The local refiner's prompt: the question and the draft marked at its first bad step.

    Args:
      question: the question text.
      draft_steps: the draft's steps.
      bad_index: the first wrong step (0-based), marked with `self.marker`.

    Raises:
      IndexError: `bad_index` is not a step of the draft.
    """
    return self._fill(
      self.local_refine, question=question, draft=self.mark_draft(draft_steps, bad_index)
    )

  def local_refine_target(self, corrected_steps: Sequence[str], bad_index: int) -> list[str]:
    """The corrected solution from the marker on: steps `bad_index..` of a correct rollout
    that shares the draft's first `bad_index` steps (the prefix P_i).

    Args:
      corrected_steps: the steps of the correct rollout.
      bad_index: the first wrong step of the draft (0-based).

    Raises:
      IndexError: `bad_index` is not a step of `corrected_steps`.
    """
    _check_index(bad_index, len(corrected_steps), "corrected solution")
    return list(corrected_steps[bad_index:])

  def apply_local_refinement(
    self, draft_steps: Sequence[str], bad_index: int, output_text: str
  ) -> list[str]:
    """The full refined solution: the draft's steps before the marker + the refiner output.

    Args:
      draft_steps: the draft's steps.
      bad_index: the marked step (0-based); the draft's steps from it on are replaced.
      output_text: the local refiner's generated text (the steps from the marker on).

    Raises:
      IndexError: `bad_index` is not a step of the draft.
    """
    _check_index(bad_index, len(draft_steps), "draft")
    return list(draft_steps[:bad_index]) + split_steps(output_text, self.separator)


def _check_index(index: int, n: int, what: str) -> None:
  if not 0 <= index < n:
    raise IndexError(f"bad_index {index} out of range for a {what} of {n} steps")
