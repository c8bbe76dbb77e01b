"""Memory and mesh plan: compile the programs the runtime runs, without allocating a single
weight, and read the compiler's own memory (and cost) analysis.

The command line, `python -m glore_jax.plan` (usage in the package's docstring): with --slice
the TPU compiler's plan (`plan_stages`), without it the CPU plan of one model on simulated
devices (`make_plan`), with --merge the union of saved plans (`merge_plans`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glore_jax.plan.estimate import HOST_DEVICES, TPU_SLICES, Fit, fit_decode, fit_train, recommend
from glore_jax.plan.memory import decode_memory, model_config, scaled, train_memory
from glore_jax.plan.report import format_plan, format_stage_plan
from glore_jax.plan.stage_plan import load_config, plan_stages

if TYPE_CHECKING:
  import ml_collections


def parse_mesh(text: str) -> tuple[int, int, int]:
  """'1,8,1', 'data=1,fsdp=8,tensor=1' or 'data,fsdp,tensor=1,8,1' -> (data, fsdp, tensor)."""
  text = text.strip()
  if "=" in text and text.split("=")[0] in ("data,fsdp,tensor", "data,fsdp,tensor "):
    text = text.split("=", 1)[1]
  if "=" in text:
    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in text.split(","):
      key, _, value = part.partition("=")
      if key.strip() not in sizes:
        raise ValueError(f"--mesh: unknown axis {key!r}; axes are data, fsdp, tensor")
      sizes[key.strip()] = int(value)
    return sizes["data"], sizes["fsdp"], sizes["tensor"]
  parts = [int(x) for x in text.split(",")]
  if len(parts) != 3:
    raise ValueError(f"--mesh={text!r}: give three sizes data,fsdp,tensor (one may be -1)")
  return tuple(parts)  # type: ignore[return-value]


def _set_device_count(n: int) -> None:
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # compile-only: no need for more threads than the machine's cores
  if "jax" in sys.modules:
    import jax

    if jax.device_count() < n:
      raise RuntimeError(
        f"JAX already started with {jax.device_count()} devices; run the plan in "
        f"a fresh process (python -m glore_jax.plan) to simulate {n}"
      )


def make_plan(args: argparse.Namespace) -> dict[str, Any]:
  """The CPU plan of one model (`--model`, `--mesh`, `--devices`): compiled memory and estimates.

  Args:
    args: the parsed command line.
  """
  import jax

  from glore_jax.model.sharding import make_mesh

  data, fsdp, tensor = parse_mesh(args.mesh)
  devices = jax.devices()[: args.devices]
  mesh = make_mesh(data, fsdp, tensor, devices=devices)
  sizes = dict(mesh.shape)
  remat = not args.no_remat
  full = model_config(args.model, dtype=args.dtype, param_dtype=args.param_dtype, remat=remat)
  layers = [int(x) for x in args.layers.split(",")] if args.layers else None
  steps = set(args.steps.split(","))
  out: dict[str, Any] = {
    "model": args.model,
    "params": full.num_params(),
    "num_layers": full.num_layers,
    "devices": len(devices),
    "mesh": sizes,
    "dtype": args.dtype,
    "param_dtype": args.param_dtype,
    "decode_param_dtype": args.decode_param_dtype,
    "remat": remat,
    "layers": layers or [],
    "train": {"batch": args.batch, "seq": args.seq, "grad_accum": args.grad_accum},
    "decode": {
      "batch": args.decode_batch,
      "cache": args.cache,
      "max_new_tokens": args.max_new_tokens,
    },
  }
  shards = sizes["data"] * sizes["fsdp"]  # batch rows split over data and fsdp
  if "train" in steps:
    if not args.no_spmd:
      mem = scaled(
        lambda l: train_memory(
          model_config(
            args.model, layers=l, dtype=args.dtype, param_dtype=args.param_dtype, remat=remat
          ),
          mesh,
          batch=args.batch,
          seq=args.seq,
          grad_accum=args.grad_accum,
        ),
        "train",
        full.num_layers,
        layers,
      )
      out["train"]["cpu_spmd"] = mem.as_dict()
    fit = fit_train(
      args.model,
      seq=args.seq,
      layers=layers,
      dtype=args.dtype,
      param_dtype=args.param_dtype,
      remat=remat,
      grad_accum=args.grad_accum,
    )
    rows = args.batch / args.grad_accum / shards
    # parameters and optimizer state shard over fsdp and tensor (not data)
    out["train"]["fit"] = dataclasses.asdict(fit)
    out["train"]["tpu_estimate"] = fit.predict(
      sizes["fsdp"], rows, sizes["tensor"], remat_realized=True
    )
    out["train"]["as_scheduled_estimate"] = fit.predict(sizes["fsdp"], rows, sizes["tensor"])
  if "decode" in steps:
    if not args.no_spmd:
      mem = scaled(
        lambda l: decode_memory(
          model_config(
            args.model, layers=l, dtype=args.dtype, param_dtype=args.decode_param_dtype, remat=False
          ),
          mesh,
          batch=args.decode_batch,
          cache=args.cache,
          max_new_tokens=args.max_new_tokens,
        ),
        "decode",
        full.num_layers,
        layers,
      )
      out["decode"]["cpu_spmd"] = mem.as_dict()
    fit = fit_decode(
      args.model,
      cache=args.cache,
      max_new_tokens=args.max_new_tokens,
      layers=layers,
      dtype=args.dtype,
      param_dtype=args.decode_param_dtype,
    )
    rows = args.decode_batch / shards
    est = fit.predict(sizes["fsdp"], rows, sizes["tensor"])
    out["decode"]["fit"] = dataclasses.asdict(fit)
    out["decode"]["tpu_estimate"] = est
  if args.recommend:
    out["recommend"] = {}
    if "train" in steps:
      fit = Fit(**out["train"]["fit"])
      out["recommend"]["train"] = {
        name: recommend(fit, hbm=hbm, devices=n) for name, (n, hbm) in TPU_SLICES.items()
      }
    if "decode" in steps:
      fit = Fit(**out["decode"]["fit"])
      out["recommend"]["decode"] = {
        name: recommend(
          fit, hbm=hbm, devices=min(n, HOST_DEVICES), max_rows_per_device=256, tensor_options=(1,)
        )
        for name, (n, hbm) in TPU_SLICES.items()
      }
  return out


def parser() -> argparse.ArgumentParser:
  """The command line of `python -m glore_jax.plan`."""
  p = argparse.ArgumentParser(
    prog="python -m glore_jax.plan",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--model", default="llama2-7b", help="a preset: llama2-7b, llama2-13b, llama2-70b, ..."
  )
  p.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
  p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (one may be -1)")
  p.add_argument(
    "--batch", type=int, default=0, help="global training batch (rows); 0: one per device"
  )
  p.add_argument("--seq", type=int, default=512, help="training sequence length")
  p.add_argument("--grad-accum", type=int, default=1)
  p.add_argument("--decode-batch", type=int, default=0, help="decode rows; 0: 8 per device")
  p.add_argument("--cache", type=int, default=1024, help="KV cache slots (prompt + new tokens)")
  p.add_argument("--max-new-tokens", type=int, default=256)
  p.add_argument("--dtype", default="bfloat16", help="compute dtype")
  p.add_argument("--param-dtype", default="float32", help="training master weights")
  p.add_argument("--decode-param-dtype", default="bfloat16", help="weights when sampling")
  p.add_argument("--no-remat", action="store_true")
  p.add_argument("--steps", default="train,decode", help="which programs: train,decode")
  p.add_argument(
    "--layers",
    default="",
    help="two depths 'L1,L2' to compile and extrapolate "
    "linearly to the full model (faster for 70B); empty compiles the full depth",
  )
  p.add_argument(
    "--recommend",
    action="store_true",
    help="also size v4-8 / v4-32 / v5p-64 / v5e-256 from the memory model",
  )
  p.add_argument(
    "--no-spmd",
    action="store_true",
    help="skip the (slow, CPU-pessimistic) SPMD compile on the simulated mesh",
  )
  p.add_argument("--json", default="", help="also write the plan as JSON here")
  tpu = p.add_argument_group("TPU compiler (needs the tpu-aot extra: libtpu)")
  tpu.add_argument(
    "--slice",
    default="",
    help="compile for this TPU slice with the TPU "
    "compiler: v4-8, v4-32, v5p-8, v5p-64, v5e-8, v5e-256, v6e-8",
  )
  tpu.add_argument(
    "--config",
    default="",
    help="plan every stage of this config file (with --slice): fits or not per stage, per device",
  )
  tpu.add_argument("--stages", default="", help="with --config: only these stages")
  tpu.add_argument(
    "--merge",
    default="",
    help="comma-separated plan JSON files of one config "
    "and slice (disjoint --stages runs): print and write (--json) them as one",
  )
  tpu.add_argument(
    "--xla-attention",
    action="store_true",
    help="compile XLA attention instead of the Pallas TPU kernels",
  )
  tpu.add_argument(
    "--prompt-tokens",
    type=int,
    default=256,
    help="longest prompt the sampling stages see (before any draft)",
  )
  return p


def model_config_dict(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """The plan of one model (`--model`, no `--config`) as a config: the policy stage's training
  step and the sample stage's prefill / fan-out / decode (one sample per prompt)."""
  from glore_jax.defaults import get_config

  c = get_config()
  c.stages = "policy,sample"
  c.model.update(
    preset=args.model, dtype=args.dtype, param_dtype=args.param_dtype, remat=not args.no_remat
  )
  data, fsdp, tensor = parse_mesh(args.mesh)
  c.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  c.data.max_length = args.seq
  c.policy.train.update(batch_size=args.batch, grad_accum=args.grad_accum)
  c.sample.update(batch_size=args.decode_batch, num_samples=1, max_new_tokens=args.max_new_tokens)
  return c


