"""Every key of the defaults, walked through out-of-range values: exit 2, one line naming the
key, and nothing written to the work directory (issue 14, item 2). Before the rules (now in
glore_jax/config_keys.py, issue 16), `policy.train.grad_clip=-1` trained by gradient ascent
and `top_p=1.5`, `top_k=-1`, `weight_decay=-1`, `bootstrap_resamples=0`, a context shorter
than prompt + generation and a missing test.jsonl all passed validation."""

from __future__ import annotations

import pytest

from glore_jax.config_keys import KEYS, Key, rule_for
from glore_jax.defaults import get_config
from glore_jax.fingerprint import flatten
from glore_jax.main import run_pipeline

from .conftest import micro_config

NUMERIC_KEYS = sorted(
  k
  for k, v in flatten(get_config()).items()
  if isinstance(v, (int, float)) and not isinstance(v, bool)
)
OTHER_KEYS = sorted(set(KEYS) - set(NUMERIC_KEYS))  # strings and bools


@pytest.fixture(autouse=True)
def no_stage_runs(monkeypatch):
  """A value that wrongly passes validation fails the test instead of starting the pipeline."""

  def refuse(config, workdir):
    raise AssertionError("validation passed: the stages were about to run")

  import glore_jax.stages

  monkeypatch.setattr(glore_jax.stages, "run_stages", refuse)


def _set(config, key: str, value) -> None:
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


def _expect_config_error(tmp_path, capsys, config, *needles: str) -> str:
  workdir = tmp_path / "w"
  assert run_pipeline(config, str(workdir)) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err  # one line, no traceback
  assert err.startswith("config error: "), err
  for needle in needles:
    assert needle in err, (needle, err)
  assert not workdir.exists(), "the work directory was touched before validation"
  return err


def test_every_numeric_key_has_a_rule_its_default_passes():
  assert len(NUMERIC_KEYS) > 60
  defaults = flatten(get_config())
  for key in NUMERIC_KEYS:
    rule = rule_for(key)
    assert rule.ok(defaults[key]), (key, defaults[key], rule.expected)
    assert rule.bad, f"{key}: no out-of-range examples"
  # a key added later gets a check: a numeric key cannot be declared without its range
  with pytest.raises(ValueError, match="needs a Rule"):
    Key("sample.new_count", 3, "a count added later")


@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_out_of_range_values_exit_2_before_any_write(tmp_path, capsys, key):
  for bad in rule_for(key).bad + ("7", None, float("nan")):
    config = micro_config()
    _set(config, key, bad)
    # the synthetic task's own checks name the section and the field
    _expect_config_error(tmp_path, capsys, config, f"config.{key}")


@pytest.mark.parametrize("key", OTHER_KEYS)
def test_wrong_strings_and_bools_exit_2_before_any_write(tmp_path, capsys, key):
  """Choices (`data.source='nope'`), bools (`'yes'`) and strings (`7`) are checked the same way."""
  for bad in rule_for(key).bad + (None,):
    config = micro_config()
    _set(config, key, bad)
    _expect_config_error(tmp_path, capsys, config, f"config.{key}={bad!r}")


# The cases of the issue, spelled out (independent of the table's own examples).
ISSUE_CASES = {
  "policy.train.grad_clip": -1.0,
  "reward.train.grad_clip": -0.5,
  "policy.train.weight_decay": -0.01,
  "sample.top_p": 1.5,
  "sample.top_k": -1,
  "evaluate.bootstrap_resamples": 0,
  "evaluate.threshold": 1.0,
  "sorm.num_rollouts": 0,
}


@pytest.mark.parametrize("key", list(ISSUE_CASES))
def test_issue_cases(tmp_path, capsys, key):
  config = micro_config()
  _set(config, key, ISSUE_CASES[key])
  _expect_config_error(tmp_path, capsys, config, f"config.{key}={ISSUE_CASES[key]!r}")


def test_context_shorter_than_prompt_plus_generation(tmp_path, capsys):
  config = micro_config()
  # training sequences fit; 64 sampled + 64 rollout tokens (+ the prompt) do not
  config.data.max_length = config.refine.max_length = 64
  config.model.max_position_embeddings = 96
  err = _expect_config_error(
    tmp_path,
    capsys,
    config,
    "sample.max_new_tokens + sorm.max_new_tokens",
    "config.model.max_position_embeddings=96",
  )
  assert "at most -" not in err


def test_training_sequences_longer_than_the_context(tmp_path, capsys):
  config = micro_config()
  config.data.max_length = 1024
  _expect_config_error(tmp_path, capsys, config, "data.max_length", "max_position_embeddings=512")


def test_missing_test_jsonl(tmp_path, capsys):
  data = tmp_path / "gsm8k"
  data.mkdir()
  (data / "train.jsonl").write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n')
  config = micro_config()
  config.data.source, config.data.path = "gsm8k", str(data)
  _expect_config_error(tmp_path, capsys, config, "config.data.path", "test.jsonl")


def test_unknown_recompute_stage(tmp_path, capsys):
  config = micro_config()
  config.recompute = "evaluate,polcy"
  _expect_config_error(tmp_path, capsys, config, "config.recompute", "'polcy'")


def test_hf_checkpoint_context_is_the_one_checked(tmp_path, capsys):
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (ckpt / "config.json").write_text(
    '{"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,'
    ' "num_attention_heads": 2, "max_position_embeddings": 100}'
  )
  config = micro_config()
  config.model.checkpoint = str(ckpt)
  _expect_config_error(tmp_path, capsys, config, "checkpoint's max_position_embeddings=100")


@pytest.mark.parametrize(
  "broken,needle",
  [
    (
      '{"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}',
      "'num_attention_heads' is missing",
    ),
    (
      (
        '{"vocab_size": 32, "hidden_size": "16", "intermediate_size": 32, "num_hidden_layers": 1,'
        ' "num_attention_heads": 2}'
      ),
      "'hidden_size' = '16'",
    ),
    ('{"vocab_size": 32, "hidden', "not valid JSON"),
  ],
)
def test_hf_config_json_missing_keys_and_wrong_types(tmp_path, capsys, broken, needle):
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (ckpt / "config.json").write_text(broken)
  config = micro_config()
  config.model.checkpoint = str(ckpt)
  _expect_config_error(tmp_path, capsys, config, str(ckpt / "config.json"), needle)


def test_command_line_exit_codes_and_verbose(tmp_path, subprocess_env):
  """Through `python -m glore_jax.main`: one line and exit 2 for a bad value or a bad type;
  --verbose (or GLORE_VERBOSE=1) adds the traceback."""
  import subprocess

  from .conftest import REPO, main_command, run_many

  results = run_many(
    subprocess_env,
    {
      "range": (tmp_path / "a", ["--config.policy.train.grad_clip=-1"]),
      "type": (tmp_path / "b", ["--config.sample.top_k=abc"]),
      "verbose": (tmp_path / "c", ["--config.sample.top_p=1.5", "--verbose"]),
    },
  )
  for name in ("range", "type"):
    rc, _, err = results[name]
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("config error: ") and "Traceback" not in err, err
  rc, _, err = results["verbose"]
  assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("config error")
  p = subprocess.run(
    main_command(tmp_path / "d", "--config.sample.top_p=1.5"),
    cwd=REPO,
    env={**subprocess_env, "GLORE_VERBOSE": "1"},
    capture_output=True,
    text=True,
    check=False,
  )
  assert p.returncode == 2 and "Traceback" in p.stderr
  assert not any((tmp_path / d).exists() for d in "abcd")
