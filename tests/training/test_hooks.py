"""The loop's every-N-steps hooks and its throughput meter, on their own (no model)."""

import pytest

from glore_jax.training.hooks import Hooks, StepInfo
from glore_jax.training.throughput import Throughput


def ran(hooks_args, steps, force=lambda s: False):
  calls = []
  hooks = Hooks()
  for name, every, aligned in hooks_args:
    hooks.add(lambda info, n=name: calls.append((n, info.step)), every=every, aligned=aligned)
  for s in steps:
    hooks.run(StepInfo(s, {}), force=force(s))
  return calls


def test_aligned_hooks_run_at_multiples_of_their_period_in_order_added():
  calls = ran([("eval", 3, True), ("save", 2, True)], range(1, 7))
  assert calls == [("save", 2), ("eval", 3), ("save", 4), ("eval", 6), ("save", 6)]


def test_a_resumed_run_meets_the_same_aligned_steps():
  assert ran([("save", 4, True)], range(6, 13)) == [("save", 8), ("save", 12)]


def test_period_zero_runs_only_when_forced():
  assert ran([("eval", 0, True)], range(1, 6), force=lambda s: s == 5) == [("eval", 5)]


def test_unaligned_hook_counts_from_its_last_run_forced_ones_included():
  # the log: forced at the first step (3, a resumed run) and the last (9); a window of 4 between
  calls = ran([("log", 4, False)], range(3, 10), force=lambda s: s in (3, 9))
  assert calls == [("log", 3), ("log", 7), ("log", 9)]


def test_due_matches_run():
  hooks = Hooks()
  hooks.add(lambda info: None, every=5)
  assert [s for s in range(1, 12) if hooks.due(s)] == [5, 10]
  assert hooks.due(7, force=True)


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_throughput_excludes_compilation_and_pauses_and_estimates_the_rest():
  clock = Clock()
  meter = Throughput(start=0, total_steps=10, clock=clock)
  clock.now += 30.0  # step 1: compilation
  meter.add(tokens=100, slots=200, loss=4.0)
  first = meter.close_window(1)
  assert first["train/tokens_per_s"] == pytest.approx(100 / 30.0)
  assert first["train/padding"] == pytest.approx(0.5)
  assert meter.tokens_per_s is None  # the first window is not counted
  assert first["train/eta_s"] == pytest.approx(9 * 30.0)  # nothing better known yet
  for loss in (3.0, 1.0):  # steps 2 and 3: 2 s each, plus a 50 s evaluation between
    clock.now += 2.0
    meter.add(tokens=150, slots=150, loss=loss)
    with meter.paused():
      clock.now += 50.0
  record = meter.close_window(3)
  assert record["train/loss"] == pytest.approx(2.0)
  assert record["train/tokens_per_s"] == pytest.approx(300 / 4.0)
  assert record["train/padding"] == pytest.approx(0.0)
  assert meter.tokens_per_s == pytest.approx(300 / 4.0)
  assert record["train/eta_s"] == pytest.approx(7 * 2.0)
