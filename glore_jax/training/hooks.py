"""Hooks the training loop runs every N steps (logging, evaluation, checkpointing), in the manner
of levanter's `TrainerHooks`: each hook is a function of the step with a period, and a forced run
(the final step) runs every hook."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping


@dataclasses.dataclass(frozen=True)
class StepInfo:
  """What a hook sees: the step just completed (1-based) and its metrics, read back and checked
  finite (`loss`, `grad_norm`, `learning_rate`, `count`, `finite`)."""

  step: int
  metrics: Mapping[str, float]


@dataclasses.dataclass
class Hook:
  """`fn(info)` every `every` steps; `every=0` runs it only when forced.

  Args:
    fn: called with the step's `StepInfo`.
    every: the period in steps; 0 for never but when forced.
    aligned: True counts steps from 0 (runs at multiples of `every`, so a resumed run evaluates
      and checkpoints at the same steps as an uninterrupted one); False counts from the hook's
      last run, forced ones included (the log: a window of `every` steps after the first step).
  """

  fn: Callable[[StepInfo], None]
  every: int
  aligned: bool = True
  last: int | None = None  # the step it last ran at

  def due(self, step: int, *, force: bool = False) -> bool:
    """Whether the hook runs at `step` (always when `force`)."""
    if force:
      return True
    if self.every <= 0:
      return False
    if self.aligned:
      return step % self.every == 0
    return self.last is not None and step - self.last >= self.every


class Hooks:
  """An ordered list of hooks; the ones due at a step run in the order they were added."""

  def __init__(self) -> None:
    self.hooks: list[Hook] = []

  def add(self, fn: Callable[[StepInfo], None], *, every: int, aligned: bool = True) -> None:
    """Adds `fn(step)`, run every `every` steps (0: only when forced).

    Args:
      fn: the hook.
      every: its period in steps.
      aligned: see `Hook`.
    """
    self.hooks.append(Hook(fn, every, aligned))

  def due(self, step: int, *, force: bool = False) -> bool:
    """Whether any hook runs at `step`."""
    return any(h.due(step, force=force) for h in self.hooks)

  def run(self, info: StepInfo, *, force: bool = False) -> None:
    """Runs the hooks due at `info.step` (all of them when `force`).

    Args:
      info: the step just completed.
      force: run every hook (the first or the final step).
    """
    for hook in self.hooks:
      if hook.due(info.step, force=force):
        hook.fn(info)
        hook.last = info.step
