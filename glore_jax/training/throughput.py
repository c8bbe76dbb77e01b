"""Training throughput: tokens/s and padding over the steps since the last log, the run's
tokens/s, and the time left; evaluation and checkpointing pauses are not counted."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


class Throughput:
  """Counts the tokens of checked steps and the training time they took.

  The first window (the run's first step) includes compilation, so it is left out of the run's
  tokens/s and of the ETA.

  Args:
    start: the step the run starts from (0, or the resumed checkpoint's).
    total_steps: the step the run ends at.
    clock: seconds, monotonic (injectable for tests).
  """

  def __init__(
    self, *, start: int, total_steps: int, clock: Callable[[], float] = time.perf_counter
  ):
    self.start, self.total_steps, self.clock = start, total_steps, clock
    self.run_tokens, self.run_time, self.run_steps = 0, 0.0, 0
    self._open_window(clock())

  def _open_window(self, now: float) -> None:
    self.window_start = now
    self.tokens = self.slots = self.steps = 0
    self.loss_sum = 0.0

  def add(self, *, tokens: int, slots: int, loss: float) -> None:
    """One checked step: its real (unpadded) tokens, its token slots and its mean loss."""
    self.tokens += tokens
    self.slots += slots
    self.steps += 1
    self.loss_sum += loss

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Time spent inside (evaluation, checkpointing) is not training time."""
    began = self.clock()
    try:
      yield
    finally:
      self.window_start += self.clock() - began

  def close_window(self, step: int) -> dict[str, float]:
    """The window's record, `train/loss` (mean), `train/tokens_per_s`, `train/padding` and
    `train/eta_s`, and a new window from now.

    Args:
      step: the last step in the window.
    """
    now = self.clock()
    elapsed = max(now - self.window_start, 1e-9)
    if step > self.start + 1:  # the first window includes compilation
      self.run_tokens += self.tokens
      self.run_time += elapsed
      self.run_steps += self.steps
    record = {
      "train/loss": self.loss_sum / self.steps,
      "train/tokens_per_s": self.tokens / elapsed,
      "train/padding": 1.0 - self.tokens / max(self.slots, 1),
      "train/eta_s": self.eta_s(step, elapsed / self.steps),
    }
    self._open_window(now)
    return record

  def eta_s(self, step: int, fallback_step_s: float) -> float:
    """Seconds to `total_steps` at the run's mean step time (the window's before there is one).

    Args:
      step: the last checked step.
      fallback_step_s: seconds per step to use while the run has no compile-free window yet.
    """
    step_s = self.run_time / self.run_steps if self.run_steps else fallback_step_s
    return max(self.total_steps - step, 0) * step_s

  @property
  def tokens_per_s(self) -> float | None:
    """The run's tokens/s over its compile-free windows; None before there is one."""
    return self.run_tokens / self.run_time if self.run_time else None
