"""The TPU estimate without libtpu: a memory model (`Fit`) per program from one-device CPU
compiles, and the batch it recommends per TPU slice (`recommend`).

XLA:CPU partitions the same program differently from XLA:TPU in two ways that matter here: it
has no reduce-scatter (a gradient's reduction is an all-reduce of the *full* f32 tensor, sliced
late, so every layer's full gradient stays live until the optimizer) and it runs bf16
collectives in f32. Its SPMD numbers (`train_memory` on the simulated mesh) are therefore a
loose upper bound for FSDP. The estimate keeps the compiler's numbers for everything that does
not depend on those lowerings: it compiles the programs on ONE device (no collectives at all)
and divides what is parameter-shaped by the number of parameter shards (fsdp x tensor):

  bytes/device = state / shards + gathered
                 + max(optimizer_phase / shards,                      # the update
                       grads / shards + per_row * rows_per_device)    # the backward pass

  state            parameters + optimizer state: the one-device train step's arguments
  optimizer_phase  the one-device train step's temp at 1 row: the f32 gradients and whatever
                   else is live when the (fused, in-place) AdamW update runs
  grads            f32 gradients of the trained parameters (from the shapes)
  per_row          activations per row of the batch: the forward+backward of the loss with
                   only the embedding trained (so the backward runs through every layer but
                   makes no other parameter gradient), temp at 16 rows minus 8 rows, / 8
  gathered         the FSDP working set, from the shapes: two layers' weights all-gathered in
                   the compute dtype (the next layer is prefetched), the embedding and LM head,
                   and one layer's full f32 gradient before its reduce-scatter.

The decode loop: weights and everything else that does not grow with rows, / shards, plus the
KV cache, output buffers and temporaries per row (one-device compiles at 8 and 16 rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
  from glore_jax.model.config import LlamaConfig

# JAX devices (chips; v4 and v5p are megacore: one device per chip) and HBM per device.
TPU_SLICES = {
  "v4-8": (4, 32 * GiB),
  "v4-32": (16, 32 * GiB),
  "v5p-64": (32, 95 * GiB),
  "v5e-256": (256, 16 * GiB),
}
HOST_DEVICES = 4  # chips per TPU VM host for every slice above: sampling runs per host


@dataclasses.dataclass
class Fit:
  """bytes/device = state / shards + max(param_phase / shards,
                                         grads / shards + per_row * rows_per_device) + fixed.

  Two phases peak separately: the backward pass (gradients accumulating while activations
  live) and the optimizer update (gradients, updates and new moments, all parameter-shaped)."""

  state: float
  param_phase: float
  grads: float
  per_row: float
  fixed: float
  per_row_remat: float = 0.0  # activations per row when remat is realized (0: same as per_row)
  parts: dict = dataclasses.field(default_factory=dict)

  def predict(
    self, shards: int, rows_per_device: float, tensor: int = 1, *, remat_realized: bool = False
  ) -> float:
    """Bytes per device for `rows_per_device` rows with parameters in `shards` x `tensor` shards.

    Args:
      shards: the FSDP shard count.
      rows_per_device: batch rows per device.
      tensor: the tensor-parallel shard count.
      remat_realized: use `per_row_remat` (when measured) for the activations.
    """
    per_row = self.per_row_remat if remat_realized and self.per_row_remat else self.per_row
    return (
      self.state / (shards * tensor)
      + self.fixed / tensor
      + max(
        self.param_phase / (shards * tensor),
        self.grads / (shards * tensor) + per_row * rows_per_device,
      )
    )


def _one_device_mesh():
  import jax

  from glore_jax.model.sharding import make_mesh

  return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _param_bytes(cfg, dtype=None) -> dict[str, float]:
  import numpy as np

  itemsize = np.dtype(dtype or cfg.compute_dtype).itemsize
  d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  layer = d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * f + 2 * d
  return {
    "layer": float(layer),
    "embedding": float(cfg.vocab_size * d),
    "lm_head": 0.0 if cfg.tie_word_embeddings else float(cfg.vocab_size * d),
    "itemsize": float(itemsize),
  }


def gathered_bytes(cfg: LlamaConfig) -> float:
  """FSDP working set: 2 layers + embedding + LM head all-gathered in the compute dtype, plus
  one layer's (or the embedding's) f32 gradient before its reduce-scatter."""
  p = _param_bytes(cfg)
  weights = (2 * p["layer"] + p["embedding"] + p["lm_head"]) * p["itemsize"]
  return weights + max(p["layer"], p["embedding"]) * 4


ACT_ROWS = (8, 16)


def fit_train(
  name: str,
  *,
  seq: int,
  layers: Sequence[int] | None = None,
  dtype: str = "bfloat16",
  param_dtype: str = "float32",
  remat: bool = True,
  grad_accum: int = 1,
) -> Fit:
  """The training-step memory model from one-device compiles: the full step at 1 row (state and
  the optimizer phase) and the activation program at 8 and 16 rows (activations per row); with
  `layers`, each at two depths extrapolated linearly.

  Args:
    name: a preset name.
    seq: tokens per row.
    layers: two depths to compile at and extrapolate from; None: the full depth.
    dtype: the compute dtype.
    param_dtype: the stored parameters' dtype.
    remat: rematerialise each block in the backward pass.
    grad_accum: micro-batches per step.
  """
  full = model_config(name, dtype=dtype, param_dtype=param_dtype, remat=remat)
  mesh = _one_device_mesh()
  cfg_at = lambda l: model_config(name, layers=l, dtype=dtype, param_dtype=param_dtype, remat=remat)
  step = scaled(
    lambda l: train_memory(cfg_at(l), mesh, batch=grad_accum, seq=seq, grad_accum=grad_accum),
    "one-device train",
    full.num_layers,
    layers,
  )
  # 8 and 16 rows: enough that activations, not row-independent buffers, set the peak
  shallow = min(layers) if layers else 1
  one_block = [activation_memory(cfg_at(shallow), mesh, batch=rows, seq=seq) for rows in ACT_ROWS]
  if layers and shallow == min(layers) and len(set(layers)) == 2:
    deeper = [
      activation_memory(cfg_at(max(layers)), mesh, batch=rows, seq=seq) for rows in ACT_ROWS
    ]
    t = (full.num_layers - shallow) / (max(layers) - shallow)
    act = [Memory.combine(a, b, 1 - t, t, "") for a, b in zip(one_block, deeper)]
  else:
    act = [
      activation_memory(cfg_at(full.num_layers), mesh, batch=rows, seq=seq) for rows in ACT_ROWS
    ]
  batch_bytes = 3 * 4 * seq  # tokens, attention_mask, target_mask per row
  rows_step = ACT_ROWS[1] - ACT_ROWS[0]
  per_row = max(act[1].temp - act[0].temp, 0.0) / rows_step + batch_bytes
  # remat realized: the compiled activations of the shallow model (its blocks' working set,
  # logits, loss) plus each further block's saved input, [seq, hidden] in the compute dtype
  saved_input = seq * full.hidden_size * full.compute_dtype.itemsize
  per_row_remat = (
    (
      max(one_block[1].temp - one_block[0].temp, 0.0) / rows_step
      + batch_bytes
      + (full.num_layers - shallow) * saved_input
    )
    if remat
    else per_row
  )
  p = _param_bytes(full, "float32")
  trainable = (
    full.num_layers * p["layer"] + p["embedding"] + p["lm_head"] + full.hidden_size
  ) * 4  # the LM loss trains everything but a value head
  state = step.argument - batch_bytes * grad_accum
  param_phase = max(step.temp - per_row * grad_accum, 0.0)
  gathered = gathered_bytes(full)
  return Fit(
    state=state,
    param_phase=param_phase,
    grads=trainable,
    per_row=per_row,
    per_row_remat=min(per_row_remat, per_row),
    fixed=gathered + step.code,
    parts={
      "compiled_at_layers": list(layers or []),
      "compile_s": step.compile_s + sum(a.compile_s for a in act),
    },
  )


def fit_decode(
  name: str,
  *,
  cache: int,
  max_new_tokens: int,
  layers: Sequence[int] | None = None,
  dtype: str = "bfloat16",
  param_dtype: str = "bfloat16",
) -> Fit:
  """The decode-loop memory model: weights / shards + (KV cache, carry, temp) per row, from two
  one-device compiles (rows 8 and 16).

  Args:
    name: a preset name.
    cache: KV-cache slots per row.
    max_new_tokens: the loop's step bound.
    layers: two depths to compile at and extrapolate from; None: the full depth.
    dtype: the compute dtype.
    param_dtype: the stored weights' dtype.
  """
  full = model_config(name, dtype=dtype, param_dtype=param_dtype, remat=False)
  mesh = _one_device_mesh()

  def at(rows):
    return scaled(
      lambda l: decode_memory(
        model_config(name, layers=l, dtype=dtype, param_dtype=param_dtype, remat=False),
        mesh,
        batch=rows,
        cache=cache,
        max_new_tokens=max_new_tokens,
      ),
      "one-device decode",
      full.num_layers,
      layers,
    )

  a, b = at(8), at(16)
  per_row = ((b.argument + b.temp) - (a.argument + a.temp)) / 8
  weights = (a.argument + a.temp) - 8 * per_row
  p = _param_bytes(full)
  gathered = (2 * p["layer"] + p["lm_head"] + p["embedding"]) * p["itemsize"]
  return Fit(
    state=weights,
    param_phase=0.0,
    grads=0.0,
    per_row=per_row,
    fixed=gathered + a.code,
    parts={"compiled_at_layers": list(layers or []), "compile_s": a.compile_s + b.compile_s},
  )


# ---- recommendations ----------------------------------------------------------------------


def recommend(
  fit: Fit,
  *,
  hbm: float,
  devices: int,
  max_rows_per_device: int = 64,
  tensor_options: Sequence[int] = (1, 2, 4, 8),
) -> dict[str, Any] | None:
  """Largest power-of-two rows per device that fit in HEADROOM of HBM with fsdp over the slice;
  tensor parallelism (which this estimate treats conservatively: activations not split) only
  when one row per device does not fit.

  Args:
    fit: the memory model.
    hbm: bytes of HBM per device.
    devices: the slice's devices.
    max_rows_per_device: the most rows per device tried.
    tensor_options: tensor-parallel sizes tried, in order.

  Returns:
    {'mesh', 'global_batch', 'rows_per_device', 'bytes_per_device', 'hbm'}, or None when
    nothing fits.
  """
  for tensor in tensor_options:
    if devices % tensor:
      continue
    shards = devices // tensor
    best = None
    rows = 1
    while rows <= max_rows_per_device:
      need = fit.predict(shards, rows, tensor, remat_realized=True)
      if need > HEADROOM * hbm:
        break
      best = (rows, need)
      rows *= 2
    if best is not None:
      rows, need = best
      return {
        "mesh": {"data": 1, "fsdp": shards, "tensor": tensor},
        "global_batch": rows * shards,
        "rows_per_device": rows,
        "bytes_per_device": need,
        "hbm": hbm,
      }
  return None
