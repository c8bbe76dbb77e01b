"""The trainer's metrics hook feeds Weights & Biases when config.tracking.wandb is set (a fake
`wandb` module stands in: the tests never reach the network)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from glore_jax import tracking
from glore_jax.config_check import ConfigError, validate
from glore_jax.defaults import get_config
from glore_jax.model import create_model, preset
from glore_jax.training import SFTExample, TrainConfig, make_batches, train


class _FakeRun:
  def __init__(self):
    self.logged, self.metrics = [], []

  def define_metric(self, name, step_metric=None):
    self.metrics.append((name, step_metric))

  def log(self, record):
    self.logged.append(record)


@pytest.fixture
def fake_wandb(monkeypatch):
  module = types.ModuleType("wandb")
  run = _FakeRun()
  module.init = lambda **kwargs: (module.inits.append(kwargs), run)[1]
  module.inits = []
  monkeypatch.setitem(sys.modules, "wandb", module)
  monkeypatch.setattr(tracking, "_RUN", {})
  monkeypatch.setattr(tracking, "_wandb_installed", lambda: True)
  return module, run


def test_no_tracker_by_default():
  assert tracking.metrics_hook(get_config(), "policy") is None


def test_a_missing_wandb_is_a_config_error(monkeypatch):
  monkeypatch.setattr(tracking, "_wandb_installed", lambda: False)
  config = get_config()
  config.tracking.wandb = True
  with pytest.raises(ConfigError, match=r'pip install "glore-jax\[wandb\]"'):
    validate(config)


def test_training_metrics_reach_wandb(fake_wandb, tmp_path):
  module, run = fake_wandb
  config = get_config()
  config.tracking.update(wandb=True, wandb_project="p", wandb_group="g")
  hook = tracking.metrics_hook(config, "policy")
  rng = np.random.default_rng(0)
  examples = [SFTExample([1] + rng.integers(8, 64, size=11).tolist(), 3) for _ in range(8)]
  batches = make_batches(examples, batch_size=4, kind="lm", shuffle=False)
  cfg = TrainConfig(
    total_steps=2,
    checkpoint_every=2,
    log_every=1,
    learning_rate=1e-3,
    shuffle=False,
    progress=False,
  )
  model = create_model(preset("tiny"), seed=0)
  _, metrics = train(model, batches, cfg, tmp_path, metrics_hook=hook)
  assert module.inits[0]["project"] == "p" and module.inits[0]["group"] == "g"
  assert ("policy/*", "policy/step") in run.metrics
  assert [r["policy/step"] for r in run.logged] == [1, 2]
  losses = [h["train/loss"] for h in metrics["history"]]
  assert [r["policy/train/loss"] for r in run.logged] == losses
  # a second stage shares the process's run, on its own step axis
  tracking.metrics_hook(config, "orm")(1, {"train/loss": 0.5})
  assert len(module.inits) == 1 and run.logged[-1] == {"orm/step": 1, "orm/train/loss": 0.5}
