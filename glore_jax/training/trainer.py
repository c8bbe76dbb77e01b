"""One trainer for GLoRe's three jobs: SFT of the policy and of the refiners (`loss='lm'`), and
value-head training of the ORM and SORM (`loss='value'`).

    model, metrics = train(model, batches, TrainConfig(...), workdir, eval_batches=..., mesh=...)

* One jitted step per optimizer update, train state donated: the step's batch is [A*B, T] rows
  (A = grad_accum), scanned as A micro-batches whose loss *sums* and token counts accumulate, so
  the loss is the mean over every target token (or labelled step) of the whole step.
* AdamW (no decay on vectors) with linear warmup and cosine decay, global-norm clipping.
  Only the parameters the loss uses are trained: `lm` skips the value head, `value` skips the LM
  head and, with `train_backbone=False`, trains only the value head.
* `compute_dtype='bfloat16'` runs matmuls in bf16 over the fp32 master weights the model stores;
  `remat=True` rematerialises each block in the backward pass.
* With a mesh, parameters and optimizer state follow the model's sharding table (fsdp/tensor),
  batches shard over (data, fsdp).
* Resumable: `<workdir>/checkpoints` (orbax; last N plus the best by eval metric) holds the
  trainable parameters, optimizer state, step, RNG key and the position in the data; calling
  `train` again with the same arguments continues exactly where the last checkpoint left off.
  Frozen parameters are not checkpointed: pass the same starting model when resuming.
* A non-finite loss, gradient norm or learning rate leaves the parameters and moments untouched
  (the skip is a scalar inside the optimizer's one in-place pass, `optimizer.FusedAdamW`) and
  stops the run with `TrainingDivergedError` naming the step and the last good checkpoint.
* Observability: tqdm bar (loss, tokens/s, ETA), TensorBoard scalars in `<workdir>/tensorboard`,
  `<workdir>/metrics.jsonl`, periodic eval (LM loss and greedy accuracy; value loss, accuracy,
  AUROC).
* `workdir` may be local or an object store (`gs://bucket/run`, through etils.epath; orbax writes
  the checkpoints there directly). Object stores cannot append, so there `metrics.jsonl` is
  rewritten whole at each update, and TensorBoard events are written to a local temporary folder
  (tensorboardX needs extra packages for gs://) and copied to `<workdir>/tensorboard` when the
  run ends (a warning names the local folder).
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from glore_jax.errors import GloreError, StaleOutputError
from glore_jax.model.llama import Llama
from glore_jax.model.sharding import BATCH, fit_spec, named
from glore_jax.training import losses
from glore_jax.training.batch import LM_KEYS, VALUE_KEYS
from glore_jax.training.checkpoint import Checkpoints, is_local_path
from glore_jax.training.optimizer import FusedAdamW
from glore_jax.training.run_log import RunLog, copy_tree

log = logging.getLogger(__name__)


class TrainingDivergedError(GloreError, RuntimeError):
  """The loss or gradient norm became NaN/Inf; `step` is the failing step (1-based, the update
  that was refused) and `last_checkpoint` the newest good checkpoint (or None)."""

  def __init__(self, message: str, *, step: int, last_checkpoint: str | None):
    super().__init__(message)
    self.step = step
    self.last_checkpoint = last_checkpoint


@dataclasses.dataclass
class TrainConfig:
  loss: Literal["lm", "value"] = "lm"
  value_targets: Literal["hard", "soft"] = "hard"  # what make_batches puts in value_target
  train_backbone: bool = True  # value loss only: False trains the value head alone
  learning_rate: float = 1e-4
  min_learning_rate_ratio: float = 0.1  # cosine decays to learning_rate * this
  warmup_steps: int = 0
  total_steps: int = 1000
  weight_decay: float = 0.0
  adam_b1: float = 0.9
  adam_b2: float = 0.95
  adam_eps: float = 1e-8
  grad_clip: float | None = 1.0  # global norm; None or 0 disables
  grad_accum: int = 1  # micro-batches per step; a batch's rows must divide by it
  compute_dtype: str | None = None  # e.g. 'bfloat16' over fp32 params; None keeps the model's
  remat: bool | None = None  # None keeps the model's setting
  eval_every: int = 0  # steps; 0 evaluates only at the end (when eval_batches are given)
  checkpoint_every: int = 0  # steps; 0 checkpoints only at the end
  keep_last: int = 3
  best_metric: str | None = None  # default 'eval/lm_loss' or 'eval/value_loss' (lower is better)
  log_every: int = 10
  seed: int = 0
  shuffle: bool = True  # new batch order every epoch when the batches are a sequence
  export_hf: bool = False  # write <workdir>/hf with save_hf when training completes
  progress: bool = True
  async_checkpoint: bool = True

  def __post_init__(self):
    if self.loss not in ("lm", "value"):
      raise ValueError(f"TrainConfig.loss={self.loss!r}; choose 'lm' or 'value'")
    if self.value_targets not in ("hard", "soft"):
      raise ValueError(f"TrainConfig.value_targets={self.value_targets!r}; choose 'hard' or 'soft'")
    if self.total_steps < 1 or self.grad_accum < 1:
      raise ValueError("TrainConfig.total_steps and grad_accum must be >= 1")
    # a negative clip norm would scale the update by a negative factor: gradient ascent
    if self.grad_clip is not None and not self.grad_clip >= 0:
      raise ValueError(f"TrainConfig.grad_clip={self.grad_clip}: expected >= 0 (0 or None: off)")
    if not self.weight_decay >= 0 or not self.learning_rate > 0:
      raise ValueError(f"TrainConfig: weight_decay={self.weight_decay} must be >= 0 and "
                       f"learning_rate={self.learning_rate} > 0")

  @property
  def metric_name(self) -> str:
    return self.best_metric or ("eval/lm_loss" if self.loss == "lm" else "eval/value_loss")


# Fields that may change between a run and its resumption without changing the result.
_RESUME_FREE = {"eval_every", "checkpoint_every", "keep_last", "log_every", "export_hf", "progress",
                "async_checkpoint", "best_metric"}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied
  params: Any  # nnx.State of the trainable parameters
  opt_state: Any
  rng: jax.Array  # uint32 [2] key, split every step (for dropout-like noise; the model has none)

  def as_dict(self) -> dict:
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state, "rng": self.rng}


# ---- parameters, optimizer ------------------------------------------------------------------


def trainable_filter(config: TrainConfig):
  """Which parameters the loss trains (the others are frozen and never checkpointed)."""
  head = nnx.Any(nnx.PathContains("value_head"), nnx.PathContains("value_bias"))
  if config.loss == "lm":
    return nnx.All(nnx.Param, nnx.Not(head))
  if not config.train_backbone:
    return nnx.All(nnx.Param, head)
  return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("lm_head")))


def make_optimizer(config: TrainConfig) -> tuple[FusedAdamW, optax.Schedule]:
  """AdamW (no decay on vectors) after global-norm clipping, with warmup and cosine decay."""
  peak = config.learning_rate
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=config.warmup_steps,
      decay_steps=max(config.total_steps, config.warmup_steps + 1),
      end_value=peak * config.min_learning_rate_ratio)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return FusedAdamW(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                    weight_decay=config.weight_decay, decay_mask=decay_mask,
                    clip_norm=config.grad_clip or None), schedule


def _reconfigured(model: Llama, **changes) -> Llama:
  """The same parameters under a model whose config differs in compute dtype / remat only."""
  changes = {k: v for k, v in changes.items() if v is not None and getattr(model.cfg, k) != v}
  if not changes:
    return model
  cfg = model.cfg.replace(**changes)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, nnx.state(model))


def _shardings(tree, mesh):
  """NamedShardings for a tree of nnx Variables (their `partition` spec) and plain arrays
  (replicated): parameters and the optimizer moments that mirror them."""
  def one(x):
    if isinstance(x, nnx.Variable):
      return x.replace(named(P(*(x.get_metadata().get("partition") or ())), x.shape, mesh))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


# ---- the jitted computations ------------------------------------------------------------------


def _required_keys(config: TrainConfig) -> tuple[str, ...]:
  return LM_KEYS if config.loss == "lm" else VALUE_KEYS


def make_loss_fn(graphdef, config: TrainConfig):
  """(trainable, frozen, micro-batch) -> (loss sum, count)."""

  def loss_sums(trainable, frozen, mb):
    model = nnx.merge(graphdef, trainable, frozen)
    hidden_btd, _ = model.forward(mb["tokens"], attention_mask_bt=mb["attention_mask"])
    if config.loss == "lm":
      logits_btv = model.logits(hidden_btd)
      return losses.lm_loss_sums(logits_btv, losses.shift_targets(mb["tokens"]), mb["target_mask"])
    hidden_bmd = losses.gather_steps(hidden_btd, mb["value_index"])
    return losses.value_loss_sums(model.values(hidden_bmd), mb["value_target"],
                                  mb["value_index"] >= 0)

  return loss_sums


def make_train_step(graphdef, config: TrainConfig, tx, schedule):
  loss_sums = make_loss_fn(graphdef, config)
  value_and_grad = jax.value_and_grad(loss_sums, has_aux=True)

  def micro(params, frozen, mb):
    (total, count), grads = value_and_grad(params, frozen, mb)
    return grads, total, count

  def step(state: TrainState, frozen, batch):
    """`batch` leaves are [A, B, ...]: A micro-batches of B rows."""
    accum = batch["tokens"].shape[0]
    if accum == 1:
      grads, total, count = micro(state.params, frozen, jax.tree.map(lambda x: x[0], batch))
    else:
      def body(carry, mb):
        g, t, c = micro(state.params, frozen, mb)
        return jax.tree.map(jnp.add, carry, (g, t, c)), None
      zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32),
               jnp.zeros((), jnp.float32))
      (grads, total, count), _ = jax.lax.scan(body, zeros, batch)
    denom = jnp.maximum(count, 1.0)
    loss = total / denom
    # 1 / denom, the clipping and the skip of a non-finite step are folded into the optimizer's
    # one in-place pass over the donated state (no normalised or clipped copy of the gradients)
    params, opt_state, ok, grad_norm = tx.update(grads, state.opt_state, state.params,
                                                 grad_scale=1.0 / denom,
                                                 skip=~jnp.isfinite(loss))
    new_state = TrainState(step=state.step + ok.astype(state.step.dtype), params=params,
                           opt_state=opt_state,
                           rng=jnp.where(ok, jax.random.split(state.rng)[0], state.rng))
    metrics = {"loss": loss, "count": count, "grad_norm": grad_norm,
               "learning_rate": schedule(state.step), "finite": ok}
    return new_state, metrics

  return step


def make_eval_step(graphdef, keys: tuple[str, ...]):
  has_lm, has_value = "target_mask" in keys, "value_index" in keys

  def step(trainable, frozen, batch):
    model = nnx.merge(graphdef, trainable, frozen)
    hidden_btd, _ = model.forward(batch["tokens"], attention_mask_bt=batch["attention_mask"])
    out = {}
    if has_lm:
      logits_btv = model.logits(hidden_btd)
      targets = losses.shift_targets(batch["tokens"])
      mask = batch["target_mask"].astype(bool)
      out["lm_sum"], out["lm_count"] = losses.lm_loss_sums(logits_btv, targets, mask)
      out["lm_correct"] = jnp.sum((jnp.argmax(logits_btv, -1) == targets) & mask)
    if has_value:
      out["value_logits"] = model.values(losses.gather_steps(hidden_btd, batch["value_index"]))
    return out

  return step


# ---- data -------------------------------------------------------------------------------------


def _is_sequence(x) -> bool:
  return (hasattr(x, "__len__") and hasattr(x, "__getitem__")
          and not isinstance(x, (Mapping, str, bytes)))


def _iterate_from(source, position: int, *, shuffle: bool, seed: int) -> Iterator[Mapping]:
  """Batches from data position `position` on (position = batches consumed so far, over epochs).

  A sequence is indexed (a new seeded order per epoch when `shuffle`), so resuming is O(1); any
  other iterable is replayed and the first `position` batches skipped (it must then yield the
  same batches each time). A re-iterable starts a new epoch when exhausted; a one-shot iterator
  ends the run."""
  if _is_sequence(source):
    n = len(source)
    if n == 0:
      raise ValueError("train_batches is empty")
    while True:
      epoch, index = divmod(position, n)
      order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else None
      yield source[int(order[index]) if shuffle else index]
      position += 1
  skipped = 0
  while True:
    iterator = iter(source)
    one_shot = iterator is source
    produced = False
    for batch in iterator:
      produced = True
      if skipped < position:
        skipped += 1
        continue
      yield batch
    if one_shot or not produced:
      return


def _device_batch(batch: Mapping, keys, accum: int, mesh) -> dict:
  out = {}
  for key in keys:
    if key not in batch:
      raise KeyError(f"batch has no {key!r} (has {sorted(batch)}); see glore_jax.training.batch")
    x = np.asarray(batch[key])
    if x.shape[0] % accum:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into grad_accum={accum} "
                       "micro-batches")
    x = x.reshape((accum, x.shape[0] // accum) + x.shape[1:])
    if mesh is None:
      out[key] = jnp.asarray(x)
    else:
      out[key] = jax.device_put(x, NamedSharding(mesh, fit_spec(P(None, BATCH), x.shape, mesh)))
  return out


# ---- the loop ---------------------------------------------------------------------------------


def evaluate(model: Llama, batches: Iterable[Mapping], *, mesh=None,
             _cache: dict | None = None) -> dict[str, float]:
  """LM loss / greedy next-token accuracy over target tokens, and value-head loss, accuracy
  (sigmoid > 0.5 vs the hard label) and AUROC over labelled steps, for whatever keys the batches
  carry. Value loss uses `value_target` (hard or soft)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  sums = collections.Counter()
  scores, labels, targets = [], [], []
  cache = {} if _cache is None else _cache
  with (jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()):
    for batch in batches:
      keys = tuple(k for k in (*LM_KEYS, *VALUE_KEYS) if k in batch)
      keys = tuple(dict.fromkeys(keys))
      if keys not in cache:
        eval_fn = make_eval_step(graphdef, keys)
        fn = lambda p, r, b, f=eval_fn: f(p, r, b)
        if mesh is not None:
          fn = jax.jit(fn, out_shardings=NamedSharding(mesh, P()))
        else:
          fn = jax.jit(fn)
        cache[keys] = fn
      dev = {k: v[0] for k, v in _device_batch(batch, keys, 1, mesh).items()}
      out = jax.device_get(cache[keys](params, rest, dev))
      for k in ("lm_sum", "lm_count", "lm_correct"):
        if k in out:
          sums[k] += float(out[k])
      if "value_logits" in out:
        mask = np.asarray(batch["value_index"]) >= 0
        scores.append(np.asarray(out["value_logits"])[mask])
        labels.append(np.asarray(batch["value_label"])[mask])
        targets.append(np.asarray(batch["value_target"])[mask])
  metrics = {}
  if sums["lm_count"]:
    metrics["eval/lm_loss"] = sums["lm_sum"] / sums["lm_count"]
    metrics["eval/lm_accuracy"] = sums["lm_correct"] / sums["lm_count"]
    metrics["eval/lm_tokens"] = sums["lm_count"]
  if scores:
    z, y, t = np.concatenate(scores), np.concatenate(labels), np.concatenate(targets)
    bce = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    metrics["eval/value_loss"] = float(bce.mean()) if len(z) else float("nan")
    metrics["eval/value_accuracy"] = float(((z > 0) == (y > 0.5)).mean()) if len(z) else float("nan")
    metrics["eval/value_auroc"] = losses.auroc(z, y)
    metrics["eval/value_steps"] = float(len(z))
  return metrics


