"""One process of the multi-host test (test_multihost.py), also runnable as the single-process
reference: the `policy` stage (a sharded training run on the global mesh: parameters and batches
split across processes, an orbax checkpoint, the HF export gathered to process 0), then the
`sample` and `label` stages, where each process runs only its own shards on its own devices
(`run_stages` puts those stages on `distributed.local_mesh`).

  python tests/launch/multihost_worker.py --workdir=DIR [--coordinator=127.0.0.1:PORT
      --num-processes=2 --process-id=0]

Writes DIR/process-<id>.json: devices seen, meshes, and the shards this process wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def config(args):
  from glore_jax.config_files import load_config_file

  c = load_config_file(str(REPO / "configs" / "micro.py"))
  c.mesh.update(data=1, fsdp=4, tensor=2)  # every axis crosses the process boundary
  c.stages = "policy,sample,label"
  c.data.update(train_size=48, test_size=4)
  c.policy.train.update(
    steps=24, batch_size=8, learning_rate=1e-2, warmup_steps=2, checkpoint_every=0, eval_every=0
  )
  c.sample.update(num_questions=8, num_samples=2, shard_size=2, max_new_tokens=24, batch_size=16)
  c.sorm.update(num_rollouts=2, shard_size=4, max_new_tokens=16, batch_size=64)
  if args.coordinator:
    c.distributed.update(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  return c


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--coordinator", default="")
  ap.add_argument("--num-processes", type=int, default=1)
  ap.add_argument("--process-id", type=int, default=0)
  args = ap.parse_args()
  sys.path.insert(0, str(REPO))

  import jax

  from glore_jax import workdir
  from glore_jax.stages import run_stages, stage_context

  written: list[tuple[str, int]] = []
  original = workdir.ShardedStage.write_shard

  def recording(self, index, records):  # which shards this process computed
    written.append((self.name, index))
    return original(self, index, records)

  workdir.ShardedStage.write_shard = recording
  # joins the cluster (distributed.initialize); policy on the global mesh, sample and label each
  # process on its own devices
  ctx = run_stages(config(args), args.workdir)
  local = stage_context(ctx, "sample")
  report = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "devices": jax.device_count(),
    "local_devices": jax.local_device_count(),
    "global_mesh": dict(ctx.mesh.shape),
    "local_mesh": dict(local.mesh.shape),
    "shards": written,
  }
  Path(args.workdir, f"process-{jax.process_index()}.json").write_text(json.dumps(report))
  if jax.process_count() > 1:
    jax.distributed.shutdown()
  return 0


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.exit(main())
