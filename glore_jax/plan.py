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

Everything is abstract: `nnx.eval_shape` builds the model as ShapeDtypeStructs, the shardings
come from the model's PartitionSpec table (`glore_jax.model.sharding`), and
`jax.jit(step).lower(...).compile().memory_analysis()` gives per-device sizes of the arguments
(parameters, optimizer state, batch or KV cache), outputs, temporaries (activations, gradients,
gathered weights) and generated code. The programs are the ones the trainer and the sampler run
(`trainer.make_train_step`, `sampling.decode_program`), with the same shardings.

Two sets of numbers come out:
  * XLA:CPU's memory analysis of the SPMD program on the simulated mesh, as compiled. XLA:CPU has
    no reduce-scatter and upcasts bf16 collectives, so for FSDP it is a loose upper bound.
  * A TPU estimate (see `fit_train`): the same step compiled on ONE device for the per-device
    batch (no collectives), its parameter-shaped parts divided by the shard count, plus the FSDP
    working set computed from the shapes. `--recommend` sizes v4-8 / v4-32 / v5p-64 / v5e-256
    with it: the largest power-of-two rows per chip that fill at most 90% of HBM.
`--layers=L1,L2` compiles two shallow models and extrapolates every number linearly in depth
(the plan says so when it does); the full depth is compiled otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  import jax
  import ml_collections

  from glore_jax.aot import Chip, Program
  from glore_jax.model.config import LlamaConfig

GiB = 1024 ** 3

# JAX devices (chips; v4 and v5p are megacore: one device per chip) and HBM per device.
TPU_SLICES = {
    "v4-8": (4, 32 * GiB),
    "v4-32": (16, 32 * GiB),
    "v5p-64": (32, 95 * GiB),
    "v5e-256": (256, 16 * GiB),
}
HEADROOM = 0.9  # plan to fill at most this fraction of HBM (fragmentation, runtime, XLA scratch)


@dataclasses.dataclass
class Memory:
  """Per-device bytes of one compiled program (XLA memory analysis)."""
  argument: float
  output: float
  alias: float
  temp: float
  code: float
  compile_s: float = 0.0
  extrapolated: str = ""  # how the numbers were obtained when not compiled as is

  @property
  def peak(self) -> float:
    """Live bytes at the program's high-water mark: inputs + outputs not aliased to inputs +
    temporaries (+ code, which TPUs also keep in HBM)."""
    return self.argument + self.output - self.alias + self.temp + self.code

  def as_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["peak"] = self.peak
    return out

  @staticmethod
  def from_compiled(compiled: jax.stages.Compiled, compile_s: float = 0.0) -> Memory:
    """The compiler's memory analysis of `compiled`.

    Args:
      compiled: a compiled program.
      compile_s: the seconds its compile took (kept in the result).

    Raises:
      RuntimeError: the backend gives no memory analysis.
    """
    ma = compiled.memory_analysis()
    if ma is None:
      raise RuntimeError("this backend gives no memory analysis for compiled programs")
    return Memory(argument=float(ma.argument_size_in_bytes), output=float(ma.output_size_in_bytes),
                  alias=float(ma.alias_size_in_bytes), temp=float(ma.temp_size_in_bytes),
                  code=float(ma.generated_code_size_in_bytes), compile_s=compile_s)

  @staticmethod
  def combine(a: Memory, b: Memory, fa: float, fb: float, note: str) -> Memory:
    """The field-wise weighted sum fa * a + fb * b (a linear extrapolation in depth).

    Args:
      a: the first measurement.
      b: the second measurement.
      fa: the weight of `a`.
      fb: the weight of `b`.
      note: how the result was made, kept in `extrapolated`.
    """
    f = lambda name: fa * getattr(a, name) + fb * getattr(b, name)
    return Memory(argument=f("argument"), output=f("output"), alias=f("alias"), temp=f("temp"),
                  code=f("code"), compile_s=a.compile_s + b.compile_s, extrapolated=note)


# ---- model and mesh -----------------------------------------------------------------------


def model_config(name: str, *, layers: int | None = None, dtype: str = "bfloat16",
                 param_dtype: str = "float32", remat: bool = True,
                 value_head: bool = False) -> LlamaConfig:
  """A preset's config as its TPU program runs (unfused projections).

  Args:
    name: a preset name, e.g. 'llama2-7b'.
    layers: the depth to build; None: the preset's.
    dtype: the compute dtype.
    param_dtype: the stored parameters' dtype.
    remat: rematerialise each block in the backward pass.
    value_head: add the reward models' value head.
  """
  from glore_jax.model.config import preset
  # the TPU program: separate q/k/v and gate/up matmuls (the fused ones are an XLA:CPU speed-up)
  cfg = preset(name, dtype=dtype, param_dtype=param_dtype, remat=remat, value_head=value_head,
               fuse_projections=False)
  return cfg.replace(num_layers=layers) if layers else cfg


def parse_mesh(text: str) -> tuple[int, int, int]:
  """'1,8,1', 'data=1,fsdp=8,tensor=1' or 'data,fsdp,tensor=1,8,1' -> (data, fsdp, tensor)."""
  text = text.strip()
  if "=" in text and text.split("=")[0] in ("data,fsdp,tensor", "data,fsdp,tensor "):
    text = text.split("=", 1)[1]
  if "=" in text:
    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in text.split(","):
      key, _, value = part.partition("=")
      if key.strip() not in sizes:
        raise ValueError(f"--mesh: unknown axis {key!r}; axes are data, fsdp, tensor")
      sizes[key.strip()] = int(value)
    return sizes["data"], sizes["fsdp"], sizes["tensor"]
  parts = [int(x) for x in text.split(",")]
  if len(parts) != 3:
    raise ValueError(f"--mesh={text!r}: give three sizes data,fsdp,tensor (one may be -1)")
  return tuple(parts)  # type: ignore[return-value]


def _abstract(cfg):
  from flax import nnx

  from glore_jax.model.llama import Llama
  return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))


def _with_shardings(abstract_tree, shardings):
  import jax
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_tree, shardings)


# ---- the two programs ---------------------------------------------------------------------