def train(model: Llama, train_batches: Iterable[Mapping[str, np.ndarray]], config: TrainConfig,
          workdir: epath.PathLike, *, eval_batches: Iterable[Mapping] | None = None,
          mesh: jax.sharding.Mesh | None = None,
          metrics_hook: Callable[[int, Mapping[str, float]], None] | None = None,
          ) -> tuple[Llama, dict[str, Any]]:
  """Trains `model` (updated in place and returned) on `train_batches` (batch format in
  `glore_jax.training.batch`; one batch per optimizer step), resuming from
  `<workdir>/checkpoints` when it holds a checkpoint. Returns the model and a metrics dict.
  `metrics_hook(step, metrics)` also receives every logged record (process 0), e.g. for W&B."""
  workdir = epath.Path(workdir)  # local or gs:// (see the module docstring)
  workdir.mkdir(parents=True, exist_ok=True)
  keys = _required_keys(config)
  if config.loss == "value" and not model.cfg.value_head:
    raise ValueError("loss='value' needs a model with a value head (LlamaConfig(value_head=True) "
                     "or load_hf(..., value_head=True))")

  run_model = _reconfigured(model, dtype=config.compute_dtype, remat=config.remat)
  train_filter = trainable_filter(config)
  graphdef, params, frozen, rest = nnx.split(run_model, train_filter, nnx.Param, ...)
  if not jax.tree.leaves(params):
    raise ValueError(f"no trainable parameters for loss={config.loss!r}")
  tx, schedule = make_optimizer(config)

  mesh_ctx = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  ckpt = Checkpoints(workdir / "checkpoints", keep_last=config.keep_last,
                     best_metric=config.metric_name if eval_batches is not None else None,
                     async_save=config.async_checkpoint)
  state = None
  logger = None
  history: list[dict] = []
  last_eval: dict = {}
  try:
    with mesh_ctx:
      if mesh is not None:
        param_sh, frozen_sh = _shardings(params, mesh), _shardings(frozen, mesh)
        params, frozen = jax.device_put(params, param_sh), jax.device_put(frozen, frozen_sh)
        opt_sh = _shardings(jax.eval_shape(tx.init, params), mesh)
        replicated = NamedSharding(mesh, P())
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
        state_sh = TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)
        state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                           opt_state=opt_state,
                           rng=jax.device_put(jax.random.PRNGKey(config.seed), replicated))
      else:
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=jax.jit(tx.init)(params), rng=jax.random.PRNGKey(config.seed))

      # ---- resume
      position = 0
      latest = ckpt.latest_step()
      if latest is not None:
        restored, meta = ckpt.restore(latest, state.as_dict())
        state = TrainState(**restored)
        position = int(meta["data_position"])
        _check_resume_config(meta.get("config", {}), config, ckpt.path(latest))
        last_eval = meta.get("eval", {}) or {}
        log.info("resumed from %s: step %d, data position %d", ckpt.path(latest),
                 int(state.step), position)
      start = int(jax.device_get(state.step))
      if start > config.total_steps:
        raise ValueError(f"checkpoint step {start} is past total_steps={config.total_steps}")

      step_fn = make_train_step(graphdef, config, tx, schedule)
      if mesh is not None:
        metric_sh = NamedSharding(mesh, P())
        step_fn = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(state_sh, metric_sh))
      else:
        step_fn = jax.jit(step_fn, donate_argnums=(0,))
      eval_cache: dict = {}

      def run_eval(step: int) -> dict:
        nonlocal last_eval
        eval_model = nnx.merge(graphdef, state.params, frozen, rest)
        last_eval = evaluate(eval_model, eval_batches, mesh=mesh, _cache=eval_cache)
        logger.scalars(step, last_eval)
        log.info("step %d eval: %s", step, {k: round(v, 4) for k, v in last_eval.items()})
        return last_eval

      logger = RunLog(workdir, start=start, total_steps=config.total_steps, loss=config.loss,
                      hook=metrics_hook,
                      progress=config.progress)
      data = _iterate_from(train_batches, position, shuffle=config.shuffle, seed=config.seed)
      pending = None  # (step, device metrics, tokens, padded slots) not yet read back
      window = {"tokens": 0, "slots": 0, "steps": 0, "time": time.perf_counter(), "loss": 0.0}
      totals = {"tokens": 0, "time": 0.0}

      def drain():
        """Reads back the oldest step's metrics (one step behind dispatch), checks them."""
        nonlocal pending
        if pending is None:
          return
        step, dev_metrics, ntok, nslots = pending
        pending = None
        m = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
        if not m["finite"]:
          last = ckpt.latest_step()
          raise TrainingDivergedError(
              f"non-finite training loss at step {step} (loss={m['loss']}, grad_norm="
              f"{m['grad_norm']}, data position {step - 1}); the update was discarded. Last good "
              f"checkpoint: {ckpt.path(last)}. Lower the learning rate or inspect that batch, then "
              f"resume from the checkpoint.", step=step,
              last_checkpoint=None if last is None else ckpt.path(last))
        window["tokens"] += ntok
        window["slots"] += nslots
        window["steps"] += 1
        window["loss"] += m["loss"]
        if window["steps"] >= config.log_every or step in (start + 1, config.total_steps):
          now = time.perf_counter()
          elapsed = max(now - window["time"], 1e-9)
          record = {"train/loss": window["loss"] / window["steps"],
                    "train/grad_norm": m["grad_norm"], "train/learning_rate": m["learning_rate"],
                    "train/tokens_per_s": window["tokens"] / elapsed,
                    "train/padding": 1.0 - window["tokens"] / max(window["slots"], 1)}
          if step > start + 1:  # the first window includes compilation
            totals["tokens"] += window["tokens"]
            totals["time"] += elapsed
          logger.scalars(step, record)
          history.append({"step": step, **record})
          logger.progress(0, loss=f"{record['train/loss']:.4f}",
                          tok_s=f"{record['train/tokens_per_s']:.0f}")
          window.update(tokens=0, slots=0, steps=0, time=now, loss=0.0)
        logger.progress(1)

      step = start
      while step < config.total_steps:
        batch = next(data, None)
        if batch is None:
          log.warning("train_batches ran out at data position %d, step %d of %d", position, step,
                      config.total_steps)
          break
        dev_batch = _device_batch(batch, keys, config.grad_accum, mesh)
        mask = np.asarray(batch["attention_mask"])
        state, dev_metrics = step_fn(state, frozen, dev_batch)
        drain()
        step += 1
        position += 1
        pending = (step, dev_metrics, int(mask.sum()), int(mask.size))
        final = step == config.total_steps
        evaluate_now = eval_batches is not None and (
            final or (config.eval_every and step % config.eval_every == 0))
        save_now = final or (config.checkpoint_every and step % config.checkpoint_every == 0)
        if evaluate_now or save_now:
          drain()  # never save or evaluate an unchecked state
          paused = time.perf_counter()
        if evaluate_now:
          run_eval(step)
        if save_now:
          meta = {"step": step, "data_position": position, "config": dataclasses.asdict(config),
                  "eval": last_eval if evaluate_now else {}}
          ckpt.save(step, state.as_dict(), meta,
                    metrics=last_eval if evaluate_now else None)
        if evaluate_now or save_now:
          window["time"] += time.perf_counter() - paused  # throughput counts training only
      drain()
      if step > start and ckpt.latest_step() != step:  # finished, or the data ran out
        ckpt.save(step, state.as_dict(), {"step": step, "data_position": position,
                                          "config": dataclasses.asdict(config), "eval": last_eval})
      ckpt.wait()
  finally:
    if state is not None and not any(
        getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state.params)):
      nnx.update(model, state.params)
    if logger is not None:
      logger.close()
    ckpt.close()

  final_step = int(jax.device_get(state.step))
  metrics: dict[str, Any] = {
      "step": final_step, "complete": final_step == config.total_steps,
      "train_loss": history[-1]["train/loss"] if history else None,
      "tokens_per_s": totals["tokens"] / totals["time"] if totals["time"] else None,
      "history": history, "eval": last_eval,
      "checkpoint": ckpt.path(ckpt.latest_step()) if ckpt.latest_step() is not None else None,
  }
  if ckpt.best_step() is not None:
    metrics["best_checkpoint"] = ckpt.path(ckpt.best_step())
  if config.export_hf and metrics["complete"]:
    metrics["hf_dir"] = str(_export_hf(model, workdir / "hf"))
  return model, metrics


def _export_hf(model: Llama, folder: epath.Path) -> epath.Path:
  """save_hf into `folder`; through a local temporary folder when `folder` is not local."""
  from glore_jax.model.hf import save_hf
  if is_local_path(folder):
    return epath.Path(save_hf(model, folder))
  tmp = tempfile.mkdtemp(prefix="glore-hf-")
  try:
    save_hf(model, tmp)  # every process gathers; process 0 writes
    if jax.process_index() == 0:
      copy_tree(tmp, folder)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return folder


def _check_resume_config(saved: Mapping, config: TrainConfig, where: str) -> None:
  current = dataclasses.asdict(config)
  changed = {k: (saved[k], v) for k, v in current.items()
             if k in saved and k not in _RESUME_FREE and saved[k] != v}
  if changed:
    # refused, not warned: a model half-trained under one config and finished under another
    # matches neither
    raise StaleOutputError(
        f"cannot resume {where} with a different training config ("
        + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        + "); restore the old values, or delete the checkpoints to start over")
