"""Multi-host for real on one machine: two JAX processes (4 CPU devices each) joined through a
local coordinator with gloo CPU collectives, against one process with 8 devices.

The worker (multihost_worker.py) runs the `policy` stage (training sharded over a global
(data=1, fsdp=4, tensor=2) mesh that spans both processes, orbax checkpoint, HF export gathered
to process 0), then `sample` and `label`, where each process computes only its own shards on
its own 4 devices. Both runs must give the same weights (up to float summation order across
processes) and exactly the same sample and label records.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "multihost_worker.py"
TIMEOUT_S = 900  # generous: the 2-core CI machine is shared


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env.update(
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(REPO),
    TF_CPP_MIN_LOG_LEVEL="2",
  )
  return env


def _spawn(workdir: Path, devices: int, *extra: str, log: Path) -> subprocess.Popen:
  out = open(log, "w")  # noqa: SIM115 (the child process owns it)
  return subprocess.Popen(
    [sys.executable, str(WORKER), f"--workdir={workdir}", *extra],
    env=_env(devices),
    cwd=REPO,
    stdout=out,
    stderr=subprocess.STDOUT,
  )


def _wait(procs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
  """Waits for every process; on a failure or the deadline kills the rest (a peer left
  waiting at a collective would otherwise hang) and shows the logs."""
  deadline = time.monotonic() + TIMEOUT_S
  failed = None
  while any(p.poll() is None for p, _ in procs.values()):
    if any(p.poll() not in (None, 0) for p, _ in procs.values()) or time.monotonic() > deadline:
      failed = "timed out" if time.monotonic() > deadline else "a process failed"
      break
    time.sleep(0.5)
  for p, _ in procs.values():
    if p.poll() is None:
      p.kill()
      p.wait()
  bad = {k: p.returncode for k, (p, _) in procs.items() if p.returncode != 0}
  if failed or bad:
    tails = "\n".join(
      f"--- {k} (rc={p.returncode}) ---\n{log.read_text()[-3000:]}" for k, (p, log) in procs.items()
    )
    pytest.fail(f"multi-host run {failed or 'failed'}: {bad}\n{tails}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
  root = tmp_path_factory.mktemp("multihost")
  one, two = root / "one-process", root / "two-processes"
  port = _free_port()
  coordinator = f"--coordinator=127.0.0.1:{port}"
  procs = {
    "reference (1 process x 8 devices)": (_spawn(one, 8, log=root / "one.log"), root / "one.log"),
    **{
      f"process {i} of 2 (4 devices)": (
        _spawn(
          two, 4, coordinator, "--num-processes=2", f"--process-id={i}", log=root / f"two-{i}.log"
        ),
        root / f"two-{i}.log",
      )
      for i in range(2)
    },
  }
  _wait(procs)
  return one, two


def _report(workdir: Path, process: int) -> dict:
  return json.loads((workdir / f"process-{process}.json").read_text())


@pytest.mark.slow
def test_two_processes_form_one_cluster(runs):
  one, two = runs
  ref = _report(one, 0)
  assert (ref["process_count"], ref["devices"]) == (1, 8)
  for p in range(2):
    r = _report(two, p)
    assert (r["process_index"], r["process_count"]) == (p, 2)
    assert (r["devices"], r["local_devices"]) == (8, 4)
    assert r["global_mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert r["local_mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}


@pytest.mark.slow
def test_each_process_computes_only_its_own_shards(runs):
  one, two = runs
  assert sorted(map(tuple, _report(one, 0)["shards"])) == [
    (s, i) for s in ("label", "sample") for i in range(4)
  ]
  for p in range(2):
    assert sorted(map(tuple, _report(two, p)["shards"])) == [
      (s, i) for s in ("label", "sample") for i in range(p, 4, 2)
    ]


@pytest.mark.slow
def test_sharded_training_matches_one_process(runs):
  from safetensors.numpy import load_file

  one, two = runs
  a = load_file(one / "policy" / "model" / "model.safetensors")
  b = load_file(two / "policy" / "model" / "model.safetensors")
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)
  losses = lambda d: [
    (r["step"], r["train/loss"])
    for r in map(json.loads, (d / "policy" / "train" / "metrics.jsonl").read_text().splitlines())
    if "train/loss" in r
  ]
  (la, lb) = losses(one), losses(two)
  assert [s for s, _ in la] == [s for s, _ in lb] and la[-1][0] == 24
  np.testing.assert_allclose([l for _, l in lb], [l for _, l in la], rtol=1e-4)
  assert la[-1][1] < la[0][1]  # it trained
  # the orbax checkpoint was written once, by both processes together
  assert sorted(p.name for p in (two / "policy" / "train" / "checkpoints").iterdir()) == ["24"]


@pytest.mark.slow
def test_sampling_and_labeling_shards_match_one_process(runs):
  from glore_jax import workdir

  one, two = runs
  for stage in ("sample", "label"):
    a, b = workdir.read_all(one / stage), workdir.read_all(two / stage)
    assert len(a) == 16 and a == b, stage
    assert workdir.stage_done(two / stage)
  labels = workdir.read_all(two / "label")
  # the label stage really sampled rollouts from step prefixes (not only one-step solutions)
  assert sum(r["prefill_tokens"] for r in labels) > 0