def train_memory(cfg: LlamaConfig, mesh: jax.sharding.Mesh, *, batch: int, seq: int,
                 grad_accum: int = 1, loss: str = "lm") -> Memory:
  """Compiles the trainer's step (AdamW, clipping, fp32 master weights, `cfg.dtype` compute,
  `cfg.remat`) for a global batch of `batch` rows of `seq` tokens.

  Args:
    cfg: the model's config.
    mesh: the mesh to compile for.
    batch: the global batch, in rows.
    seq: tokens per row.
    grad_accum: micro-batches per step.
    loss: 'lm' or 'value'.
  """
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from glore_jax.model.sharding import BATCH, fit_spec, tree_shardings
  from glore_jax.training import trainer

  if loss == "value" and not cfg.value_head:
    cfg = cfg.replace(value_head=True)
  tc = trainer.TrainConfig(loss=loss, grad_accum=grad_accum, total_steps=1000, progress=False)
  model = _abstract(cfg)
  graphdef, params, frozen, _ = nnx.split(model, trainer.trainable_filter(tc), nnx.Param, ...)
  tx, schedule = trainer.make_optimizer(tc)
  replicated = NamedSharding(mesh, P())
  param_sh, frozen_sh = tree_shardings(params, mesh), tree_shardings(frozen, mesh)
  opt_abstract = jax.eval_shape(tx.init, params)
  opt_sh = tree_shardings(opt_abstract, mesh)
  state_sh = trainer.TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                                rng=replicated)
  state = trainer.TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
      params=_with_shardings(params, param_sh), opt_state=_with_shardings(opt_abstract, opt_sh),
      rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated))
  frozen = _with_shardings(frozen, frozen_sh)
  shape = (grad_accum, batch // grad_accum, seq)
  row_sh = NamedSharding(mesh, fit_spec(P(None, BATCH), shape, mesh))
  if loss == "lm":
    keys = {"tokens": jnp.int32, "attention_mask": jnp.int32, "target_mask": jnp.int32}
    data = {k: jax.ShapeDtypeStruct(shape, d, sharding=row_sh) for k, d in keys.items()}
  else:
    steps = 16  # labelled steps per row
    sshape = shape[:2] + (steps,)
    step_sh = NamedSharding(mesh, fit_spec(P(None, BATCH), sshape, mesh))
    data = {"tokens": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=row_sh),
            "attention_mask": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=row_sh),
            "value_index": jax.ShapeDtypeStruct(sshape, jnp.int32, sharding=step_sh),
            "value_target": jax.ShapeDtypeStruct(sshape, jnp.float32, sharding=step_sh),
            "value_label": jax.ShapeDtypeStruct(sshape, jnp.float32, sharding=step_sh)}
  step = trainer.make_train_step(graphdef, tc, tx, schedule)
  fn = jax.jit(step, donate_argnums=(0,), out_shardings=(state_sh, replicated))
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = fn.lower(state, frozen, data).compile()
  return Memory.from_compiled(compiled, time.perf_counter() - start)


