"""The TPU compiler's plan of a config's stages on a named slice (`plan_stages`).

With libtpu installed (extra `tpu-aot`) the programs are compiled by the TPU compiler for the
slice's real topology (`glore_jax.aot`): neither the CPU compiles nor the one-device estimate
(`glore_jax.plan.estimate`) is needed. The shapes are the largest the runtime builds from the
config (`stage_shapes`); per program the plan gives the per-device bytes, whether they fit
HEADROOM of HBM, the roofline time (`glore_jax.plan.roofline`) and, on request, the largest
power-of-two multiple of the stage's batch size that fits. `--slice` plans one model;
`--config` plans every stage of a config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from glore_jax.plan.memory import HEADROOM
from glore_jax.plan.roofline import throughput

if TYPE_CHECKING:
  import jax
  import ml_collections

  from glore_jax.aot import Program
  from glore_jax.model.config import LlamaConfig


def _pow2(n: int) -> int:
  return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def tpu_program(
  kind: str,
  cfg: LlamaConfig,
  mesh: jax.sharding.Mesh,
  *,
  layers: Sequence[int] | None = None,
  **shape: int,
) -> tuple[Program, str]:
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

  compile_fn = {
    "train_lm": functools.partial(aot.compile_train, loss="lm"),
    "train_value": functools.partial(aot.compile_train, loss="value"),
    "prefill": aot.compile_prefill,
    "fanout": aot.compile_fanout,
    "decode": aot.compile_decode,
  }[kind]
  if not layers:
    return compile_fn(cfg, mesh, **shape), ""
  l1, l2 = sorted(layers)[:2]
  if l1 == l2 or l2 > cfg.num_layers:
    raise ValueError(f"--layers needs two different depths <= {cfg.num_layers}, got {layers}")
  a = compile_fn(cfg.replace(num_layers=l1), mesh, **shape)
  b = compile_fn(cfg.replace(num_layers=l2), mesh, **shape)
  t = (cfg.num_layers - l1) / (l2 - l1)
  fields = ("argument", "output", "alias", "temp", "code", "flops", "bytes_accessed")
  out = dataclasses.replace(
    a,
    compile_s=a.compile_s + b.compile_s,
    **{f: (1 - t) * getattr(a, f) + t * getattr(b, f) for f in fields},
  )
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
    return preset(
      "tiny",
      vocab_size=512,
      hidden_size=m.hidden_size,
      intermediate_size=m.intermediate_size,
      num_layers=m.num_layers,
      num_heads=m.num_heads,
      num_kv_heads=m.num_kv_heads,
      head_dim=0,
      max_position_embeddings=m.max_position_embeddings,
      **settings,
    )
  return preset(m.preset, **settings)


def stage_shapes(
  config: ml_collections.ConfigDict, *, prompt_tokens: int
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
    out.append(
      (
        stage,
        f"train_{loss}",
        False,
        dict(batch=t.batch_size, seq=_pow2(seq), grad_accum=t.grad_accum),
        t.batch_size,
      )
    )

  def sampling(stage, section, fanout: int, prompt: int, temperature: float):
    rows = _pow2(section.batch_size)
    seq = _pow2(prompt)
    sequences = _pow2(max(1, section.batch_size // fanout))
    new = section.max_new_tokens
    size = section.batch_size
    out.append((stage, "prefill", True, dict(batch=sequences, seq=seq), size))
    out.append(
      (
        stage,
        "fanout",
        True,
        dict(sequences=sequences, seq=seq, rows=rows, max_new_tokens=new, temperature=temperature),
        size,
      )
    )
    out.append(
      (
        stage,
        "decode",
        True,
        dict(rows=rows, cache=seq + new, max_new_tokens=new, temperature=temperature),
        size,
      )
    )

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
_ROW_KEYS = {
  "train_lm": ("batch",),
  "train_value": ("batch",),
  "prefill": ("batch",),
  "fanout": ("rows", "sequences"),
  "decode": ("rows",),
}


def _scaled_shape(program: str, shape: dict, factor: float) -> dict:
  return {k: (max(1, int(v * factor)) if k in _ROW_KEYS[program] else v) for k, v in shape.items()}


def batch_multiplier(
  peak: float, half_peak: float, hbm: float, *, lowest: int = -6, highest: int = 3
) -> float | None:
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
    if fixed + per_unit * 2.0**e <= HEADROOM * hbm:
      best = 2.0**e
  return best


def prefix_sharing(
  cfg: LlamaConfig,
  *,
  prefix_slots: int,
  new_tokens: int,
  rollouts: int,
  peak: float,
  rows: int,
  host_chips: int,
  hbm: float,
) -> dict[str, float]:
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
  return {
    "cache_bytes_per_row": row,
    "prefix_bytes_per_row": per_slot * prefix_slots,
    "shared_cache_bytes_per_row": shared,
    "rows_per_host_copied": budget / row,
    "rows_per_host_shared": budget / shared,
    "rollouts": rollouts,
  }


def plan_stages(
  config: ml_collections.ConfigDict,
  slice_name: str,
  *,
  model: str = "",
  layers: Sequence[int] | None = None,
  prompt_tokens: int = 256,
  only: Sequence[str] = (),
  recommend: bool = False,
  sample_param_dtype: str = "",
  xla_attention: bool = False,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
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
      log(
        f"  compiled {stage}/{program} {shape} on {dict(mesh.shape)} in "
        f"{time.perf_counter() - start:.0f} s"
      )
    result, note = done[key]
    row = result.as_dict()
    row.update(throughput(program, shape, result, model_cfg, mesh.size, sl.chip))
    if recommend:
      half = _scaled_shape(program, shape, 0.5)
      hkey = (program, on_host, tuple(sorted(half.items())))
      if hkey not in done:
        done[hkey] = tpu_program(program, model_cfg, mesh, layers=layers, **half)
        log(f"  compiled {stage}/{program} {half} (half the rows)")
      row["batch_multiplier"] = batch_multiplier(result.peak, done[hkey][0].peak, sl.chip.hbm_bytes)
    plans.append(
      StagePlan(stage, program, dict(mesh.shape), shape, row, sl.chip.hbm_bytes, size, note)
    )
  sharing = None
  label = [p for p in plans if p.stage == "label" and p.program == "decode"]
  if label:
    p = label[0]
    sharing = prefix_sharing(
      sample_cfg,
      prefix_slots=p.shape["cache"] - p.shape["max_new_tokens"],
      new_tokens=p.shape["max_new_tokens"],
      rollouts=config.sorm.num_rollouts,
      peak=p.result["peak"],
      rows=p.shape["rows"],
      host_chips=host_mesh.size,
      hbm=sl.chip.hbm_bytes,
    )
  recommended = {}
  if recommend:
    for p in plans:
      f = p.result["batch_multiplier"]
      current = recommended.get(p.stage, (math.inf,))[0]
      recommended[p.stage] = (min(current, f if f is not None else 0.0),)
    recommended = {k: v[0] for k, v in recommended.items()}
  return {
    "slice": slice_name,
    "chip": dataclasses.asdict(sl.chip),
    "model": cfg.num_params(),
    "recommended_batch_multiplier": recommended,
    "label_prefix_sharing": sharing,
    "num_layers": cfg.num_layers,
    "layers": list(layers or []),
    "attention": "xla" if xla_attention else "pallas where it applies",
    "global_mesh": dict(global_mesh.shape),
    "host_mesh": dict(host_mesh.shape),
    "prompt_tokens": prompt_tokens,
    "programs": [dataclasses.asdict(p) | {"fits": p.fits} for p in plans],
  }
