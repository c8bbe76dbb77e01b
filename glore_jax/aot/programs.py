"""The runtime's programs compiled ahead of time for a mesh (`slices.mesh`), and the compiler's
memory and cost analyses read back (`Program`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  import jax

  from glore_jax.aot.slices import Chip
  from glore_jax.model.config import LlamaConfig


@dataclasses.dataclass
class Program:
  """One compiled program: the compiler's per-device memory and cost analyses."""

  name: str
  argument: float
  output: float
  alias: float
  temp: float
  code: float
  flops: float  # per device, from cost_analysis (a while loop's body counted once)
  bytes_accessed: float  # per device, HBM traffic as the cost model counts it
  compile_s: float

  @property
  def peak(self) -> float:
    """Bytes live at the program's high-water mark: arguments + outputs not aliased to them
    + temporaries + generated code."""
    return self.argument + self.output - self.alias + self.temp + self.code

  def as_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "peak": self.peak}

  def roofline_s(self, chip: Chip) -> float:
    """max(flops / peak FLOP/s, bytes / HBM bandwidth): a lower bound on the step's time on
    `chip` (collectives and any overlap not modelled)."""
    return max(self.flops / chip.peak_bf16_flops, self.bytes_accessed / chip.hbm_bytes_per_s)


def compile_lowered(name: str, lower: Callable[[], jax.stages.Lowered]) -> Program:
  """Compiles `lower()` (a jax.stages.Lowered) and reads its memory and cost analyses.

  Args:
    name: the program's name in the result.
    lower: returns the lowered program (called once, timed with the compile).
  """
  start = time.perf_counter()
  compiled = lower().compile()
  seconds = time.perf_counter() - start
  ma = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per partition
    cost = cost[0] if cost else {}
  cost = cost or {}
  return Program(
    name=name,
    argument=float(ma.argument_size_in_bytes),
    output=float(ma.output_size_in_bytes),
    alias=float(ma.alias_size_in_bytes),
    temp=float(ma.temp_size_in_bytes),
    code=float(ma.generated_code_size_in_bytes),
    flops=float(cost.get("flops", 0.0)),
    bytes_accessed=float(cost.get("bytes accessed", 0.0)),
    compile_s=seconds,
  )


def for_tpu(cfg: LlamaConfig) -> LlamaConfig:
  """`cfg` built for TPU (its programs as they run there), unless it names a platform."""
  return cfg if cfg.platform else cfg.replace(platform="tpu")


def _abstract_model(cfg):
  from flax import nnx

  from glore_jax.model.llama import Llama

  cfg = for_tpu(cfg)
  return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))