def decode_memory(cfg: LlamaConfig, mesh: jax.sharding.Mesh, *, batch: int, cache: int,
                  max_new_tokens: int = 256) -> Memory:
  """Compiles the sampler's decode loop (`sampling.decode_program`: a while_loop of one-token
  steps over a donated KV cache of `cache` slots) for `batch` rows, weights stored as
  `param_dtype`.

  Args:
    cfg: the model's config.
    mesh: the mesh to compile for.
    batch: decode rows.
    cache: KV-cache slots per row.
    max_new_tokens: the loop's step bound.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from glore_jax import sampling
  from glore_jax.model.llama import KVCache
  from glore_jax.model.sharding import BATCH, RULES, named, tree_shardings

  graphdef, state = nnx.split(_abstract(cfg))
  state = _with_shardings(state, tree_shardings(state, mesh))
  k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, cache)  # the model's KVCache layouts
  v_shape = (batch, cfg.num_kv_heads, cache, cfg.head_dim)
  k, v = (jax.ShapeDtypeStruct(shape, cfg.compute_dtype, sharding=named(RULES.cache_kv, shape, mesh))
          for shape in (k_shape, v_shape))
  rows = lambda shape, dtype, spec=RULES.cache_b: jax.ShapeDtypeStruct(
      shape, dtype, sharding=named(spec, shape, mesh))
  kv_cache = KVCache(tuple(k for _ in range(cfg.num_layers)), tuple(v for _ in range(cfg.num_layers)),
                     rows((batch,), jnp.int32), rows((batch,), jnp.int32))
  decode_state = sampling.DecodeState(
      tokens_rn=rows((batch, max_new_tokens), jnp.int32, RULES.act_bt),
      logprobs_rn=rows((batch, max_new_tokens), jnp.float32, RULES.act_bt),
      finish_r=rows((batch,), jnp.int32), last_r=rows((batch,), jnp.int32),
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P())))
  # the per-row keys exactly as the sampler makes them (typed keys or raw key data)
  one_row = sampling.row_keys(0, np.zeros((1, 1), np.uint32))
  key_shape = (batch,) + tuple(one_row.shape[1:])
  keys = jax.ShapeDtypeStruct(key_shape, one_row.dtype, sharding=named(
      P(BATCH, *(None,) * (len(key_shape) - 1)), key_shape, mesh))
  ids = jax.ShapeDtypeStruct((1,), jnp.int32, sharding=NamedSharding(mesh, P()))
  limit = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = sampling.decode_program.lower(
        graphdef, state, kv_cache, decode_state, keys, ids, ids, limit,
        params=sampling.SamplingParams(temperature=1.0)).compile()
  return Memory.from_compiled(compiled, time.perf_counter() - start)


def scaled(measure: Callable[[int], Memory], name: str, num_layers: int,
           layers: Sequence[int] | None) -> Memory:
  """`measure(layers)` at the full depth, or at two depths extrapolated linearly to it.

  Args:
    measure: compiles the program at a depth and returns its memory.
    name: the program's name in the extrapolation note.
    num_layers: the model's full depth.
    layers: two depths to compile at; None or empty: the full depth.

  Raises:
    ValueError: the two depths are equal or deeper than the model.
  """
  if not layers:
    return measure(num_layers)
  l1, l2 = sorted(layers)[:2]
  if l1 == l2 or l2 > num_layers:
    raise ValueError(f"--layers needs two different depths <= {num_layers}, got {layers}")
  a, b = measure(l1), measure(l2)
  # value(L) = a + (b - a) * (L - l1) / (l2 - l1): a linear fit per field through both points
  t = (num_layers - l1) / (l2 - l1)
  return Memory.combine(a, b, 1 - t, t,
                        f"{name}: compiled at {l1} and {l2} layers, linear to {num_layers}")


# ---- the TPU estimate ---------------------------------------------------------------------
#
# XLA:CPU partitions the same program differently from XLA:TPU in two ways that matter here: it
# has no reduce-scatter (a gradient's reduction is an all-reduce of the *full* f32 tensor, sliced
# late, so every layer's full gradient stays live until the optimizer) and it runs bf16
# collectives in f32. Its SPMD numbers above are therefore a loose upper bound for FSDP. The
# estimate below keeps the compiler's numbers for everything that does not depend on those
# lowerings: it compiles the programs on ONE device (no collectives at all) and divides what is
# parameter-shaped by the number of parameter shards (fsdp x tensor):
#
#   bytes/device = state / shards + gathered
#                  + max(optimizer_phase / shards,                      # the update
#                        grads / shards + per_row * rows_per_device)    # the backward pass
#
#   state            parameters + optimizer state: the one-device train step's arguments
#   optimizer_phase  the one-device train step's temp at 1 row: the f32 gradients and whatever
#                    else is live when the (fused, in-place) AdamW update runs
#   grads            f32 gradients of the trained parameters (from the shapes)
#   per_row          activations per row of the batch: the forward+backward of the loss with
#                    only the embedding trained (so the backward runs through every layer but
#                    makes no other parameter gradient), temp at 16 rows minus 8 rows, / 8
#   gathered         the FSDP working set, from the shapes: two layers' weights all-gathered in
#                    the compute dtype (the next layer is prefetched), the embedding and LM head,
#                    and one layer's full f32 gradient before its reduce-scatter.
#
# The decode loop: weights and everything else that does not grow with rows, / shards, plus the
# KV cache, output buffers and temporaries per row (one-device compiles at 8 and 16 rows).


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

  def predict(self, shards: int, rows_per_device: float, tensor: int = 1, *,
              remat_realized: bool = False) -> float:
    """Bytes per device for `rows_per_device` rows with parameters in `shards` x `tensor` shards.

    Args:
      shards: the FSDP shard count.
      rows_per_device: batch rows per device.
      tensor: the tensor-parallel shard count.
      remat_realized: use `per_row_remat` (when measured) for the activations.
    """
    per_row = self.per_row_remat if remat_realized and self.per_row_remat else self.per_row
    return (self.state / (shards * tensor) + self.fixed / tensor
            + max(self.param_phase / (shards * tensor),
                  self.grads / (shards * tensor) + per_row * rows_per_device))


def _one_device_mesh():
  import jax

  from glore_jax.model.sharding import make_mesh
  return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _param_bytes(cfg, dtype=None) -> dict[str, float]:
  import numpy as np
  itemsize = np.dtype(dtype or cfg.compute_dtype).itemsize
  d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  layer = d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * f + 2 * d
  return {"layer": float(layer), "embedding": float(cfg.vocab_size * d),
          "lm_head": 0.0 if cfg.tie_word_embeddings else float(cfg.vocab_size * d),
          "itemsize": float(itemsize)}


def gathered_bytes(cfg: LlamaConfig) -> float:
  """FSDP working set: 2 layers + embedding + LM head all-gathered in the compute dtype, plus
  one layer's (or the embedding's) f32 gradient before its reduce-scatter."""
  p = _param_bytes(cfg)
  weights = (2 * p["layer"] + p["embedding"] + p["lm_head"]) * p["itemsize"]
  return weights + max(p["layer"], p["embedding"]) * 4


def activation_memory(cfg: LlamaConfig, mesh: jax.sharding.Mesh, *, batch: int, seq: int
                      ) -> Memory:
  """The training loss's forward and backward with only the embedding trainable: the backward
  still runs through every layer (activation gradients), but no other parameter gradient
  exists, so differences between batch sizes are the activations' cost per row.

  Args:
    cfg: the model's config.
    mesh: the mesh to compile for.
    batch: rows.
    seq: tokens per row.
  """
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from glore_jax.training import trainer

  tc = trainer.TrainConfig(loss="lm", total_steps=1000, progress=False)
  graphdef, emb, frozen, _ = nnx.split(_abstract(cfg), nnx.All(nnx.Param, nnx.PathContains("embedding")),
                                       nnx.Param, ...)
  fresh = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  emb, frozen = fresh(emb), fresh(frozen)
  loss = trainer.make_loss_fn(graphdef, tc)
  # fresh Variables for the frozen part inside the traced function (nnx.remat updates them)
  grad = jax.grad(lambda e, f, mb: loss(e, jax.tree.map(lambda x: x, f), mb)[0])
  data = {k: jax.ShapeDtypeStruct((batch, seq), jnp.int32)
          for k in ("tokens", "attention_mask", "target_mask")}
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = jax.jit(grad).lower(emb, frozen, data).compile()
  return Memory.from_compiled(compiled, time.perf_counter() - start)


ACT_ROWS = (8, 16)


def fit_train(name: str, *, seq: int, layers: Sequence[int] | None = None,
              dtype: str = "bfloat16", param_dtype: str = "float32", remat: bool = True,
              grad_accum: int = 1) -> Fit:
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
  cfg_at = lambda l: model_config(name, layers=l, dtype=dtype, param_dtype=param_dtype,
                                  remat=remat)
  step = scaled(lambda l: train_memory(cfg_at(l), mesh, batch=grad_accum, seq=seq,
                                       grad_accum=grad_accum), "one-device train",
                full.num_layers, layers)
  # 8 and 16 rows: enough that activations, not row-independent buffers, set the peak
  shallow = min(layers) if layers else 1
  one_block = [activation_memory(cfg_at(shallow), mesh, batch=rows, seq=seq) for rows in ACT_ROWS]
  if layers and shallow == min(layers) and len(set(layers)) == 2:
    deeper = [activation_memory(cfg_at(max(layers)), mesh, batch=rows, seq=seq)
              for rows in ACT_ROWS]
    t = (full.num_layers - shallow) / (max(layers) - shallow)
    act = [Memory.combine(a, b, 1 - t, t, "") for a, b in zip(one_block, deeper)]
  else:
    act = [activation_memory(cfg_at(full.num_layers), mesh, batch=rows, seq=seq)
           for rows in ACT_ROWS]
  batch_bytes = 3 * 4 * seq  # tokens, attention_mask, target_mask per row
  rows_step = ACT_ROWS[1] - ACT_ROWS[0]
  per_row = max(act[1].temp - act[0].temp, 0.0) / rows_step + batch_bytes
  # remat realized: the compiled activations of the shallow model (its blocks' working set,
  # logits, loss) plus each further block's saved input, [seq, hidden] in the compute dtype
  saved_input = seq * full.hidden_size * full.compute_dtype.itemsize
  per_row_remat = (max(one_block[1].temp - one_block[0].temp, 0.0) / rows_step + batch_bytes
                   + (full.num_layers - shallow) * saved_input) if remat else per_row
  p = _param_bytes(full, "float32")
  trainable = (full.num_layers * p["layer"] + p["embedding"] + p["lm_head"]
               + full.hidden_size) * 4  # the LM loss trains everything but a value head
  state = step.argument - batch_bytes * grad_accum
  param_phase = max(step.temp - per_row * grad_accum, 0.0)
  gathered = gathered_bytes(full)
  return Fit(state=state, param_phase=param_phase, grads=trainable, per_row=per_row,
             per_row_remat=min(per_row_remat, per_row), fixed=gathered + step.code,
             parts={"compiled_at_layers": list(layers or []),
                    "compile_s": step.compile_s + sum(a.compile_s for a in act)})


def fit_decode(name: str, *, cache: int, max_new_tokens: int,
               layers: Sequence[int] | None = None, dtype: str = "bfloat16",
               param_dtype: str = "bfloat16") -> Fit:
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
    return scaled(lambda l: decode_memory(model_config(
        name, layers=l, dtype=dtype, param_dtype=param_dtype, remat=False), mesh, batch=rows,
        cache=cache, max_new_tokens=max_new_tokens), "one-device decode", full.num_layers, layers)

  a, b = at(8), at(16)
  per_row = ((b.argument + b.temp) - (a.argument + a.temp)) / 8
  weights = (a.argument + a.temp) - 8 * per_row
  p = _param_bytes(full)
  gathered = (2 * p["layer"] + p["lm_head"] + p["embedding"]) * p["itemsize"]
  return Fit(state=weights, param_phase=0.0, grads=0.0, per_row=per_row, fixed=gathered + a.code,
             parts={"compiled_at_layers": list(layers or []),
                    "compile_s": a.compile_s + b.compile_s})


# ---- recommendations ----------------------------------------------------------------------


def recommend(fit: Fit, *, hbm: float, devices: int, max_rows_per_device: int = 64,
              tensor_options: Sequence[int] = (1, 2, 4, 8)) -> dict[str, Any] | None:
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
      return {"mesh": {"data": 1, "fsdp": shards, "tensor": tensor},
              "global_batch": rows * shards, "rows_per_device": rows,
              "bytes_per_device": need, "hbm": hbm}
  return None


# ---- TPU: the compiler's own numbers for a named slice -----------------------------------------
#
# With libtpu installed (extra `tpu-aot`) the programs are compiled by the TPU compiler for the
# slice's real topology (`glore_jax.aot`): nothing above (CPU compiles, the one-device estimate)
# is needed. `--slice` plans one model; `--config` plans every stage of a config.


def _pow2(n: int) -> int:
  return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def tpu_program(kind: str, cfg: LlamaConfig, mesh: jax.sharding.Mesh, *,
                layers: Sequence[int] | None = None, **shape: int) -> tuple[Program, str]:
  """`aot.compile_<kind>` at the model's full depth, or at two depths extrapolated linearly
  (every field, flops and bytes included) when `layers` is given.

  Args:
    kind: 'train_lm', 'train_value', 'prefill', 'fanout' or 'decode'.
    cfg: the model's config.
    mesh: the mesh to compile for.
    layers: two depths to compile at and extrapolate from; None: the full depth.
    **shape: the compile function's shape arguments (batch, seq, rows, ...).

  Returns:
    (the program, a note on the extrapolation or '').

  Raises:
    ValueError: the two depths are equal or deeper than the model.
  """
  from glore_jax import aot
  compile_fn = {"train_lm": functools.partial(aot.compile_train, loss="lm"),
                "train_value": functools.partial(aot.compile_train, loss="value"),
                "prefill": aot.compile_prefill, "fanout": aot.compile_fanout,
                "decode": aot.compile_decode}[kind]
  if not layers:
    return compile_fn(cfg, mesh, **shape), ""
  l1, l2 = sorted(layers)[:2]
  if l1 == l2 or l2 > cfg.num_layers:
    raise ValueError(f"--layers needs two different depths <= {cfg.num_layers}, got {layers}")
  a = compile_fn(cfg.replace(num_layers=l1), mesh, **shape)
  b = compile_fn(cfg.replace(num_layers=l2), mesh, **shape)
  t = (cfg.num_layers - l1) / (l2 - l1)
  fields = ("argument", "output", "alias", "temp", "code", "flops", "bytes_accessed")
  out = dataclasses.replace(a, compile_s=a.compile_s + b.compile_s,
                            **{f: (1 - t) * getattr(a, f) + t * getattr(b, f) for f in fields})
  return out, f"compiled at {l1} and {l2} layers, linear to {cfg.num_layers}"


@dataclasses.dataclass
class StagePlan:
  """One program of one stage on a slice: its shape, the mesh it runs on, the compiled sizes."""
  stage: str
  program: str
  mesh: dict
  shape: dict
  result: dict  # aot.Program.as_dict() + roofline
  hbm: float
  batch_size: int  # the stage's configured batch_size
  note: str = ""

  @property
  def fits(self) -> bool:
    return self.result["peak"] <= HEADROOM * self.hbm


def load_config(path: str) -> ml_collections.ConfigDict:
  """A config file's `get_config()`, found as `python -m glore_jax.main --config` finds it."""
  from glore_jax.config_files import load_config_file
  return load_config_file(path)


