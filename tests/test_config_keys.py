"""The config key table (glore_jax/config_keys.py) is the one source of the defaults, the per-key
checks, the trainer's settings and `--describe`; every shipped config file loads and validates."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glore_jax import config_keys
from glore_jax.config_check import ConfigError, validate
from glore_jax.config_files import load_config_file
from glore_jax.config_keys import KEYS, SECTIONS, TRAIN_FIELDS, Key, describe
from glore_jax.defaults import get_config
from glore_jax.fingerprint import flatten

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p.name for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")


def test_defaults_are_the_table():
  defaults = flatten(get_config())
  assert list(defaults) == sorted(KEYS)  # every key once, no other
  for name, key in KEYS.items():
    assert defaults[name] == key.default and type(defaults[name]) is key.type, name
  validate(get_config())


def test_every_key_has_a_doc_and_a_rule_its_default_passes():
  for name, key in KEYS.items():
    assert key.doc.strip() and "\n" not in key.doc, name
    assert key.rule.ok(key.default), (name, key.default, key.rule.expected)
    assert key.rule.bad, f"{name}: no example of a refused value"
    for bad in key.rule.bad:
      assert not key.rule.ok(bad), (name, bad)
  with pytest.raises(ValueError, match="no doc"):
    Key("sample.flag", True, " ")
  # every section has a doc (for --describe), and no doc names a section that has no keys
  sections = {".".join(n.split(".")[:i]) for n in KEYS for i in range(1, n.count(".") + 1)}
  assert set(SECTIONS) <= sections
  assert {s for s in sections if not s.endswith(".train")} <= set(SECTIONS)


def test_stage_lists_agree():
  from glore_jax import fingerprint
  from glore_jax.method.first_error_search import STRATEGIES

  assert config_keys.STAGES == fingerprint.STAGES
  assert config_keys.SEARCH_STRATEGIES == STRATEGIES


def _fake_inputs(config, tmp_path: Path) -> None:
  """The paper configs name /path/to/... placeholders: a GSM8K folder and an HF config.json."""
  from glore_jax.model.config import preset

  if config.data.source == "gsm8k":
    data = tmp_path / "gsm8k"
    data.mkdir(exist_ok=True)
    line = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"}
    for split in ("train", "test"):
      (data / f"{split}.jsonl").write_text(json.dumps(line) + "\n")
    config.data.path = str(data)
  if config.model.checkpoint:
    folder = tmp_path / "checkpoint"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(preset(config.model.preset).to_hf()))
    config.model.checkpoint = str(folder)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_file_loads_and_validates(name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # as an installed copy is used: found through glore_jax.configs
  config = load_config_file(f"configs/{name}")
  unknown = set(flatten(config)) - set(KEYS)
  assert not unknown, f"configs/{name}: keys the table lacks: {unknown}"
  _fake_inputs(config, tmp_path)
  validate(config)
  assert "spec_from_file_location" not in (REPO / "configs" / name).read_text()


def test_an_unknown_key_in_a_config_file_is_refused(tmp_path):
  path = tmp_path / "typo.py"
  path.write_text(
    "from glore_jax.defaults import get_config as base\n\n\n"
    "def get_config():\n  c = base()\n  c.sorm.num_rolouts = 8\n  return c\n"
  )
  with pytest.raises(
    ConfigError,
    match=r"config.sorm.num_rolouts: unknown key \(did you mean "
    r"'sorm.num_rollouts'\?\)",
  ):
    validate(load_config_file(str(path)))


def test_trainer_settings_come_from_the_table():
  from glore_jax.stages.models import train_config
  from glore_jax.training import TrainConfig

  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  assert set(TRAIN_FIELDS.values()) <= fields
  assert TRAIN_FIELDS["steps"] == "total_steps"
  config = get_config()
  for section in ("policy", "reward", "refine"):
    train = config[section].train
    # a distinct, valid value per mapped key: each must arrive in its own field
    values = {}
    for i, leaf in enumerate(sorted(TRAIN_FIELDS)):
      value = type(train[leaf])(i + 2)
      train[leaf], values[TRAIN_FIELDS[leaf]] = value, value
    cfg = train_config(config[section], loss="value", seed=5, value_targets="soft")
    for field, value in values.items():
      assert getattr(cfg, field) == value, (section, field)
    assert (cfg.loss, cfg.seed, cfg.value_targets) == ("value", 5, "soft")


def test_describe_lists_every_key_with_value_default_and_doc():
  config = get_config()
  config.sorm.num_rollouts = 8
  config.data.source = "gsm8k"
  text = describe(flatten(config))
  lines = {line.split()[0]: line for line in text.splitlines() if line and line[0] != " "}
  for name, key in KEYS.items():
    assert name in lines and key.doc in lines[name], name
  assert lines["sorm.num_rollouts"].split()[1:4] == ["int", "*8", "4"]
  assert lines["data.source"].split()[1:4] == ["str", "*'gsm8k'", "'synthetic'"]
  assert lines["seed"].split()[1:4] == ["int", "0", "0"]
  with config.ignore_type():
    config.sorm.extra = 1
  assert "UNKNOWN" in describe(flatten(config)).splitlines()[-2]


def test_describe_on_the_command_line(tmp_path):
  """From another directory, as after a pip install: prints, exits 0, needs no --workdir."""
  env = {**os.environ, "PYTHONPATH": str(REPO), "GLORE_JAX_MALLOC": "0"}
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "glore_jax.main",
      "--config=configs/micro.py",
      "--describe",
      "--config.sorm.num_rollouts=8",
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert p.returncode == 0, p.stderr
  names = [line.split()[0] for line in p.stdout.splitlines() if line[:1].isalpha()]
  assert set(KEYS) <= set(names)
  row = next(line for line in p.stdout.splitlines() if line.startswith("sorm.num_rollouts "))
  assert row.split()[1:4] == ["int", "*8", "4"]  # the override, and micro's own default
  assert not list(tmp_path.iterdir())  # ran nothing, wrote nothing