def train_args(
  cfg: LlamaConfig,
  mesh: jax.sharding.Mesh,
  *,
  batch: int,
  seq: int,
  grad_accum: int = 1,
  loss: str = "lm",
  steps_per_row: int = 16,
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
  """(jitted step, its abstract arguments) exactly as `trainer.train` builds them: fp32 (or
  `cfg.param_dtype`) parameters and AdamW moments sharded by the model's table, the batch
  [A, B/A, T] over (data, fsdp), the state donated.

  Args:
    cfg: the model's config (built for TPU unless it names a platform: `for_tpu`).
    mesh: the ('data', 'fsdp', 'tensor') mesh to compile for (`aot.mesh`).
    batch: the global batch, in rows.
    seq: tokens per row.
    grad_accum: micro-batches per step (A).
    loss: 'lm' or 'value' (needs `cfg.value_head`).
    steps_per_row: the most step targets per row of a value batch.
  """
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from glore_jax.model.sharding import BATCH, fit_spec, tree_shardings, with_shardings
  from glore_jax.training import trainer

  if loss == "value" and not cfg.value_head:
    cfg = cfg.replace(value_head=True)
  tc = trainer.TrainConfig(loss=loss, grad_accum=grad_accum, total_steps=1000, progress=False)
  graphdef, params, frozen, _ = nnx.split(
    _abstract_model(cfg), trainer.trainable_filter(tc), nnx.Param, ...
  )
  tx, schedule = trainer.make_optimizer(tc)
  replicated = NamedSharding(mesh, P())
  param_sh, frozen_sh = tree_shardings(params, mesh), tree_shardings(frozen, mesh)
  opt_abstract = jax.eval_shape(tx.init, params)
  opt_sh = tree_shardings(opt_abstract, mesh)
  state_sh = trainer.TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)
  state = trainer.TrainState(
    step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
    params=with_shardings(params, param_sh),
    opt_state=with_shardings(opt_abstract, opt_sh),
    rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated),
  )
  frozen = with_shardings(frozen, frozen_sh)
  shape = (grad_accum, batch // grad_accum, seq)
  rows = lambda s, dtype: jax.ShapeDtypeStruct(
    s, dtype, sharding=NamedSharding(mesh, fit_spec(P(None, BATCH), s, mesh))
  )
  data = {"tokens": rows(shape, jnp.int32), "attention_mask": rows(shape, jnp.int32)}
  if loss == "lm":
    data["target_mask"] = rows(shape, jnp.int32)
  else:
    steps = shape[:2] + (steps_per_row,)  # labelled steps per row
    data.update(
      value_index=rows(steps, jnp.int32),
      value_target=rows(steps, jnp.float32),
      value_label=rows(steps, jnp.float32),
    )
  step = trainer.make_train_step(graphdef, tc, tx, schedule)
  fn = jax.jit(step, donate_argnums=(0,), out_shardings=(state_sh, replicated))
  return fn, (state, frozen, data)


def compile_train(
  cfg: LlamaConfig,
  mesh: jax.sharding.Mesh,
  *,
  batch: int,
  seq: int,
  grad_accum: int = 1,
  loss: str = "lm",
) -> Program:
  """The trainer's step for a global batch of `batch` rows of `seq` tokens.

  Args:
    cfg: the model's config (built for TPU unless it names a platform: `for_tpu`).
    mesh: the ('data', 'fsdp', 'tensor') mesh to compile for (`aot.mesh`).
    batch: the global batch, in rows.
    seq: tokens per row.
    grad_accum: micro-batches per step.
    loss: 'lm' or 'value'.
  """
  import jax

  fn, args = train_args(cfg, mesh, batch=batch, seq=seq, grad_accum=grad_accum, loss=loss)

  def lower():
    with jax.set_mesh(mesh):
      return fn.lower(*args)

  return compile_lowered(f"train_{loss}", lower)


def _sampling_state(cfg, mesh):
  from flax import nnx

  from glore_jax.model.sharding import tree_shardings, with_shardings

  graphdef, state = nnx.split(_abstract_model(cfg))
  return graphdef, with_shardings(state, tree_shardings(state, mesh))


def _cache(cfg, mesh, batch: int, size: int, *, length_spec=None):
  import jax
  import jax.numpy as jnp

  from glore_jax.model.llama import KVCache
  from glore_jax.model.sharding import RULES, named

  k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, size)  # the model's KVCache layouts
  v_shape = (batch, cfg.num_kv_heads, size, cfg.head_dim)
  k, v = (
    jax.ShapeDtypeStruct(s, cfg.compute_dtype, sharding=named(RULES.cache_kv, s, mesh))
    for s in (k_shape, v_shape)
  )
  row = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=named(RULES.cache_b, (batch,), mesh))
  return KVCache(
    tuple(k for _ in range(cfg.num_layers)), tuple(v for _ in range(cfg.num_layers)), row, row
  )


def _rows(mesh, shape, dtype, spec=None):
  import jax

  from glore_jax.model.sharding import RULES, named

  return jax.ShapeDtypeStruct(shape, dtype, sharding=named(spec or RULES.cache_b, shape, mesh))


def _scalar(mesh, dtype):
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  return jax.ShapeDtypeStruct((), dtype, sharding=NamedSharding(mesh, P()))


def _keys(mesh, rows: int):
  """Per-row keys exactly as the sampler makes them (raw key data)."""
  import numpy as np
  from jax.sharding import PartitionSpec as P

  from glore_jax import sampling
  from glore_jax.model.sharding import BATCH

  one = sampling.row_keys(0, np.zeros((1, 1), np.uint32))
  shape = (rows,) + tuple(one.shape[1:])
  return _rows(mesh, shape, one.dtype, P(BATCH, *(None,) * (len(shape) - 1)))


def compile_prefill(cfg: LlamaConfig, mesh: jax.sharding.Mesh, *, batch: int, seq: int) -> Program:
  """`sampling.prefill_program`: `batch` left-padded prompts of `seq` tokens into a fresh
  cache (the sharded path: no token packing).

  Args:
    cfg: the model's config (built for TPU unless it names a platform: `for_tpu`).
    mesh: the ('data', 'fsdp', 'tensor') mesh to compile for (`aot.mesh`).
    batch: prompts per call.
    seq: the padded prompt length, in tokens.
  """
  import jax
  import jax.numpy as jnp

  from glore_jax import sampling
  from glore_jax.model.sharding import RULES

  graphdef, state = _sampling_state(cfg, mesh)
  tokens = _rows(mesh, (batch, seq), jnp.int32, RULES.act_bt)
  start = _rows(mesh, (batch,), jnp.int32)

  def lower():
    with jax.set_mesh(mesh):
      return sampling.prefill_program.lower(graphdef, state, tokens, start, None)

  return compile_lowered("prefill", lower)


