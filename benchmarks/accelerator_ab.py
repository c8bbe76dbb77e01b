"""A/B on an accelerator: greedy decode and a training step of this tree against another tree.

    python benchmarks/accelerator_ab.py --baseline-tree DIR [--rounds 2] [--out FILE]

For a refactoring of the model and sampler: on a GPU (or TPU) the XLA reference path runs, not
the CPU fast paths, so a CPU A/B (`benchmarks/ab.py`) does not cover it. Random weights, no
downloads: Llama-2 7B shapes in bf16 for decoding (prompts of 128 random tokens, 128 new tokens,
batches 1 / 16 / 64), and a 4-layer model of Llama-2 7B width for one training step (bf16
compute over fp32 weights, AdamW, 8 x 512 tokens). Each measurement runs in a fresh process per
tree, alternating which tree goes first; medians over rounds; greedy tokens and the first losses
are compared between the trees (same seed, same weights: they should be equal).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SNIPPET = r"""
import hashlib, json, statistics, sys, time
import jax, jax.numpy as jnp, numpy as np
from glore_jax import sampling
from glore_jax.model import create_model, preset
what, batches, new_tokens, name = json.loads(sys.argv[1])
out = {"device": str(jax.devices()[0]), "jax": jax.__version__}
if what == "decode":
  model = create_model(preset(name, dtype="bfloat16", param_dtype="bfloat16"), seed=0)
  vocab = model.cfg.vocab_size
  rng = np.random.default_rng(0)
  prompts = [list(map(int, rng.integers(3, vocab, size=128))) for _ in range(max(batches))]
  for b in batches:
    run = lambda: sampling.generate(model, prompts[:b], max_new_tokens=new_tokens,
                                    eos_token_id=None, batch_size=b, progress=False)
    rows = run()  # compiles
    times = []
    for _ in range(3):
      start = time.perf_counter()
      rows = run()
      times.append(time.perf_counter() - start)
    tokens = [list(map(int, r[0].tokens)) for r in rows]
    out[str(b)] = {"tok_s": b * new_tokens / statistics.median(times),
                   "tokens_sha": hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:16]}
else:
  from flax import nnx
  from glore_jax.training import TrainConfig, collate_lm, SFTExample
  from glore_jax.training.trainer import (TrainState, make_optimizer, make_train_step,
                                          trainable_filter)
  cfg = preset(name, num_layers=4, dtype="bfloat16", param_dtype="float32", remat=True)
  model = create_model(cfg, seed=0)
  config = TrainConfig(learning_rate=1e-5, total_steps=1000)
  graphdef, params, frozen, _ = nnx.split(model, trainable_filter(config), nnx.Param, ...)
  tx, schedule = make_optimizer(config)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  records = [SFTExample(rng.integers(3, cfg.vocab_size, size=512).tolist(), 1) for _ in range(8)]
  dev = {k: jnp.asarray(v[None]) for k, v in collate_lm(records, length=512).items()}
  step = jax.jit(make_train_step(graphdef, config, tx, schedule), donate_argnums=(0,))
  losses, times = [], []
  for i in range(6):
    start = time.perf_counter()
    state, metrics = step(state, frozen, dev)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    losses.append(float(metrics["loss"]))
  out["train"] = {"tok_s": 8 * 512 / statistics.median(times[2:]), "losses": losses[:2]}
print("AB_RESULT " + json.dumps(out))
"""


def run(tree: Path, what: str, batches: list[int], new_tokens: int, name: str) -> dict:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.run(
    [sys.executable, "-c", SNIPPET, json.dumps([what, batches, new_tokens, name])],
    cwd=tree,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  line = next((x for x in proc.stdout.splitlines() if x.startswith("AB_RESULT ")), None)
  if proc.returncode or line is None:
    return {"error": proc.stderr[-2500:]}
  return json.loads(line[len("AB_RESULT ") :])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--baseline-tree", type=Path, required=True)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--what", default="decode,train")
  parser.add_argument("--preset", default="llama2-7b", help="model shapes (random weights)")
  parser.add_argument(
    "--out", type=Path, default=REPO / "benchmarks" / "results" / "accelerator_ab.json"
  )
  args = parser.parse_args(argv)
  trees = {"this": REPO, "baseline": args.baseline_tree.resolve()}
  runs: dict[str, list] = {"this": [], "baseline": []}
  for r in range(args.rounds):
    for name in ["this", "baseline"] if r % 2 == 0 else ["baseline", "this"]:
      for what in args.what.split(","):
        result = run(trees[name], what, args.batches, args.new_tokens, args.preset)
        runs[name].append({"what": what, **result})
        print(f"round {r + 1} {name} {what}: {json.dumps(result)[:400]}", flush=True)
  summary: dict = {"runs": runs}
  for key in [str(b) for b in args.batches] + ["train"]:
    vals = {n: [x[key]["tok_s"] for x in runs[n] if key in x] for n in runs}
    if all(vals.values()):
      this, base = statistics.median(vals["this"]), statistics.median(vals["baseline"])
      same = {
        json.dumps(x[key].get("tokens_sha", x[key].get("losses")))
        for n in runs
        for x in runs[n]
        if key in x
      }
      summary[key] = {
        "this_tok_s": this,
        "baseline_tok_s": base,
        "ratio": this / base,
        "same_output": len(same) == 1,
      }
      print(
        f"{key}: this {this:.1f} vs baseline {base:.1f} tok/s = {this / base:.3f}x, "
        f"same tokens/losses: {len(same) == 1}"
      )
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(summary, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
