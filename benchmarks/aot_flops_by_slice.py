"""How many FLOPs the TPU compiler counts for the same per-chip training work on different slices.

    python benchmarks/aot_flops_by_slice.py [--models llama2-7b llama2-70b] [--layers 1]

Compiles the trainer's step (bf16 over fp32, remat, one 512-token row per chip, fsdp over the
slice) for v5p-8 (4 chips, one host) and v5p-64 (32 chips, 8 hosts) and prints the compiler's
per-device FLOPs per parameter per token. The work per chip is the same, so the counts should
agree; on this libtpu they do not (v5p-64 counts about half), which is why `glore_jax.plan`
times a train step with the model's FLOPs when the compiler's count falls below them.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
  from glore_jax import aot
  from glore_jax.model.config import preset

  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="+", default=["llama2-7b", "llama2-70b"])
  parser.add_argument("--slices", nargs="+", default=["v5p-8", "v5p-64"])
  parser.add_argument("--layers", type=int, default=1)
  args = parser.parse_args()
  for name in args.models:
    cfg = preset(name, num_layers=args.layers, dtype="bfloat16", param_dtype="float32", remat=True)
    for slice_name in args.slices:
      mesh = aot.mesh(slice_name)
      program = aot.compile_train(cfg, mesh, batch=mesh.devices.size, seq=512)
      per = program.flops / (cfg.num_params() * 512)
      print(
        f"{name} ({args.layers} layer) on {slice_name} ({mesh.devices.size} chips): "
        f"{program.flops:.3e} FLOPs per device = {per:.2f} per parameter per token",
        flush=True,
      )


if __name__ == "__main__":
  main()
