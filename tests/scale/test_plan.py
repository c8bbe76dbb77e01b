"""glore_jax.plan: compile-only memory plans (no weight is ever allocated).

The Llama-2 7B test is the issue's acceptance check: training with bf16 compute over fp32
parameters and fp32 AdamW moments, fsdp=8 on 8 devices of 16 GiB, remat on, 8 x 512 tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glore_jax import plan

GiB = plan.GiB
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
  "text, sizes",
  [
    ("1,8,1", (1, 8, 1)),
    ("1,-1,2", (1, -1, 2)),
    ("data=2,fsdp=4", (2, 4, 1)),
    ("data,fsdp,tensor=1,32,8", (1, 32, 8)),
  ],
)
def test_parse_mesh(text, sizes):
  assert plan.parse_mesh(text) == sizes


@pytest.mark.parametrize("bad", ["1,8", "data=1,pipeline=2"])
def test_parse_mesh_rejects(bad):
  with pytest.raises(ValueError):
    plan.parse_mesh(bad)


def test_recommend_picks_the_largest_batch_that_fits():
  fit = plan.Fit(
    state=64 * GiB, param_phase=32 * GiB, grads=16 * GiB, per_row=1 * GiB, fixed=1 * GiB
  )
  # 8 devices of 16 GiB: 8 + 1 + max(4, 2 + r) <= 14.4  ->  r = 2 (r = 4 needs 15)
  r = plan.recommend(fit, hbm=16 * GiB, devices=8)
  assert r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert (r["rows_per_device"], r["global_batch"]) == (2, 16)
  assert r["bytes_per_device"] == pytest.approx(13 * GiB)
  # 2 devices: the state alone (32 GiB) does not fit fsdp=2; no tensor split helps either
  assert plan.recommend(fit, hbm=16 * GiB, devices=2) is None


@pytest.mark.slow
def test_tiny_plan_end_to_end(tmp_path):
  """SPMD compiles on a (1, 4, 2) mesh plus the one-device estimate, as the CLI runs them."""
  out = tmp_path / "plan.json"
  assert (
    plan.main(
      [
        "--model=tiny",
        "--devices=8",
        "--mesh=1,4,2",
        "--batch=8",
        "--seq=32",
        "--decode-batch=16",
        "--cache=64",
        "--max-new-tokens=16",
        "--recommend",
        f"--json={out}",
      ]
    )
    == 0
  )
  p = json.loads(out.read_text())
  assert p["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
  for kind in ("train", "decode"):
    mem = p[kind]["cpu_spmd"]
    assert mem["argument"] > 0 and mem["temp"] > 0 and mem["peak"] >= mem["argument"]
    assert p[kind]["tpu_estimate"] > 0
  # the training state is exactly parameters (fp32) + two AdamW moments, 12 bytes a parameter
  cfg = plan.model_config("tiny")
  assert p["train"]["fit"]["state"] == pytest.approx(12 * cfg.num_params(), rel=0.01)
  assert set(p["recommend"]["train"]) == set(plan.TPU_SLICES)


def test_cli_simulates_the_requested_device_count():
  """A fresh process: XLA_FLAGS is set before JAX starts, so 16 devices exist."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "glore_jax.plan",
      "--model=tiny",
      "--devices=16",
      "--mesh=2,8,1",
      "--steps=decode",
      "--decode-batch=32",
      "--cache=32",
      "--max-new-tokens=8",
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "mesh data=2 fsdp=8 tensor=1 (16 simulated devices)" in out.stdout
  assert "| decode |" in out.stdout


@pytest.fixture(scope="module")
def llama2_7b_fit():
  # 1- and 2-layer compiles extrapolated to 32 (the full depth compiles the same per-layer
  # program 32 times over; see the README's plan table for the comparison)
  return plan.fit_train("llama2-7b", seq=512, layers=[1, 2])


@pytest.mark.slow
def test_llama2_7b_state_is_sharded_exactly(llama2_7b_fit):
  cfg = plan.model_config("llama2-7b")
  assert llama2_7b_fit.state == pytest.approx(12 * cfg.num_params(), rel=0.01)  # fp32 + Adam
  assert llama2_7b_fit.grads == pytest.approx(4 * cfg.num_params(), rel=0.01)
  assert 0 < llama2_7b_fit.per_row_remat <= llama2_7b_fit.per_row
  assert llama2_7b_fit.param_phase > llama2_7b_fit.grads


@pytest.mark.slow
def test_llama2_7b_memory_floor_fits_16_gib_on_8_devices(llama2_7b_fit):
  """What FSDP must hold at least, by the compiled sizes: the sharded state and gradients, the
  gathered working set, and rematerialised activations (each block's input, 1 row x 512 tokens
  per device, bf16)."""
  cfg = plan.model_config("llama2-7b")
  f = llama2_7b_fit
  checkpoints = cfg.num_layers * 512 * cfg.hidden_size * 2
  floor = f.state / 8 + f.grads / 8 + f.fixed + checkpoints
  assert floor < 16 * GiB, f"{floor / GiB:.2f} GiB"


@pytest.mark.slow
def test_llama2_7b_whole_step_fits_16_gib_on_8_devices(llama2_7b_fit):
  """The issue's acceptance check, the optimizer phase included: the fused in-place AdamW keeps
  it to the gradients plus the backward pass's working set (optax's chain needed ~2.7x the fp32
  parameters in temporaries, 20.1 GiB in all)."""
  total = llama2_7b_fit.predict(8, 1, remat_realized=True)
  assert total < 16 * GiB, f"{total / GiB:.2f} GiB"