def compile_fanout(
  cfg: LlamaConfig,
  mesh: jax.sharding.Mesh,
  *,
  sequences: int,
  seq: int,
  rows: int,
  max_new_tokens: int,
  temperature: float = 1.0,
) -> Program:
  """`sampling.start_program`: `rows` decode rows gathered from `sequences` prefilled
  sequences of `seq` slots (each row its own prefix length), caches widened to
  seq + max_new_tokens, first tokens sampled: the label stage's K rollouts from every step
  prefix start here.

  Args:
    cfg: the model's config (built for TPU unless it names a platform: `for_tpu`).
    mesh: the ('data', 'fsdp', 'tensor') mesh to compile for (`aot.mesh`).
    sequences: prefilled sequences gathered from.
    seq: their cache slots.
    rows: decode rows made.
    max_new_tokens: the slots each row's cache gains.
    temperature: the sampling temperature (0: greedy, a different program).
  """
  import jax
  import jax.numpy as jnp

  from glore_jax import sampling
  from glore_jax.model.sharding import RULES

  graphdef, state = _sampling_state(cfg, mesh)
  cache = _cache(cfg, mesh, sequences, seq)
  hidden = _rows(mesh, (sequences, seq, cfg.hidden_size), cfg.compute_dtype, RULES.act_btd)
  src = _rows(mesh, (rows,), jnp.int32)
  ids = _rows(mesh, (1,), jnp.int32, jax.sharding.PartitionSpec())
  params = sampling.SamplingParams(temperature=temperature)
  keys = _keys(mesh, rows)  # outside the mesh: it runs a (CPU) computation

  def lower():
    with jax.set_mesh(mesh):
      return sampling.start_program.lower(
        graphdef,
        state,
        cache,
        hidden,
        src,
        src,
        keys,
        ids,
        ids,
        params=params,
        cache_size=seq + max_new_tokens,
        max_new_tokens=max_new_tokens,
      )

  return compile_lowered("fanout", lower)


def compile_decode(
  cfg: LlamaConfig,
  mesh: jax.sharding.Mesh,
  *,
  rows: int,
  cache: int,
  max_new_tokens: int,
  temperature: float = 1.0,
) -> Program:
  """`sampling.decode_program`: the while loop of one-token steps over a donated cache of
  `cache` slots for `rows` rows (cost analysis: one step, the loop body counted once).

  Args:
    cfg: the model's config (built for TPU unless it names a platform: `for_tpu`).
    mesh: the ('data', 'fsdp', 'tensor') mesh to compile for (`aot.mesh`).
    rows: decode rows.
    cache: KV-cache slots per row.
    max_new_tokens: the loop's step bound.
    temperature: the sampling temperature (0: greedy, a different program).
  """
  import jax
  import jax.numpy as jnp

  from glore_jax import sampling
  from glore_jax.model.sharding import RULES

  graphdef, state = _sampling_state(cfg, mesh)
  kv = _cache(cfg, mesh, rows, cache)
  decode_state = sampling.DecodeState(
    tokens_rn=_rows(mesh, (rows, max_new_tokens), jnp.int32, RULES.act_bt),
    logprobs_rn=_rows(mesh, (rows, max_new_tokens), jnp.float32, RULES.act_bt),
    finish_r=_rows(mesh, (rows,), jnp.int32),
    last_r=_rows(mesh, (rows,), jnp.int32),
    step=_scalar(mesh, jnp.int32),
  )
  ids = _rows(mesh, (1,), jnp.int32, jax.sharding.PartitionSpec())
  params = sampling.SamplingParams(temperature=temperature)
  keys = _keys(mesh, rows)  # outside the mesh: it runs a (CPU) computation

  def lower():
    with jax.set_mesh(mesh):
      return sampling.decode_program.lower(
        graphdef, state, kv, decode_state, keys, ids, ids, _scalar(mesh, jnp.int32), params=params
      )

  return compile_lowered("decode", lower)


PROGRAMS = ("train_lm", "train_value", "prefill", "fanout", "decode")