def merge_plans(plans: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """One plan from plans of disjoint stage lists of the same config and slice (e.g. run in
  parallel with --stages)."""
  first = plans[0]
  for p in plans[1:]:
    for key in ("slice", "model", "num_layers", "global_mesh", "host_mesh", "prompt_tokens"):
      if p[key] != first[key]:
        raise ValueError(f"cannot merge plans with different {key}: {first[key]} vs {p[key]}")
  return {
    **first,
    "programs": [x for p in plans for x in p["programs"]],
    "compile_s": sum(p.get("compile_s", 0.0) for p in plans),
    "label_prefix_sharing": next(
      (p["label_prefix_sharing"] for p in plans if p.get("label_prefix_sharing")), None
    ),
  }


def tpu_main(args: argparse.Namespace) -> int:
  """--slice (and --config): the TPU compiler's plan. Exit status 1 when a stage does not fit."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from glore_jax import aot

  if not aot.available():
    print(
      "error: --slice needs the TPU compiler: pip install 'glore-jax[tpu-aot]' (libtpu; "
      "Linux x86-64). Without it, drop --slice for the CPU estimate.",
      file=sys.stderr,
    )
    return 2
  chips = len(aot.devices(args.slice))
  if args.config:
    config = load_config(args.config)
    model, prompt, sample_dtype = "", args.prompt_tokens, ""
  else:
    args.batch = args.batch or chips
    args.decode_batch = args.decode_batch or 8 * min(
      chips, aot.get_slice(args.slice).chips_per_host
    )
    config = model_config_dict(args)
    model, prompt = args.model, args.cache - args.max_new_tokens
    sample_dtype = args.decode_param_dtype
  layers = [int(x) for x in args.layers.split(",")] if args.layers else None
  only = [x for x in args.stages.split(",") if x]
  start = time.perf_counter()
  plan = plan_stages(
    config,
    args.slice,
    model=model,
    layers=layers,
    prompt_tokens=prompt,
    only=only,
    recommend=args.recommend,
    sample_param_dtype=sample_dtype,
    xla_attention=args.xla_attention,
    log=lambda m: print(m, file=sys.stderr, flush=True),
  )
  plan["compile_s"] = time.perf_counter() - start
  print(format_stage_plan(plan))
  print(f"(TPU compiler: {plan['compile_s']:.0f} s of compiles on this machine)")
  if args.json:
    from etils import epath

    epath.Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
  return 0 if all(p["fits"] for p in plan["programs"]) else 1


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m glore_jax.plan`: prints the plan; exit status 1 when a stage does not fit."""
  args = parser().parse_args(argv)
  if args.merge:
    plan = merge_plans([json.loads(Path(f).read_text()) for f in args.merge.split(",")])
    print(format_stage_plan(plan))
    if args.json:
      with open(args.json, "w") as f:
        f.write(json.dumps(plan, indent=2) + "\n")
    return 0 if all(p["fits"] for p in plan["programs"]) else 1
  if args.config and not args.slice:
    parser().error("--config needs --slice (the TPU slice to plan it for)")
  if args.slice:
    return tpu_main(args)
  _set_device_count(args.devices)
  args.batch = args.batch or args.devices
  args.decode_batch = args.decode_batch or 8 * args.devices
  plan = make_plan(args)
  text = format_plan(plan)
  print(text)
  if args.json:
    from etils import epath

    epath.Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
  return 0
