"""One training step of SmolLM2-135M at sequence 512: ours (the jitted step of
glore_jax.training) vs. a plain PyTorch step of transformers' LlamaForCausalLM on the same weights
and batch. Reports tokens/s and model FLOP utilisation against the matmul FLOP/s measured in the
same run (benchmarks/roofline.py), and writes benchmarks/results/train.json.

    python benchmarks/train.py [--batch 2] [--seq 512] [--steps 5]

Model FLOPs per step = 6 * params * tokens (the tied embedding counted once, as the LM-head
matmul) + attention 12 * layers * seq * heads * head_dim * tokens (scores and values, forward and
backward; the causal half is counted too, as PaLM's MFU convention does).

The process runs with glibc malloc settings that keep freed memory (`glore_jax/cpu_malloc.py`,
applied by restarting once): XLA:CPU otherwise maps its ~4 GB of step temporaries afresh and
page-faults them every step. The PyTorch step runs in the same process under the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.roofline import machine_description, matmul_flops  # noqa: E402
from glore_jax.cpu_malloc import reexec_with_malloc_tunables  # noqa: E402
from glore_jax.model import load_hf  # noqa: E402
from glore_jax.training import SFTExample, TrainConfig, collate_lm  # noqa: E402
from glore_jax.training.trainer import TrainState, make_optimizer, make_train_step, trainable_filter  # noqa: E402


def smollm2_dir() -> Path:
  from glore_jax.model.gguf import convert_gguf_to_hf, smollm2_gguf_path

  cache = Path(os.environ.get("GLORE_TEST_CACHE", Path.home() / ".cache" / "glore_jax_tests"))
  return convert_gguf_to_hf(smollm2_gguf_path(), cache / "smollm2-135m-instruct-hf")


def model_flops(cfg, tokens: int, seq: int) -> float:
  dense = 6.0 * cfg.num_params(include_embedding=True) * tokens
  attention = 12.0 * cfg.num_layers * seq * cfg.num_heads * cfg.head_dim * tokens
  return dense + attention


def make_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  records = [SFTExample(rng.integers(3, vocab, size=seq).tolist(), 1) for _ in range(batch)]
  return collate_lm(records, length=seq)


def ours_step(hf_dir: Path, batch: dict, compute_dtype: str | None):
  """A closure running one optimizer step of our trainer's jitted step (state donated)."""
  from flax import nnx

  model = load_hf(hf_dir, dtype=compute_dtype)
  config = TrainConfig(learning_rate=1e-5, total_steps=1000)
  graphdef, params, frozen, _ = nnx.split(model, trainable_filter(config), nnx.Param, ...)
  tx, schedule = make_optimizer(config)
  holder = {
    "state": TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rng=jax.random.PRNGKey(0),
    )
  }
  step = jax.jit(make_train_step(graphdef, config, tx, schedule), donate_argnums=(0,))
  dev = {k: jnp.asarray(v[None]) for k, v in batch.items()}

  def one() -> float:
    holder["state"], m = step(holder["state"], frozen, dev)
    jax.block_until_ready((holder["state"], m))
    return float(m["loss"])

  return one, model.cfg


def torch_step(hf_dir: Path, batch: dict):
  import torch
  from transformers import LlamaForCausalLM

  torch.set_num_threads(os.cpu_count() or 1)
  model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0)
  tokens = torch.from_numpy(batch["tokens"].astype(np.int64))
  attention = torch.from_numpy(batch["attention_mask"].astype(np.int64))
  # HF shifts labels itself: label at t is the target of the logits at t-1
  labels = tokens.clone()
  target_mask = np.zeros_like(batch["target_mask"])
  target_mask[:, 1:] = batch["target_mask"][:, :-1]
  labels[torch.from_numpy(target_mask) == 0] = -100

  def one() -> float:
    loss = model(input_ids=tokens, attention_mask=attention, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  return one


def timed(fn) -> tuple[float, float]:
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def main() -> None:
  reexec_with_malloc_tunables()  # the same allocator settings for ours and the baseline
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--compute-dtype", default=None, help="e.g. bfloat16 (default: fp32)")
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train.json"))
  args = parser.parse_args()

  hf_dir = smollm2_dir()
  batch = make_batch(49_152, args.batch, args.seq)
  tokens = args.batch * args.seq
  ours, cfg = ours_step(hf_dir, batch, args.compute_dtype)
  flops = model_flops(cfg, tokens, args.seq)
  ours_first, first_loss = timed(ours)  # compiles
  ours_losses, ours_times = [first_loss, ours()], []  # a second warm-up: the heap grows to size
  torch_fn = None if args.skip_torch else torch_step(hf_dir, batch)
  torch_losses, torch_times = [], []
  if torch_fn:
    torch_losses += [torch_fn(), torch_fn()]  # warm-up
    time.sleep(1.0)
  # The machine may be shared: interleave peak, ours and torch so all three see the same load,
  # and report the fastest repeat of each (the least-disturbed estimate) beside the medians.
  # A pause after each torch step: its OpenMP workers keep spinning for a while after the
  # call returns and would otherwise compete with the next measurement for the cores.
  peaks = []
  for _ in range(args.steps):
    peaks.append(matmul_flops())
    t, loss = timed(ours)
    ours_times.append(t)
    ours_losses.append(loss)
    if torch_fn:
      t, loss = timed(torch_fn)
      torch_times.append(t)
      torch_losses.append(loss)
      time.sleep(1.0)
  peaks.append(matmul_flops())
  peak = max(peaks)
  ours_s = min(ours_times)
  torch_s = min(torch_times) if torch_times else None

  result = {
    "ours_tok_s": tokens / ours_s,
    "torch_tok_s": None if torch_s is None else tokens / torch_s,
    "ratio": None if torch_s is None else torch_s / ours_s,
    "mfu": flops / ours_s / peak,
    "peak_flops": peak,
    "machine": machine_description(),
    "details": {
      "model": "SmolLM2-135M",
      "params": cfg.num_params(),
      "batch": args.batch,
      "seq": args.seq,
      "tokens_per_step": tokens,
      "model_flops_per_step": flops,
      "compute_dtype": args.compute_dtype or cfg.dtype,
      "estimator": "fastest of the interleaved repeats; peak = best matmul measurement",
      "ours_step_s": ours_times,
      "ours_first_step_s_incl_compile": ours_first,
      "ours_median_tok_s": tokens / statistics.median(ours_times),
      "ours_median_mfu": flops / statistics.median(ours_times) / statistics.median(peaks),
      "torch_step_s": torch_times or None,
      "torch_median_tok_s": tokens / statistics.median(torch_times) if torch_times else None,
      "torch_mfu": None if torch_s is None else flops / torch_s / peak,
      "peak_flops_measurements": peaks,
      "ours_losses": ours_losses,
      "torch_losses": torch_losses or None,
      "torch_threads": os.cpu_count(),
      "load_average_at_end": os.getloadavg(),
    },
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=2))
  print(
    f"ours  s/step {[round(t, 2) for t in ours_times]} (first {ours_first:.1f} s), losses "
    f"{[round(x, 3) for x in ours_losses]}"
  )
  if torch_times:
    print(
      f"torch s/step {[round(t, 2) for t in torch_times]}, losses "
      f"{[round(x, 3) for x in torch_losses]}"
    )


if __name__ == "__main__":
  main()