def config_model(config: ml_collections.ConfigDict, model: str = "") -> LlamaConfig:
  """The policy architecture of a config: `model` (a preset) if given, else the checkpoint's
  config.json when it exists, else `config.model.preset`; dtypes and remat from the config.

  Args:
    config: the run config.
    model: a preset name that overrides the config's model; '': the config's.
  """
  from glore_jax.model.config import LlamaConfig, preset
  m = config.model
  settings = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat)
  if model:
    return preset(model, **settings)
  if m.checkpoint and os.path.exists(os.path.join(m.checkpoint, "config.json")):
    return LlamaConfig.from_hf(m.checkpoint, **settings)
  if m.preset == "tiny":  # the defaults' from-scratch model: its widths are in the config
    return preset("tiny", vocab_size=512, hidden_size=m.hidden_size,
                  intermediate_size=m.intermediate_size, num_layers=m.num_layers,
                  num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=0,
                  max_position_embeddings=m.max_position_embeddings, **settings)
  return preset(m.preset, **settings)


def stage_shapes(config: ml_collections.ConfigDict, *, prompt_tokens: int
                 ) -> list[tuple[str, str, bool, dict, int]]:
  """(stage, program, runs on one host, shape, the stage's batch_size) for every program a config's stages run, at the
  largest shapes the runtime builds from it (rows and lengths rounded up to its power-of-two
  buckets). Sampling stages run on each host alone (`stages.LOCAL_STAGES`).

  Args:
    config: the run config.
    prompt_tokens: the longest prompt, in tokens.
  """
  stages = set(config.stages.split(","))
  max_length = config.data.max_length
  out = []

  def train(stage, section, loss, seq):
    t = section.train
    out.append((stage, f"train_{loss}", False, dict(batch=t.batch_size, seq=_pow2(seq),
                                                      grad_accum=t.grad_accum), t.batch_size))

  def sampling(stage, section, fanout: int, prompt: int, temperature: float):
    rows = _pow2(section.batch_size)
    seq = _pow2(prompt)
    sequences = _pow2(max(1, section.batch_size // fanout))
    new = section.max_new_tokens
    size = section.batch_size
    out.append((stage, "prefill", True, dict(batch=sequences, seq=seq), size))
    out.append((stage, "fanout", True, dict(sequences=sequences, seq=seq, rows=rows,
                                             max_new_tokens=new, temperature=temperature), size))
    out.append((stage, "decode", True, dict(rows=rows, cache=seq + new, max_new_tokens=new,
                                             temperature=temperature), size))

  if "policy" in stages:
    train("policy", config.policy, "lm", max_length)
  if "sample" in stages:  # K samples of a prompt read one prefill
    s = config.sample
    sampling("sample", s, s.num_samples, prompt_tokens, s.temperature)
  if "label" in stages:  # rows from prefixes of prompt + draft; >= K rows per draft
    s = config.sorm
    sampling("label", s, s.num_rollouts, prompt_tokens + s.max_new_tokens, s.temperature)
  for stage, section in (("train_orm", config.reward), ("train_sorm", config.reward)):
    if stage in stages:
      train(stage, section, "value", max_length)
  for stage in ("train_global", "train_local"):
    if stage in stages:
      train(stage, config.refine, "lm", config.refine.max_length)
  if "evaluate" in stages:  # refiner prompts carry a draft; one row per prompt at worst
    s = config.evaluate
    sampling("evaluate", s, 1, prompt_tokens + s.max_new_tokens, s.temperature)
  return out


# the shape entries that grow with a stage's batch_size (halved to measure bytes per row)
_ROW_KEYS = {"train_lm": ("batch",), "train_value": ("batch",), "prefill": ("batch",),
             "fanout": ("rows", "sequences"), "decode": ("rows",)}


def _scaled_shape(program: str, shape: dict, factor: float) -> dict:
  return {k: (max(1, int(v * factor)) if k in _ROW_KEYS[program] else v) for k, v in shape.items()}


def batch_multiplier(peak: float, half_peak: float, hbm: float, *, lowest: int = -6,
                     highest: int = 3) -> float | None:
  """The largest power-of-two factor f (2**lowest .. 2**highest) by which the rows of a
  program that needs `peak` bytes (and `half_peak` at half its rows) can be scaled and still
  fit HEADROOM * hbm, bytes linear in rows; None when even 2**lowest does not fit.

  Args:
    peak: the program's peak bytes per device.
    half_peak: its peak at half the rows.
    hbm: bytes of HBM per device.
    lowest: the smallest exponent tried.
    highest: the largest exponent tried.
  """
  per_unit = 2 * (peak - half_peak)  # bytes for the program's whole batch of rows
  fixed = peak - per_unit
  best = None
  for e in range(lowest, highest + 1):
    if fixed + per_unit * 2.0 ** e <= HEADROOM * hbm:
      best = 2.0 ** e
  return best


def model_flops_per_token(cfg: LlamaConfig, seq: int) -> float:
  """Training FLOPs per token as MFU counts them: 6 per matmul weight (forward + backward; the
  LM head included, the embedding lookup not) plus causal attention's 6 * L * seq * N * H.

  Args:
    cfg: the model's config.
    seq: tokens per row (attention's cost grows with it).
  """
  weights = cfg.num_params(include_embedding=False) + cfg.vocab_size * cfg.hidden_size
  return 6.0 * weights + 6.0 * cfg.num_layers * seq * cfg.num_heads * cfg.head_dim


def throughput(program: str, shape: dict, result: Program, cfg: LlamaConfig, devices: int,
               chip: Chip) -> dict[str, float]:
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
  seconds = result.roofline_s(chip)
  out = {"roofline_s": seconds,
         "compute_bound": result.flops / chip.peak_bf16_flops >= result.bytes_accessed
         / chip.hbm_bytes_per_s}
  if seconds <= 0:
    return out
  if program.startswith("train"):
    tokens = shape["batch"] * shape["seq"] / devices / seconds
    model_flops = model_flops_per_token(cfg, shape["seq"]) * shape["batch"] * shape["seq"] / devices
    if result.flops < model_flops:  # the compiled count cannot be below the model's own:
      out["flops_below_model"] = True  # an extrapolation (--layers) gone wrong; no estimate
      return out
    out["tokens_per_s_per_chip"] = tokens
    out["mfu"] = model_flops / seconds / chip.peak_bf16_flops
  elif program == "decode":
    out["tokens_per_s_per_chip"] = shape["rows"] / devices / seconds
  return out


def prefix_sharing(cfg: LlamaConfig, *, prefix_slots: int, new_tokens: int, rollouts: int,
                   peak: float, rows: int, host_chips: int, hbm: float) -> dict[str, float]:
  """The label stage's KV cache on paper: bytes per rollout row when every row holds a copy of
  its prefix's cache (as the sampler does: `sampling.start_program` gathers a copy per row) and when
  the K rollouts of a prefix share one copy; decode rows one host fits either way, from the
  compiled decode program's peak (`peak` per device at `rows` rows) minus its cache.

  Args:
    cfg: the model's config.
    prefix_slots: cache slots of a prefix.
    new_tokens: slots each rollout adds.
    rollouts: rollouts per prefix (K).
    peak: the decode program's peak bytes per device.
    rows: its decode rows.
    host_chips: chips per host.
    hbm: bytes of HBM per chip.
  """
  itemsize = cfg.compute_dtype.itemsize
  per_slot = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * itemsize
  row = per_slot * (prefix_slots + new_tokens)
  shared = row - per_slot * prefix_slots * (1 - 1 / rollouts)
  other = peak - row * rows / host_chips  # weights, output buffers, temporaries per device
  budget = host_chips * max(HEADROOM * hbm - other, 0.0)
  return {"cache_bytes_per_row": row, "prefix_bytes_per_row": per_slot * prefix_slots,
          "shared_cache_bytes_per_row": shared, "rows_per_host_copied": budget / row,
          "rows_per_host_shared": budget / shared, "rollouts": rollouts}


def plan_stages(config: ml_collections.ConfigDict, slice_name: str, *, model: str = "",
                layers: Sequence[int] | None = None, prompt_tokens: int = 256,
                only: Sequence[str] = (), recommend: bool = False,
                sample_param_dtype: str = "", xla_attention: bool = False,
                log: Callable[[str], None] = print) -> dict[str, Any]:
  """Compiles every program of `config`'s stages for `slice_name` with the TPU compiler; per
  program: per-device bytes, whether it fits HEADROOM of HBM, roofline time. Programs of equal
  shape compile once. `recommend` also compiles each at half its rows and gives the largest
  power-of-two multiple of the stage's batch_size that fits (bytes linear in rows).

  Args:
    config: the run config.
    slice_name: a slice name, e.g. 'v4-32'.
    model: a preset name that overrides the config's model; '': the config's.
    layers: two depths to compile at and extrapolate from; None: the full depth.
    prompt_tokens: the longest prompt, in tokens.
    only: plan only these stages; empty: all the config runs.
    recommend: also compile at half the rows and give batch multipliers.
    sample_param_dtype: the sampling stages' weight dtype; '': the config's.
    xla_attention: plan XLA attention instead of the Pallas kernels.
    log: receives a progress line per compile.
  """
  from glore_jax import aot
  from glore_jax.model.sharding import make_mesh
  sl = aot.get_slice(slice_name)
  cfg = aot.for_tpu(config_model(config, model))
  if xla_attention:  # XLA attention on TPU too: the plan without the Pallas kernels
    cfg = cfg.replace(pallas_attention=False)
  # sampling loads the policy with the config's dtypes (the sampling stages' model.load)
  sample_cfg = cfg.replace(remat=False, param_dtype=sample_param_dtype or cfg.param_dtype)
  m = config.mesh
  global_mesh = make_mesh(m.data, m.fsdp, m.tensor, devices=list(aot.devices(slice_name)))
  host_mesh = aot.host_mesh(slice_name, global_mesh)
  done: dict[tuple, tuple] = {}
  plans = []
  for stage, program, on_host, shape, size in stage_shapes(config, prompt_tokens=prompt_tokens):
    if only and stage not in only:
      continue
    mesh = host_mesh if on_host else global_mesh
    model_cfg = sample_cfg if on_host else cfg
    key = (program, on_host, tuple(sorted(shape.items())))
    if key not in done:
      start = time.perf_counter()
      done[key] = tpu_program(program, model_cfg, mesh, layers=layers, **shape)
      log(f"  compiled {stage}/{program} {shape} on {dict(mesh.shape)} in "
          f"{time.perf_counter() - start:.0f} s")
    result, note = done[key]
    row = result.as_dict()
    row.update(throughput(program, shape, result, model_cfg, mesh.size, sl.chip))
    if recommend:
      half = _scaled_shape(program, shape, 0.5)
      hkey = (program, on_host, tuple(sorted(half.items())))
      if hkey not in done:
        done[hkey] = tpu_program(program, model_cfg, mesh, layers=layers, **half)
        log(f"  compiled {stage}/{program} {half} (half the rows)")
      row["batch_multiplier"] = batch_multiplier(result.peak, done[hkey][0].peak,
                                                 sl.chip.hbm_bytes)
    plans.append(StagePlan(stage, program, dict(mesh.shape), shape, row, sl.chip.hbm_bytes, size,
                           note))
  sharing = None
  label = [p for p in plans if p.stage == "label" and p.program == "decode"]
  if label:
    p = label[0]
    sharing = prefix_sharing(
        sample_cfg, prefix_slots=p.shape["cache"] - p.shape["max_new_tokens"],
        new_tokens=p.shape["max_new_tokens"], rollouts=config.sorm.num_rollouts,
        peak=p.result["peak"], rows=p.shape["rows"], host_chips=host_mesh.size,
        hbm=sl.chip.hbm_bytes)
  recommended = {}
  if recommend:
    for p in plans:
      f = p.result["batch_multiplier"]
      current = recommended.get(p.stage, (math.inf,))[0]
      recommended[p.stage] = (min(current, f if f is not None else 0.0),)
    recommended = {k: v[0] for k, v in recommended.items()}
  return {"slice": slice_name, "chip": dataclasses.asdict(sl.chip), "model": cfg.num_params(),
          "recommended_batch_multiplier": recommended, "label_prefix_sharing": sharing,
          "num_layers": cfg.num_layers, "layers": list(layers or []),
          "attention": "xla" if xla_attention else "pallas where it applies",
          "global_mesh": dict(global_mesh.shape), "host_mesh": dict(host_mesh.shape),
          "prompt_tokens": prompt_tokens, "programs": [dataclasses.asdict(p) | {"fits": p.fits}
                                                       for p in plans]}


def format_stage_plan(plan: dict[str, Any]) -> str:
  """The `plan_stages` result as a Markdown table, one row per program."""
  chip = plan["chip"]
  lines = [f"# {plan['slice']}: {chip['kind']} chips of {chip['hbm_bytes'] / GiB:.0f} GiB; "
           f"{plan['model'] / 1e9:.2f}B parameters, {plan['num_layers']} layers, attention: "
           f"{plan.get('attention', 'pallas where it applies')}; training mesh "
           f"{plan['global_mesh']}, sampling on each host's mesh {plan['host_mesh']}",
           f"TPU compiler's memory analysis per device (GiB); fits = peak <= "
           f"{int(HEADROOM * 100)}% of HBM; prompts up to {plan['prompt_tokens']} tokens", "",
           "| stage | program | shape | arguments | temp | peak | fits | roofline ms | "
           "est. tokens/s/chip | est. MFU |",
           "|---|---|---|---:|---:|---:|---|---:|---:|---:|"]
  notes = set()
  for p in plan["programs"]:
    r = p["result"]
    shape = " ".join(f"{k}={v}" for k, v in p["shape"].items() if k != "temperature")
    lines.append(f"| {p['stage']} | {p['program']} | {shape} | {_gib(r['argument'])} | "
                 f"{_gib(r['temp'])} | **{_gib(r['peak'])}** | {'yes' if p['fits'] else 'NO'} | "
                 f"{r['roofline_s'] * 1e3:.1f} | "
                 + (f"{r['tokens_per_s_per_chip']:,.0f}" if "tokens_per_s_per_chip" in r else "-")
                 + " | " + (f"{r['mfu']:.0%}" if "mfu" in r else "-") + " |")
    if p["note"]:
      notes.add(p["note"])
  lines += [""] + [f"({n})" for n in sorted(notes)]
  bad = sorted({p["stage"] for p in plan["programs"] if not p["fits"]})
  lines.append("every stage fits" if not bad else f"does NOT fit: {', '.join(bad)}")
  share = plan.get("label_prefix_sharing")
  if share:
    mib = 1024 ** 2
    lines += ["", f"Label stage KV cache: {share['cache_bytes_per_row'] / mib:,.0f} MiB per rollout "
              f"row, {share['prefix_bytes_per_row'] / mib:,.0f} MiB of it a copy of the prefix's "
              f"cache; one host fits {share['rows_per_host_copied']:,.0f} rows so; with the "
              f"{share['rollouts']} rollouts of a prefix sharing one copy "
              f"{share['shared_cache_bytes_per_row'] / mib:,.0f} MiB per row, "
              f"{share['rows_per_host_shared']:,.0f} rows (on paper: the sampler copies)."]
  rec = plan.get("recommended_batch_multiplier")
  if rec:
    lines += ["", "Recommended batch_size per stage (the largest power-of-two multiple of the "
              "configured one that fits, bytes linear in rows):", ""]
    for stage, f in rec.items():
      size = next(p for p in plan["programs"] if p["stage"] == stage)["batch_size"]
      lines.append(f"  {stage}: " + ("nothing fits" if not f else f"{int(size * f)}"
                                      f" (configured {size})"))
  return "\n".join(lines)


# ---- command line -------------------------------------------------------------------------


def _gib(x: float) -> str:
  return f"{x / GiB:.2f}"


def _set_device_count(n: int) -> None:
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # compile-only: no need for more threads than the machine's cores
  if "jax" in sys.modules:
    import jax
    if jax.device_count() < n:
      raise RuntimeError(f"JAX already started with {jax.device_count()} devices; run the plan in "
                         f"a fresh process (python -m glore_jax.plan) to simulate {n}")


HOST_DEVICES = 4  # chips per TPU VM host for every slice above: sampling runs per host


def make_plan(args: argparse.Namespace) -> dict[str, Any]:
  """The CPU plan of one model (`--model`, `--mesh`, `--devices`): compiled memory and estimates.

  Args:
    args: the parsed command line.
  """
  import jax

  from glore_jax.model.sharding import make_mesh

  data, fsdp, tensor = parse_mesh(args.mesh)
  devices = jax.devices()[:args.devices]
  mesh = make_mesh(data, fsdp, tensor, devices=devices)
  sizes = dict(mesh.shape)
  remat = not args.no_remat
  full = model_config(args.model, dtype=args.dtype, param_dtype=args.param_dtype, remat=remat)
  layers = [int(x) for x in args.layers.split(",")] if args.layers else None
  steps = set(args.steps.split(","))
  out: dict[str, Any] = {
      "model": args.model, "params": full.num_params(), "num_layers": full.num_layers,
      "devices": len(devices), "mesh": sizes, "dtype": args.dtype,
      "param_dtype": args.param_dtype, "decode_param_dtype": args.decode_param_dtype,
      "remat": remat, "layers": layers or [],
      "train": {"batch": args.batch, "seq": args.seq, "grad_accum": args.grad_accum},
      "decode": {"batch": args.decode_batch, "cache": args.cache,
                 "max_new_tokens": args.max_new_tokens}}
  shards = sizes["data"] * sizes["fsdp"]  # batch rows split over data and fsdp
  if "train" in steps:
    if not args.no_spmd:
      mem = scaled(lambda l: train_memory(model_config(
          args.model, layers=l, dtype=args.dtype, param_dtype=args.param_dtype, remat=remat),
          mesh, batch=args.batch, seq=args.seq, grad_accum=args.grad_accum), "train",
          full.num_layers, layers)
      out["train"]["cpu_spmd"] = mem.as_dict()
    fit = fit_train(args.model, seq=args.seq, layers=layers, dtype=args.dtype,
                    param_dtype=args.param_dtype, remat=remat, grad_accum=args.grad_accum)
    rows = args.batch / args.grad_accum / shards
    # parameters and optimizer state shard over fsdp and tensor (not data)
    out["train"]["fit"] = dataclasses.asdict(fit)
    out["train"]["tpu_estimate"] = fit.predict(sizes["fsdp"], rows, sizes["tensor"],
                                               remat_realized=True)
    out["train"]["as_scheduled_estimate"] = fit.predict(sizes["fsdp"], rows, sizes["tensor"])
  if "decode" in steps:
    if not args.no_spmd:
      mem = scaled(lambda l: decode_memory(model_config(
          args.model, layers=l, dtype=args.dtype, param_dtype=args.decode_param_dtype,
          remat=False), mesh, batch=args.decode_batch, cache=args.cache,
          max_new_tokens=args.max_new_tokens), "decode", full.num_layers, layers)
      out["decode"]["cpu_spmd"] = mem.as_dict()
    fit = fit_decode(args.model, cache=args.cache, max_new_tokens=args.max_new_tokens,
                     layers=layers, dtype=args.dtype, param_dtype=args.decode_param_dtype)
    rows = args.decode_batch / shards
    est = fit.predict(sizes["fsdp"], rows, sizes["tensor"])
    out["decode"]["fit"] = dataclasses.asdict(fit)
    out["decode"]["tpu_estimate"] = est
  if args.recommend:
    out["recommend"] = {}
    if "train" in steps:
      fit = Fit(**{k: v for k, v in out["train"]["fit"].items()})
      out["recommend"]["train"] = {name: recommend(fit, hbm=hbm, devices=n)
                                   for name, (n, hbm) in TPU_SLICES.items()}
    if "decode" in steps:
      fit = Fit(**{k: v for k, v in out["decode"]["fit"].items()})
      out["recommend"]["decode"] = {
          name: recommend(fit, hbm=hbm, devices=min(n, HOST_DEVICES), max_rows_per_device=256,
                          tensor_options=(1,))
          for name, (n, hbm) in TPU_SLICES.items()}
  return out


def format_plan(plan: dict[str, Any]) -> str:
  """The `make_plan` result as readable text."""
  m = plan["mesh"]
  lines = [f"# {plan['model']}: {plan['params'] / 1e9:.2f}B parameters, {plan['num_layers']} layers",
           f"mesh data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']} ({plan['devices']} "
           f"simulated devices); training: {plan['dtype']} compute over {plan['param_dtype']} "
           f"params + AdamW, remat={plan['remat']}; sampling: {plan['decode_param_dtype']} weights",
           ""]
  t, d = plan["train"], plan["decode"]
  shapes = {"train": f"batch {t['batch']} x seq {t['seq']} (accum {t['grad_accum']})",
            "decode": f"batch {d['batch']}, KV cache {d['cache']} slots"}
  if any("cpu_spmd" in plan[k] for k in ("train", "decode")):
    lines += ["XLA:CPU memory analysis of the SPMD program, per device (GiB):", "",
              "| step | shape | arguments | outputs | aliased | temp | code | peak |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for kind in ("train", "decode"):
      mem = plan[kind].get("cpu_spmd")
      if mem:
        lines.append(f"| {kind} | {shapes[kind]} | {_gib(mem['argument'])} | {_gib(mem['output'])} "
                     f"| {_gib(mem['alias'])} | {_gib(mem['temp'])} | {_gib(mem['code'])} | "
                     f"{_gib(mem['peak'])} |")
        if mem["extrapolated"]:
          notes.append(mem["extrapolated"])
    lines += ["", "(XLA:CPU has no reduce-scatter and runs bf16 collectives in f32, so its temp "
              "holds every layer's full f32 gradient: a loose upper bound on TPU.)"]
    lines += [f"({n})" for n in notes]
    lines.append("")
  if any("tpu_estimate" in plan[k] for k in ("train", "decode")):
    lines += ["TPU estimate per device (GiB), from one-device compiles (see glore_jax/plan.py):", "",
              "| step | shape | state / weights | backward: grads + activations (or KV cache) | "
              "optimizer phase | FSDP gathered | total | total, XLA:CPU schedule |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    shards = m["data"] * m["fsdp"]
    pshards = m["fsdp"] * m["tensor"]
    for kind in ("train", "decode"):
      if "tpu_estimate" not in plan[kind]:
        continue
      f = plan[kind]["fit"]
      rows = (t["batch"] / t["grad_accum"] / shards if kind == "train" else d["batch"] / shards)
      per_row = f.get("per_row_remat") or f["per_row"]
      cells = [f["state"] / pshards, f["grads"] / pshards + per_row * rows,
               f["param_phase"] / pshards, f["fixed"] / m["tensor"]]
      scheduled = plan[kind].get("as_scheduled_estimate", plan[kind]["tpu_estimate"])
      lines.append(f"| {kind} | {shapes[kind]} | " + " | ".join(_gib(c) for c in cells)
                   + f" | **{_gib(plan[kind]['tpu_estimate'])}** | {_gib(scheduled)} |")
    lines += ["", "(total = state + the larger of the two phases + gathered. Activations count "
              "remat as realized on TPU: the compiled activations of the shallowest model plus "
              "each further block's saved input; XLA:CPU's own schedule keeps every block's "
              "activations (last column).)"]
    if plan["layers"]:
      lines += [f"(compiled at {plan['layers'][0]} and {plan['layers'][1]} layers, "
                f"extrapolated linearly to {plan['num_layers']})"]
    lines.append("")
  rec = plan.get("recommend")
  if rec:
    lines += [f"Recommended for TPU slices (fsdp over the slice for training at seq {t['seq']}; "
              f"sampling on each {HOST_DEVICES}-chip host, cache {d['cache']}), "
              f"filling <= {int(HEADROOM * 100)}% of HBM:", "",
              "| slice | chips x HBM | train mesh (data, fsdp, tensor) | train global batch | "
              "train GiB/chip | decode rows per host | decode GiB/chip |",
              "|---|---|---|---:|---:|---:|---:|"]
    for name, (n, hbm) in TPU_SLICES.items():
      r = rec.get("train", {}).get(name)
      s = rec.get("decode", {}).get(name)
      train_cells = (["does not fit", "-", "-"] if r is None else [
          f"{r['mesh']['data']}, {r['mesh']['fsdp']}, {r['mesh']['tensor']}",
          str(r["global_batch"]), _gib(r["bytes_per_device"])])
      decode_cells = (["does not fit on one host", "-"] if s is None else [
          str(s["global_batch"]), _gib(s["bytes_per_device"])])
      lines.append(f"| {name} | {n} x {hbm // GiB} GiB | " + " | ".join(train_cells + decode_cells)
                   + " |")
  return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
  """The command line of `python -m glore_jax.plan`."""
  p = argparse.ArgumentParser(prog="python -m glore_jax.plan", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="llama2-7b", help="a preset: llama2-7b, llama2-13b, llama2-70b, ...")
  p.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
  p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (one may be -1)")
  p.add_argument("--batch", type=int, default=0, help="global training batch (rows); 0: one per device")
  p.add_argument("--seq", type=int, default=512, help="training sequence length")
  p.add_argument("--grad-accum", type=int, default=1)
  p.add_argument("--decode-batch", type=int, default=0, help="decode rows; 0: 8 per device")
  p.add_argument("--cache", type=int, default=1024, help="KV cache slots (prompt + new tokens)")
  p.add_argument("--max-new-tokens", type=int, default=256)
  p.add_argument("--dtype", default="bfloat16", help="compute dtype")
  p.add_argument("--param-dtype", default="float32", help="training master weights")
  p.add_argument("--decode-param-dtype", default="bfloat16", help="weights when sampling")
  p.add_argument("--no-remat", action="store_true")
  p.add_argument("--steps", default="train,decode", help="which programs: train,decode")
  p.add_argument("--layers", default="", help="two depths 'L1,L2' to compile and extrapolate "
                 "linearly to the full model (faster for 70B); empty compiles the full depth")
  p.add_argument("--recommend", action="store_true",
                 help="also size v4-8 / v4-32 / v5p-64 / v5e-256 from the memory model")
  p.add_argument("--no-spmd", action="store_true",
                 help="skip the (slow, CPU-pessimistic) SPMD compile on the simulated mesh")
  p.add_argument("--json", default="", help="also write the plan as JSON here")
  tpu = p.add_argument_group("TPU compiler (needs the tpu-aot extra: libtpu)")
  tpu.add_argument("--slice", default="", help="compile for this TPU slice with the TPU "
                   "compiler: v4-8, v4-32, v5p-8, v5p-64, v5e-8, v5e-256, v6e-8")
  tpu.add_argument("--config", default="", help="plan every stage of this config file "
                   "(with --slice): fits or not per stage, per device")
  tpu.add_argument("--stages", default="", help="with --config: only these stages")
  tpu.add_argument("--merge", default="", help="comma-separated plan JSON files of one config "
                   "and slice (disjoint --stages runs): print and write (--json) them as one")
  tpu.add_argument("--xla-attention", action="store_true",
                   help="compile XLA attention instead of the Pallas TPU kernels")
  tpu.add_argument("--prompt-tokens", type=int, default=256,
                   help="longest prompt the sampling stages see (before any draft)")
  return p


def model_config_dict(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """The plan of one model (`--model`, no `--config`) as a config: the policy stage's training
  step and the sample stage's prefill / fan-out / decode (one sample per prompt)."""
  from glore_jax.defaults import get_config
  c = get_config()
  c.stages = "policy,sample"
  c.model.update(preset=args.model, dtype=args.dtype, param_dtype=args.param_dtype,
                 remat=not args.no_remat)
  data, fsdp, tensor = parse_mesh(args.mesh)
  c.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  c.data.max_length = args.seq
  c.policy.train.update(batch_size=args.batch, grad_accum=args.grad_accum)
  c.sample.update(batch_size=args.decode_batch, num_samples=1,
                  max_new_tokens=args.max_new_tokens)
  return c


def merge_plans(plans: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """One plan from plans of disjoint stage lists of the same config and slice (e.g. run in
  parallel with --stages)."""
  first = plans[0]
  for p in plans[1:]:
    for key in ("slice", "model", "num_layers", "global_mesh", "host_mesh", "prompt_tokens"):
      if p[key] != first[key]:
        raise ValueError(f"cannot merge plans with different {key}: {first[key]} vs {p[key]}")
  return {**first, "programs": [x for p in plans for x in p["programs"]],
          "compile_s": sum(p.get("compile_s", 0.0) for p in plans),
          "label_prefix_sharing": next((p["label_prefix_sharing"] for p in plans
                                        if p.get("label_prefix_sharing")), None)}


def tpu_main(args: argparse.Namespace) -> int:
  """--slice (and --config): the TPU compiler's plan. Exit status 1 when a stage does not fit."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from glore_jax import aot
  if not aot.available():
    print("error: --slice needs the TPU compiler: pip install 'glore-jax[tpu-aot]' (libtpu; "
          "Linux x86-64). Without it, drop --slice for the CPU estimate.", file=sys.stderr)
    return 2
  chips = len(aot.devices(args.slice))
  if args.config:
    config = load_config(args.config)
    model, prompt, sample_dtype = "", args.prompt_tokens, ""
  else:
    args.batch = args.batch or chips
    args.decode_batch = args.decode_batch or 8 * min(chips, aot.get_slice(args.slice).chips_per_host)
    config = model_config_dict(args)
    model, prompt = args.model, args.cache - args.max_new_tokens
    sample_dtype = args.decode_param_dtype
  layers = [int(x) for x in args.layers.split(",")] if args.layers else None
  only = [x for x in args.stages.split(",") if x]
  start = time.perf_counter()
  plan = plan_stages(config, args.slice, model=model, layers=layers, prompt_tokens=prompt,
                     only=only, recommend=args.recommend, sample_param_dtype=sample_dtype,
                     xla_attention=args.xla_attention,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
  plan["compile_s"] = time.perf_counter() - start
  print(format_stage_plan(plan))
  print(f"(TPU compiler: {plan['compile_s']:.0f} s of compiles on this machine)")
  if args.json:
    from etils import epath
    epath.Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
  return 0 if all(p["fits"] for p in plan["programs"]) else 1


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m glore_jax.plan`: prints the plan; exit status 1 when a stage does not fit."""
  args = parser().parse_args(argv)
  if args.merge:
    plan = merge_plans([json.loads(open(f).read()) for f in args.merge.split(",")])
    print(format_stage_plan(plan))
    if args.json:
      with open(args.json, "w") as f:
        f.write(json.dumps(plan, indent=2) + "\n")
    return 0 if all(p["fits"] for p in plan["programs"]) else 1
  if args.config and not args.slice:
    parser().error("--config needs --slice (the TPU slice to plan it for)")
  if args.slice:
    return tpu_main(args)
  _set_device_count(args.devices)
  args.batch = args.batch or args.devices
  args.decode_batch = args.decode_batch or 8 * args.devices
  plan = make_plan(args)
  text = format_plan(plan)
  print(text)
  if args.json:
    from etils import epath
    epath.Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
