"""SIGKILL the micro pipeline at points across its stages, rerun it each time,
and compare its outputs byte for byte with the uninterrupted run (issue 14).

Kill points are events in the work directory (a new checkpoint, shard, partial model folder,
fingerprint): the process is frozen (SIGSTOP) the moment the event is seen, within the 5 ms poll,
and then SIGKILLed, so the kill lands mid-step, mid-shard, mid-save or mid-generation. (A random
sleep before the kill made the test depend on the machine's speed: with a warm compilation cache
the whole micro pipeline finishes within such a sleep, and no later kill point is reached.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import REPO, main_command

pytestmark = pytest.mark.slow

# (name, glob of the file whose appearance triggers the kill), in pipeline order
EVENTS = [
  ("policy: mid-training, after a checkpoint", "policy/train/checkpoints/*"),
  # (a kill mid model-save is tests/reliability/test_housekeeping.py's: the partial folder
  # lives for milliseconds, too short to be seen from here on a fast machine)
  ("sample: mid-stage", "sample/shard-*.jsonl"),
  ("label: mid-stage", "label/shard-*.jsonl"),
  ("train_orm: mid-training", "orm/train/checkpoints/*"),
  ("refine_data: stage boundary", "refine_data/manifest.json"),
  ("evaluate: mid-generation", "evaluate/fingerprint.json"),
]
MIN_KILLS = 6


def _compared(workdir):
  """Every output that must not depend on interruptions: shards, manifests, fingerprints,
  model folders, results without timings (training logs and checkpoints may differ)."""
  out = {}
  for path in sorted(workdir.rglob("*")):
    rel = path.relative_to(workdir)
    if (
      not path.is_file() or "train" in rel.parts or rel.name in ("timings.json", "reliability.png")
    ):
      continue
    data = path.read_bytes()
    if rel.name == "resolved_config.json":  # the run record, less when and how it was typed
      record = json.loads(data)
      for key in ("recorded_at", "argv"):
        record.pop(key, None)
      data = json.dumps(record, sort_keys=True).encode()
    if rel.as_posix() == "evaluate/results.json":
      results = json.loads(data)
      results.pop("timings")
      for key in ("recorded_at", "argv"):  # when and how this invocation was typed
        results.get("provenance", {}).pop(key, None)
      data = json.dumps(results, sort_keys=True).encode()
    out[rel.as_posix()] = data
  return out


def _run_until(env, workdir, pattern, log):
  """Starts the pipeline; SIGKILLs it as soon as a new file matches `pattern`. Returns True
  when killed, False when the run ended first (its exit code must be 0)."""
  before = set(workdir.glob(pattern)) if workdir.exists() else set()
  with open(log, "a") as out:
    p = subprocess.Popen(
      main_command(workdir), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
    )
  try:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
      if p.poll() is not None:
        assert p.returncode == 0, (
          f"run failed (exit {p.returncode}):\n{Path(log).read_text()[-4000:]}"
        )
        return False
      if workdir.exists() and set(workdir.glob(pattern)) - before:
        p.send_signal(signal.SIGSTOP)  # freeze it where it is now, whatever the machine's speed
        if p.poll() is not None:
          return False
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        return True
      time.sleep(0.005)
    raise AssertionError(f"no {pattern} within the deadline")
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()


def test_sigkill_at_random_points_gives_identical_outputs(micro_run, subprocess_env, tmp_path):
  w = tmp_path / "w"
  log = tmp_path / "runs.log"
  killed = []
  for name, pattern in EVENTS:
    if _run_until(subprocess_env, w, pattern, log):
      killed.append(name)
  final = subprocess.run(
    main_command(w), cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=900
  )
  assert final.returncode == 0, final.stderr[-4000:]
  print(f"survived {len(killed)} kills: {killed}")
  assert len(killed) >= MIN_KILLS, f"only {len(killed)} kill points hit: {killed}"

  got, want = _compared(w), _compared(micro_run.workdir)
  assert got.keys() == want.keys()
  differ = [k for k in want if got[k] != want[k]]
  assert not differ, f"outputs differ from the uninterrupted run: {differ}"
  leftovers = [p for p in w.rglob(".*") if "train" not in p.relative_to(w).parts]
  assert not leftovers, f"temporary files or partial folders left behind: {leftovers}"
