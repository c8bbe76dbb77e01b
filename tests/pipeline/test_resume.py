"""Preemption: SIGKILL real `glore_jax.main` runs in the middle of the sample stage and in the
middle of the label stage, rerun, and get byte-identical shards to the uninterrupted micro run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import REPO, main_command, micro_config, run_main

pytestmark = pytest.mark.slow  # three partial runs, after the session's micro pipeline run

STAGES = ("--config.stages=sample,label",)


def _shards(stage_dir):
  return sorted(stage_dir.glob("shard-*.jsonl")) if stage_dir.exists() else []


def _kill_midway(env, workdir, stage: str, log) -> int:
  """Start a run, SIGKILL it once `stage` has some but not all of its shards; how many."""
  with open(log, "w") as out:
    p = subprocess.Popen(
      main_command(workdir, *STAGES), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
    )
    try:
      deadline = time.monotonic() + 300
      while time.monotonic() < deadline:
        n = len(_shards(workdir / stage))
        if n >= 1:
          p.send_signal(signal.SIGKILL)
          p.wait(timeout=60)
          return len(_shards(workdir / stage))
        if p.poll() is not None:
          raise AssertionError(
            f"run ended (exit {p.returncode}) before any {stage} shard:\n"
            + Path(log).read_text()[-4000:]
          )
        time.sleep(0.01)
      raise AssertionError(f"no {stage} shard within the deadline")
    finally:
      if p.poll() is None:
        p.kill()
        p.wait()


def test_sigkill_and_resume_gives_identical_shards(micro_run, subprocess_env, tmp_path):
  cfg = micro_config()
  num_shards = {
    "sample": -(-cfg.sample.num_questions // cfg.sample.shard_size),
    "label": -(-cfg.sample.num_questions * cfg.sample.num_samples // cfg.sorm.shard_size),
  }
  ref = micro_run.workdir
  w = tmp_path / "w"
  shutil.copytree(ref / "policy", w / "policy")

  # 1. killed while sampling
  n = _kill_midway(subprocess_env, w, "sample", tmp_path / "run1.log")
  assert 1 <= n < num_shards["sample"], f"killed with {n} of {num_shards} sample shards"
  assert not json.loads((w / "sample" / "manifest.json").read_text())["done"]
  assert not (w / "label").exists()

  # 2. resumed, killed while labeling
  n = _kill_midway(subprocess_env, w, "label", tmp_path / "run2.log")
  assert 1 <= n < num_shards["label"], f"killed with {n} of {num_shards} label shards"
  log2 = (tmp_path / "run2.log").read_text()
  assert "[sample] resuming:" in log2
  assert json.loads((w / "sample" / "manifest.json").read_text())["done"]
  assert not json.loads((w / "label" / "manifest.json").read_text())["done"]

  # 3. resumed to the end
  final = run_main(subprocess_env, w, *STAGES)
  assert final.returncode == 0, final.stderr[-4000:]
  assert f"[label] resuming: {n} of {num_shards['label']} shards already done" in final.stdout

  for stage in ("sample", "label"):
    got, want = _shards(w / stage), _shards(ref / stage)
    assert [p.name for p in got] == [p.name for p in want]
    for a, b in zip(got, want):
      assert a.read_bytes() == b.read_bytes(), (
        f"{stage}/{a.name} differs from the uninterrupted run"
      )
    assert not list((w / stage).glob(".*")), "temp files of the killed runs left behind"
    m_got = json.loads((w / stage / "manifest.json").read_text())
    m_want = json.loads((ref / stage / "manifest.json").read_text())
    assert m_got["done"] and m_got["fingerprint"] == m_want["fingerprint"]
    assert (
      m_got["summary"]["statistics" if stage == "label" else "samples"]
      == m_want["summary"]["statistics" if stage == "label" else "samples"]
    )
