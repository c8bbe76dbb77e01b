"""Roofline arithmetic from a compiled program's cost analysis and a chip's published figures:
the time of one call, and the training tokens/s per chip and MFU (or a decode step's tokens/s)
it implies. Estimates: collectives and overlap are not modelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from glore_jax.aot import Chip, Program
  from glore_jax.model.config import LlamaConfig


def model_flops_per_token(cfg: LlamaConfig, seq: int) -> float:
  """Training FLOPs per token as MFU counts them: 6 per matmul weight (forward + backward; the
  LM head included, the embedding lookup not) plus causal attention's 6 * L * seq * N * H.

  Args:
    cfg: the model's config.
    seq: tokens per row (attention's cost grows with it).
  """
  weights = cfg.num_params(include_embedding=False) + cfg.vocab_size * cfg.hidden_size
  return 6.0 * weights + 6.0 * cfg.num_layers * seq * cfg.num_heads * cfg.head_dim


def throughput(
  program: str, shape: dict, result: Program, cfg: LlamaConfig, devices: int, chip: Chip
) -> dict[str, float]:
  """Roofline time of one call and what it implies: training tokens/s per chip and MFU, or a
  decode step's tokens/s per chip. Estimates: collectives and overlap are not modelled.

  Args:
    program: the program's kind ('train_*', 'prefill', 'fanout' or 'decode').
    shape: its shape arguments.
    result: the compiled program.
    cfg: the model's config.
    devices: the devices the program runs on.
    chip: the chip's published figures.
  """
  flops = result.flops
  out: dict = {}
  if program.startswith("train"):
    model_flops = model_flops_per_token(cfg, shape["seq"]) * shape["batch"] * shape["seq"] / devices
    if flops < model_flops:
      # A step cannot do less work than the model has. The compiler's count is below it on
      # multi-host slices (v5p-64 counts about half of what v5p-8 counts for the same per-chip
      # work) and in bad depth extrapolations: the compute term then takes the model's FLOPs,
      # plus the forward pass that remat recomputes (2 of every 6).
      flops = model_flops * (4 / 3 if cfg.remat else 1.0)
      out.update(flops_below_model=True, flops_source="model")
  seconds = max(flops / chip.peak_bf16_flops, result.bytes_accessed / chip.hbm_bytes_per_s)
  out.update(
    roofline_s=seconds,
    compute_bound=flops / chip.peak_bf16_flops >= result.bytes_accessed / chip.hbm_bytes_per_s,
  )
  if seconds <= 0:
    return out
  if program.startswith("train"):
    out["tokens_per_s_per_chip"] = shape["batch"] * shape["seq"] / devices / seconds
    out["mfu"] = model_flops / seconds / chip.peak_bf16_flops
  elif program == "decode":
    out["tokens_per_s_per_chip"] = shape["rows"] / devices / seconds
  return out
