"""Eval-only runs on given model folders (config.inputs), and what a run records about itself:
the resolved config, the code version and the input checkpoints."""

from __future__ import annotations

import json

import pytest

from glore_jax import provenance
from glore_jax.config_check import ConfigError, validate
from glore_jax.stages import outputs
from glore_jax.stages.layout import MissingInputError

from .conftest import make_ctx, micro_config


def _model_folder(path):
  path.mkdir(parents=True)
  (path / "config.json").write_text("{}")
  return path


def test_given_folders_replace_the_workdir_outputs(tmp_path):
  orm = _model_folder(tmp_path / "elsewhere" / "my-orm")
  ctx = make_ctx(tmp_path / "run", micro_config(**{"inputs.orm": str(orm)}))
  assert ctx.path("orm") == orm
  assert outputs.require(ctx, "orm", "evaluate") == orm
  assert ctx.path("sorm") == ctx.workdir / "sorm" / "model"  # not given: the workdir's own
  with pytest.raises(MissingInputError, match="train_sorm"):
    outputs.require(ctx, "sorm", "evaluate")


def test_given_folders_are_checked_before_compute(tmp_path):
  with pytest.raises(ConfigError, match=r"config.inputs.refiner_local=.*config.json"):
    micro_config(**{"inputs.refiner_local": str(tmp_path / "missing")})
  config = micro_config()
  config.inputs.refiner_global = str(tmp_path)  # a folder, but no model in it
  with pytest.raises(ConfigError, match="inputs.refiner_global"):
    validate(config)


def test_provenance_records_config_code_and_inputs(tmp_path):
  policy = _model_folder(tmp_path / "policy")
  config = micro_config(**{"inputs.policy": str(policy)})
  record = provenance.record(config)
  assert record["config"] == json.loads(json.dumps(config.to_dict()))
  assert record["inputs"] == {"inputs.policy": str(policy)}
  details = record["input_details"]["inputs.policy"]
  assert details["exists"] and len(details["config_sha256"]) == 64
  code = record["code"]
  assert code["version"] and code["package"] == "glore-jax"
  if (provenance._git("rev-parse", "HEAD")) is not None:  # a checkout: the commit is recorded
    assert len(code["git_commit"]) == 40 and isinstance(code["git_dirty"], bool)


def test_run_config_is_written_once_per_distinct_run(tmp_path):
  config = micro_config()
  path = provenance.write_run_config(config, make_ctx(tmp_path, config).workdir)
  first = path.read_text()
  assert json.loads(first)["config"]["data"]["source"] == "synthetic"
  provenance.write_run_config(config, path.parent)  # the same run again: untouched
  assert path.read_text() == first
  config.sorm.num_rollouts = 7
  provenance.write_run_config(config, path.parent)
  assert json.loads(path.read_text())["config"]["sorm"]["num_rollouts"] == 7
