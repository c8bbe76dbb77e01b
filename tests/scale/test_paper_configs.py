"""The paper-scale configs fit the TPU slice their docstring names, by the TPU compiler's plan.

Compiling Llama-2 7B/13B for a slice takes tens of minutes on a 2-core machine, too long for
every CI run, so the check is in two parts:
  * always: every program the config's stages run, at the shapes the runtime builds from the
    config (`plan.stage_shapes`), is in the plan the TPU compiler produced for that slice
    (`configs/plans/<config>.<slice>.json`, written by `python -m glore_jax.plan --config=...
    --slice=... --layers=1,2 --json=...`), with the same shape, and fits there. Raising a
    batch size, a length or the model without re-planning fails here.
  * with libtpu (slow): one recorded program, the label stage's decode loop, is compiled again
    at 1 and 2 layers; its arguments (weights and KV cache per device) must extrapolate to the
    record's, so the record is the compiler's for these shardings.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from glore_jax import aot, plan

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["llama2_7b_gsm8k", "llama2_13b_gsm8k"]


def _module(name):
  return importlib.import_module(f"glore_jax.configs.{name}")  # configs/ as a package


def _record(name, slice_name):
  path = REPO / "configs" / "plans" / f"{name}.{slice_name}.json"
  assert path.exists(), (
    f"no TPU plan for {name} on {slice_name}: run python -m glore_jax.plan "
    f"--config=configs/{name}.py --slice={slice_name} --layers=1,2 --json={path}"
  )
  return json.loads(path.read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_names_the_planned_slice(name):
  module = _module(name)
  assert module.SLICE in aot.SLICES
  assert f"TPU {module.SLICE} slice" in module.__doc__


@pytest.mark.parametrize("name", CONFIGS)
def test_every_stage_fits_its_slice_by_the_tpu_plan(name):
  module = _module(name)
  config = module.get_config()
  record = _record(name, module.SLICE)
  assert record["slice"] == module.SLICE
  assert record["model"] == plan.config_model(config).num_params(), "model changed: re-plan"
  mesh = record["global_mesh"]
  assert mesh["data"] * mesh["fsdp"] * mesh["tensor"] == aot.SLICES[module.SLICE].chips
  recorded = {(p["stage"], p["program"]): p for p in record["programs"]}
  stages = plan.stage_shapes(config, prompt_tokens=record["prompt_tokens"])
  # every stage that runs the model has programs (refine_data only pairs up records)
  assert {s for s, *_ in stages} == set(config.stages.split(",")) - {"refine_data"}
  for stage, program, _, shape, _ in stages:
    p = recorded.get((stage, program))
    assert p is not None, f"{stage}/{program} is not in the plan: re-plan {name}"
    assert p["shape"] == shape, (
      f"{stage}/{program}: the config asks {shape}, the plan compiled {p['shape']}: re-plan {name}"
    )
    assert p["result"]["peak"] <= plan.HEADROOM * p["hbm"], (
      f"{stage}/{program} needs {p['result']['peak'] / plan.GiB:.1f} GiB per device"
    )


@pytest.mark.slow
@pytest.mark.skipif(not aot.available(), reason="libtpu is not installed (extra `tpu-aot`)")
def test_recorded_plan_is_the_tpu_compilers():
  """The 7B config's label-stage decode loop, compiled again at 1 and 2 layers: its per-device
  arguments (weights, the KV cache, buffers), which are exactly linear in depth, extrapolate to
  the recorded full-depth compile's. (Re-deriving the temporaries needs the full-depth compile,
  minutes on a 2-core machine: `python -m glore_jax.plan --config=... --slice=...`.)"""
  name = "llama2_7b_gsm8k"
  module = _module(name)
  config = module.get_config()
  record = _record(name, module.SLICE)
  p = next(x for x in record["programs"] if (x["stage"], x["program"]) == ("label", "decode"))
  cfg = aot.for_tpu(plan.config_model(config)).replace(remat=False)
  host = aot.host_mesh(
    module.SLICE, aot.mesh(module.SLICE, config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  )
  result, _ = plan.tpu_program("decode", cfg, host, layers=[1, 2], **p["shape"])
  assert result.argument == pytest.approx(p["result"]["argument"], rel=1e-6)
