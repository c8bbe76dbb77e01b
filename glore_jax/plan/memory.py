"""What a compiled program holds per device, from XLA's memory analysis of the programs the
runtime runs, compiled for simulated CPU devices without allocating a single weight.

Everything is abstract: `nnx.eval_shape` builds the model as ShapeDtypeStructs, the shardings
come from the model's PartitionSpec table (`glore_jax.model.sharding`), and
`jax.jit(step).lower(...).compile().memory_analysis()` gives per-device sizes of the arguments
(parameters, optimizer state, batch or KV cache), outputs, temporaries (activations, gradients,
gathered weights) and generated code. The programs are the ones the trainer and the sampler run
(`trainer.make_train_step` as `glore_jax.aot.train_args` builds it, `sampling.decode_program`),
with the same shardings. `scaled` compiles two shallow models and extrapolates linearly in depth.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  import jax

  from glore_jax.model.config import LlamaConfig

GiB = 1024**3
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
    return Memory(
      argument=float(ma.argument_size_in_bytes),
      output=float(ma.output_size_in_bytes),
      alias=float(ma.alias_size_in_bytes),
      temp=float(ma.temp_size_in_bytes),
      code=float(ma.generated_code_size_in_bytes),
      compile_s=compile_s,
    )

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
    return Memory(
      argument=f("argument"),
      output=f("output"),
      alias=f("alias"),
      temp=f("temp"),
      code=f("code"),
      compile_s=a.compile_s + b.compile_s,
      extrapolated=note,
    )


# ---- the model, abstract -------------------------------------------------------------------


def model_config(
  name: str,
  *,
  layers: int | None = None,
  dtype: str = "bfloat16",
  param_dtype: str = "float32",
  remat: bool = True,
  value_head: bool = False,
) -> LlamaConfig:
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
  cfg = preset(
    name,
    dtype=dtype,
    param_dtype=param_dtype,
    remat=remat,
    value_head=value_head,
    fuse_projections=False,
  )
  return cfg.replace(num_layers=layers) if layers else cfg


def _abstract(cfg):
  from flax import nnx

  from glore_jax.model.llama import Llama

  return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))


# ---- the programs -------------------------------------------------------------------------


def train_memory(
  cfg: LlamaConfig,
  mesh: jax.sharding.Mesh,
  *,
  batch: int,
  seq: int,
  grad_accum: int = 1,
  loss: str = "lm",
) -> Memory:
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

  from glore_jax import aot

  # aot.train_args builds the step for TPU unless the config names a platform: name the backend
  # this process compiles for (what no platform means), so the program is the one it runs here
  cfg = cfg.replace(platform=cfg.platform or jax.default_backend())
  fn, args = aot.train_args(cfg, mesh, batch=batch, seq=seq, grad_accum=grad_accum, loss=loss)
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = fn.lower(*args).compile()
  return Memory.from_compiled(compiled, time.perf_counter() - start)


def decode_memory(
  cfg: LlamaConfig, mesh: jax.sharding.Mesh, *, batch: int, cache: int, max_new_tokens: int = 256
) -> Memory:
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
  from glore_jax.model.sharding import BATCH, RULES, named, tree_shardings, with_shardings

  graphdef, state = nnx.split(_abstract(cfg))
  state = with_shardings(state, tree_shardings(state, mesh))
  k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, cache)  # the model's KVCache layouts
  v_shape = (batch, cfg.num_kv_heads, cache, cfg.head_dim)
  k, v = (
    jax.ShapeDtypeStruct(shape, cfg.compute_dtype, sharding=named(RULES.cache_kv, shape, mesh))
    for shape in (k_shape, v_shape)
  )
  rows = lambda shape, dtype, spec=RULES.cache_b: jax.ShapeDtypeStruct(
    shape, dtype, sharding=named(spec, shape, mesh)
  )
  kv_cache = KVCache(
    tuple(k for _ in range(cfg.num_layers)),
    tuple(v for _ in range(cfg.num_layers)),
    rows((batch,), jnp.int32),
    rows((batch,), jnp.int32),
  )
  decode_state = sampling.DecodeState(
    tokens_rn=rows((batch, max_new_tokens), jnp.int32, RULES.act_bt),
    logprobs_rn=rows((batch, max_new_tokens), jnp.float32, RULES.act_bt),
    finish_r=rows((batch,), jnp.int32),
    last_r=rows((batch,), jnp.int32),
    step=jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P())),
  )
  # the per-row keys exactly as the sampler makes them (typed keys or raw key data)
  one_row = sampling.row_keys(0, np.zeros((1, 1), np.uint32))
  key_shape = (batch,) + tuple(one_row.shape[1:])
  keys = jax.ShapeDtypeStruct(
    key_shape,
    one_row.dtype,
    sharding=named(P(BATCH, *(None,) * (len(key_shape) - 1)), key_shape, mesh),
  )
  ids = jax.ShapeDtypeStruct((1,), jnp.int32, sharding=NamedSharding(mesh, P()))
  limit = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = sampling.decode_program.lower(
      graphdef,
      state,
      kv_cache,
      decode_state,
      keys,
      ids,
      ids,
      limit,
      params=sampling.SamplingParams(temperature=1.0),
    ).compile()
  return Memory.from_compiled(compiled, time.perf_counter() - start)


def scaled(
  measure: Callable[[int], Memory], name: str, num_layers: int, layers: Sequence[int] | None
) -> Memory:
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
  return Memory.combine(
    a, b, 1 - t, t, f"{name}: compiled at {l1} and {l2} layers, linear to {num_layers}"
  )


def activation_memory(cfg: LlamaConfig, mesh: jax.sharding.Mesh, *, batch: int, seq: int) -> Memory:
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
  graphdef, emb, frozen, _ = nnx.split(
    _abstract(cfg), nnx.All(nnx.Param, nnx.PathContains("embedding")), nnx.Param, ...
  )
  fresh = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  emb, frozen = fresh(emb), fresh(frozen)
  loss = trainer.make_loss_fn(graphdef, tc)
  # fresh Variables for the frozen part inside the traced function (nnx.remat updates them)
  grad = jax.grad(lambda e, f, mb: loss(e, jax.tree.map(lambda x: x, f), mb)[0])
  data = {
    k: jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    for k in ("tokens", "attention_mask", "target_mask")
  }
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = jax.jit(grad).lower(emb, frozen, data).compile()
  return Memory.from_compiled(compiled, time.perf_counter() - start)
