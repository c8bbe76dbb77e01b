"""Ahead-of-time compiles for real TPU slices, on any machine: the TPU compiler (libtpu) runs on
the CPU, so the programs the trainer and the sampler run are compiled for a named slice's
topology, with the shardings the runtime uses, and the compiler's own memory and cost analyses
read back. No TPU and no weight is needed.

    from glore_jax import aot
    mesh = aot.mesh("v5e-8")                               # 8 abstract TPU v5e devices
    program = aot.compile_train(cfg, mesh, batch=8, seq=512)
    program.memory.peak, program.flops, program.bytes_accessed

The programs (`PROGRAMS`): the train step (`trainer.make_train_step`, LM or value-head loss,
AdamW, donated state), the prefill (`sampling.prefill_program`), the fan-out of decode rows
from prefilled sequences, which is how the label stage starts its K rollouts from every step
prefix (`sampling.start_program`), and the decode loop (`sampling.decode_program`). Needs the
`tpu-aot` extra (`pip install glore-jax[tpu-aot]`, i.e. the `libtpu` wheel); `available()` says
whether it is there. In a compile-only process (JAX_PLATFORMS=cpu) libtpu's single-process lock
and its metadata lookups are switched off, so several such processes may compile side by side.
"""

from glore_jax.aot.programs import (
  PROGRAMS,
  Program,
  compile_decode,
  compile_fanout,
  compile_lowered,
  compile_prefill,
  compile_train,
  for_tpu,
  train_args,
)
from glore_jax.aot.slices import (
  CHIPS,
  SLICES,
  Chip,
  GiB,
  Slice,
  available,
  devices,
  get_slice,
  host_mesh,
  mesh,
)

__all__ = [
  "CHIPS",
  "PROGRAMS",
  "SLICES",
  "Chip",
  "GiB",
  "Program",
  "Slice",
  "available",
  "compile_decode",
  "compile_fanout",
  "compile_lowered",
  "compile_prefill",
  "compile_train",
  "devices",
  "for_tpu",
  "get_slice",
  "host_mesh",
  "mesh",
  "train_args",
]
