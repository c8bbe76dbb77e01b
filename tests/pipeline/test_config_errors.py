"""Bad command lines fail before any compute, with a message naming the key or the stage."""

from __future__ import annotations

import subprocess

import pytest

from glore_jax.stages import outputs

from .conftest import REPO, main_command, make_ctx, micro_config

CASES = {
  "unknown_key": (["--config.sorm.bogus=1"], ["config.sorm.bogus"]),
  "unknown_section": (["--config.bogus.x=1"], ["config.bogus.x"]),
  "typo_key": (["--config.sorm.num_rolouts=3"], ["config.sorm.num_rolouts", "'num_rollouts'"]),
  "negative_k": (["--config.sorm.num_rollouts=-1"], ["config.sorm.num_rollouts", "-1"]),
  "zero_k": (["--config.sorm.num_rollouts=0"], ["config.sorm.num_rollouts"]),
  "unknown_stage": (["--config.stages=policy,lable"], ["config.stages", "'lable'"]),
  "test_only_source": (["--config.data.source=svamp"], ["config.data.source", "'svamp'"]),
  "missing_policy": (["--config.stages=label"], ["stage 'label'", "stage 'policy'"]),
  "missing_sample": (["--config.stages=label"], ["stage 'label'", "stage 'sample'"]),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory, subprocess_env):
  """Every case at once (each is a fresh interpreter; starting them together saves wall time)."""
  procs = {}
  for name, (args, _) in CASES.items():
    workdir = tmp_path_factory.mktemp(name) / "w"
    if name == "missing_sample":  # a finished policy (of this config), but no sample stage
      (workdir / "policy" / "model").mkdir(parents=True)
      (workdir / "policy" / "model" / "config.json").write_text("{}")
      outputs.write_record(make_ctx(workdir, micro_config()), "policy")
    procs[name] = (
      workdir,
      subprocess.Popen(
        main_command(workdir, *args),
        cwd=REPO,
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      ),
    )
  out = {}
  for name, (workdir, p) in procs.items():
    stdout, stderr = p.communicate(timeout=300)
    out[name] = (workdir, p.returncode, stdout, stderr)
  return out


@pytest.mark.parametrize("name", list(CASES))
def test_clear_error_and_nonzero_exit(results, name):
  _, rc, stdout, stderr = results[name]
  assert rc != 0, f"{name}: exit code 0\n{stdout}\n{stderr}"
  _, needles = CASES[name]
  last = stderr.strip().splitlines()[-1]  # the message is the last word, not buried in a trace
  for needle in needles:
    assert needle in last, f"{name}: {needle!r} not in the final stderr line {last!r}"
  assert "Traceback" not in stderr, f"{name}: a traceback instead of a message:\n{stderr}"


@pytest.mark.parametrize(
  "name",
  [
    "unknown_key",
    "unknown_section",
    "typo_key",
    "negative_k",
    "zero_k",
    "unknown_stage",
    "test_only_source",
  ],
)
def test_config_errors_fail_before_any_work(results, name):
  workdir, rc, _, _ = results[name]
  assert rc == 2
  assert not workdir.exists(), "the work directory was touched before validation"


@pytest.mark.parametrize("name", ["missing_policy", "missing_sample"])
def test_missing_input_names_the_stage_to_run(results, name):
  workdir, rc, _, stderr = results[name]
  assert rc == 3
  producer = "policy" if name == "missing_policy" else "sample"
  assert f"--config.stages={producer},label" in stderr  # the command that fixes it
  assert not (workdir / "label").exists()


def test_the_malloc_restart_is_logged_in_one_line(results, subprocess_env):
  """main.run() restarts a CPU-only process with GLIBC_TUNABLES: the restarted process says so
  once its config is valid (a config error stays the only line)."""
  from glore_jax import cpu_malloc

  restarts = cpu_malloc.should_reexec(subprocess_env)
  _, _, _, stderr = results["missing_policy"]  # valid config, stopped by a missing input
  assert stderr.count("restarted once with GLIBC_TUNABLES") == int(restarts), stderr
  _, _, _, stderr = results["negative_k"]
  assert "GLIBC_TUNABLES" not in stderr
