"""Memory and mesh plan: compile the programs the runtime runs, without allocating a single
weight, and read the compiler's own memory (and cost) analysis.

With the TPU compiler (extra `tpu-aot`, the libtpu wheel; any Linux x86-64 machine):

  python -m glore_jax.plan --config=configs/llama2_7b_gsm8k.py --slice=v4-32 [--layers=1,2]
  python -m glore_jax.plan --slice=v5e-8 --model=llama2-7b --batch=8 --seq=512 --decode-batch=64

compiles every program of every stage of a config (or one model's training step and sampling
programs) for the named slice's topology with the runtime's shardings (`glore_jax.aot`), and
prints per program the per-device bytes, whether it fits 90% of the chip's HBM, its roofline
time from the compiler's cost analysis, and the implied tokens/s per chip and MFU (estimates);
`--recommend` adds the largest power-of-two batch_size per stage that fits. Exit status 1 when
a stage does not fit.

Without libtpu, the CPU fallback below: the training step and the decode step for a model and
mesh on simulated CPU devices, and a TPU estimate derived from them.

  python -m glore_jax.plan --model=llama2-7b --devices=8 --mesh=1,8,1 --batch=8 --seq=512
  python -m glore_jax.plan --model=llama2-70b --devices=256 --mesh=1,256,1 --batch=256 \
      --layers=1,2 --recommend   # compile 1- and 2-layer models, extrapolate linearly to 80

Everything is abstract: no weight is allocated (see `memory`).

Two sets of numbers come out:
  * XLA:CPU's memory analysis of the SPMD program on the simulated mesh, as compiled. XLA:CPU has
    no reduce-scatter and upcasts bf16 collectives, so for FSDP it is a loose upper bound.
  * A TPU estimate (see `estimate`): the same step compiled on ONE device for the per-device
    batch (no collectives), its parameter-shaped parts divided by the shard count, plus the FSDP
    working set computed from the shapes. `--recommend` sizes v4-8 / v4-32 / v5p-64 / v5e-256
    with it: the largest power-of-two rows per chip that fill at most 90% of HBM.
`--layers=L1,L2` compiles two shallow models and extrapolates every number linearly in depth
(the plan says so when it does); the full depth is compiled otherwise.

Modules, one job each:
  memory      the CPU compiles (train step, decode loop, activations) and their `Memory`
  estimate    the TPU estimate from one-device compiles (`Fit`) and `recommend`
  stage_plan  the TPU compiler's plan of a config's stages (`plan_stages`, `stage_shapes`)
  roofline    roofline time, tokens/s and MFU from a program's cost analysis
  report      the plans as text (`format_plan`, `format_stage_plan`)
  cli         the command line (`main`, `make_plan`, `merge_plans`)
Every public name is importable from `glore_jax.plan`.
"""

from glore_jax.plan.cli import (
  main,
  make_plan,
  merge_plans,
  model_config_dict,
  parse_mesh,
  parser,
  tpu_main,
)
from glore_jax.plan.estimate import (
  ACT_ROWS,
  HOST_DEVICES,
  TPU_SLICES,
  Fit,
  fit_decode,
  fit_train,
  gathered_bytes,
  recommend,
)
from glore_jax.plan.memory import (
  HEADROOM,
  GiB,
  Memory,
  activation_memory,
  decode_memory,
  model_config,
  scaled,
  train_memory,
)
from glore_jax.plan.report import format_plan, format_stage_plan
from glore_jax.plan.roofline import model_flops_per_token, throughput
from glore_jax.plan.stage_plan import (
  StagePlan,
  batch_multiplier,
  config_model,
  load_config,
  plan_stages,
  prefix_sharing,
  stage_shapes,
  tpu_program,
)

__all__ = [
  "ACT_ROWS",
  "HEADROOM",
  "HOST_DEVICES",
  "TPU_SLICES",
  "Fit",
  "GiB",
  "Memory",
  "StagePlan",
  "activation_memory",
  "batch_multiplier",
  "config_model",
  "decode_memory",
  "fit_decode",
  "fit_train",
  "format_plan",
  "format_stage_plan",
  "gathered_bytes",
  "load_config",
  "main",
  "make_plan",
  "merge_plans",
  "model_config",
  "model_config_dict",
  "model_flops_per_token",
  "parse_mesh",
  "parser",
  "plan_stages",
  "prefix_sharing",
  "recommend",
  "scaled",
  "stage_shapes",
  "throughput",
  "tpu_main",
  "tpu_program",
  "train_memory",
]
