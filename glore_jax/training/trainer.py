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
* Every N steps the loop runs hooks (`hooks.py`): the log (`log_every`, a window of checked
  steps), evaluation (`eval_every`) and checkpointing (`checkpoint_every`); all run at the final
  step. Step metrics are read back one step behind dispatch, so the host never waits on the
  device except before an evaluation or a checkpoint, which never see an unchecked state.
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

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from glore_jax.errors import GloreError
from glore_jax.model.llama import Llama
from glore_jax.model.sharding import single_device_mesh, tree_shardings
from glore_jax.training.checkpoint import Checkpoints, is_local_path
from glore_jax.training.config import TrainConfig, check_resume_config
from glore_jax.training.evaluate import Evaluator, evaluate
from glore_jax.training.feed import device_batch, iterate_from
from glore_jax.training.hooks import Hooks, StepInfo
from glore_jax.training.optimizer import FusedAdamW
from glore_jax.training.run_log import RunLog, copy_tree
from glore_jax.training.steps import (
  TrainState,
  make_eval_step,
  make_loss_fn,
  make_optimizer,
  make_train_step,
  reconfigured,
  required_keys,
  trainable_filter,
)
from glore_jax.training.throughput import Throughput

__all__ = [
  "TrainConfig",
  "TrainState",
  "TrainingDivergedError",
  "evaluate",
  "initial_state",
  "make_eval_step",
  "make_loss_fn",
  "make_optimizer",
  "make_train_step",
  "state_shardings",
  "train",
  "trainable_filter",
]

log = logging.getLogger(__name__)


class TrainingDivergedError(GloreError, RuntimeError):
  """The loss or gradient norm became NaN/Inf; `step` is the failing step (1-based, the update
  that was refused) and `last_checkpoint` the newest good checkpoint (or None)."""

  def __init__(self, message: str, *, step: int, last_checkpoint: str | None):
    super().__init__(message)
    self.step = step
    self.last_checkpoint = last_checkpoint


# ---- the train state on a mesh: one path, sharded or not -----------------------------------------


def state_shardings(params: Any, tx: FusedAdamW, mesh: Mesh) -> TrainState:
  """The NamedShardings of a `TrainState` over `params`: parameters and the AdamW moments that
  mirror them follow the model's sharding table, the step and the RNG key are replicated.

  Args:
    params: the trainable parameters (an nnx State, concrete or abstract).
    tx: the optimizer whose state is sharded.
    mesh: the mesh.
  """
  replicated = NamedSharding(mesh, P())
  return TrainState(
    step=replicated,
    params=tree_shardings(params, mesh),
    opt_state=tree_shardings(jax.eval_shape(tx.init, params), mesh),
    rng=replicated,
  )


def initial_state(
  params: Any, tx: FusedAdamW, *, seed: int, mesh: Mesh
) -> tuple[TrainState, TrainState]:
  """A fresh `TrainState` (step 0, new optimizer moments) placed on `mesh`, and its shardings
  (the train step's out_shardings). Unsharded training passes a one-device mesh.

  Args:
    params: the trainable parameters (an nnx State).
    tx: the optimizer.
    seed: seeds the state's RNG key.
    mesh: the mesh to place the state on.
  """
  shardings = state_shardings(params, tx, mesh)
  params = jax.device_put(params, shardings.params)
  state = TrainState(
    step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
    params=params,
    opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(params),
    rng=jax.device_put(jax.random.PRNGKey(seed), shardings.rng),
  )
  return state, shardings


# ---- the loop ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Dispatched:
  """A step sent to the device whose metrics are not read back yet."""

  step: int
  metrics: dict[str, jax.Array]
  tokens: int  # real tokens in its batch
  slots: int  # token slots, padding included


class _Run:
  """One call of `train`: the model split into trainable / frozen / rest, the state, the data
  position and the hooks. `fit` runs the loop; `close` always runs."""

  def __init__(
    self,
    model: Llama,
    config: TrainConfig,
    workdir: epath.Path,
    *,
    eval_batches: Iterable[Mapping] | None,
    mesh: Mesh | None,
    metrics_hook: Callable[[int, Mapping[str, float]], None] | None,
  ):
    self.config, self.workdir, self.eval_batches = config, workdir, eval_batches
    self.metrics_hook = metrics_hook
    run_model = reconfigured(model, dtype=config.compute_dtype, remat=config.remat)
    self.graphdef, self.params, self.frozen, self.rest = nnx.split(
      run_model, trainable_filter(config), nnx.Param, ...
    )
    if not jax.tree.leaves(self.params):
      raise ValueError(f"no trainable parameters for loss={config.loss!r}")
    self.tx, self.schedule = make_optimizer(config)
    self.mesh = mesh if mesh is not None else single_device_mesh()
    self.ckpt = Checkpoints(
      workdir / "checkpoints",
      keep_last=config.keep_last,
      best_metric=config.metric_name if eval_batches is not None else None,
      async_save=config.async_checkpoint,
    )
    self.state: TrainState | None = None
    self.shardings: TrainState | None = None  # the state's, set with it
    self.run_log: RunLog | None = None
    self.evaluator: Evaluator | None = None
    self.position = 0  # batches consumed, over epochs
    self.dispatched: _Dispatched | None = None
    self.history: list[dict] = []
    self.last_eval: dict = {}
    self.eval_step: int | None = None  # the step `last_eval` was measured at in this call

  # -- set-up

  def _restore_or_init(self) -> TrainState:
    """The initial state, or the latest checkpoint's (and its data position and last eval)."""
    state, shardings = initial_state(self.params, self.tx, seed=self.config.seed, mesh=self.mesh)
    self.shardings = shardings
    latest = self.ckpt.latest_step()
    if latest is not None:
      restored, meta = self.ckpt.restore(latest, state.as_dict())
      state = TrainState(**restored)
      self.position = int(meta["data_position"])
      check_resume_config(meta.get("config", {}), self.config, self.ckpt.path(latest))
      self.last_eval = meta.get("eval", {}) or {}
      log.info(
        "resumed from %s: step %d, data position %d",
        self.ckpt.path(latest),
        int(state.step),
        self.position,
      )
    return state

  def fit(self, train_batches: Iterable[Mapping[str, np.ndarray]]) -> None:
    config = self.config
    with jax.set_mesh(self.mesh):
      self.frozen = jax.device_put(self.frozen, tree_shardings(self.frozen, self.mesh))
      self.state = self._restore_or_init()
      self.start = step = int(jax.device_get(self.state.step))
      if self.start > config.total_steps:
        raise ValueError(f"checkpoint step {self.start} is past total_steps={config.total_steps}")
      step_fn = jax.jit(
        make_train_step(self.graphdef, config, self.tx, self.schedule),
        donate_argnums=(0,),
        out_shardings=(self.shardings, NamedSharding(self.mesh, P())),
      )
      self.run_log = RunLog(
        self.workdir,
        start=self.start,
        total_steps=config.total_steps,
        loss=config.loss,
        hook=self.metrics_hook,
        progress=config.progress,
      )
      self.meter = Throughput(start=self.start, total_steps=config.total_steps)
      # hooks on a step whose metrics were read back; on the state of such a step
      self.on_checked, self.on_state = Hooks(), Hooks()
      self.on_checked.add(self._log, every=config.log_every, aligned=False)
      if self.eval_batches is not None:
        self.on_state.add(self._evaluate, every=config.eval_every)
      self.on_state.add(self._save, every=config.checkpoint_every)

      keys = required_keys(config)
      data = iterate_from(train_batches, self.position, shuffle=config.shuffle, seed=config.seed)
      while step < config.total_steps:
        batch = next(data, None)
        if batch is None:
          log.warning(
            "train_batches ran out at data position %d, step %d of %d",
            self.position,
            step,
            config.total_steps,
          )
          break
        mask = np.asarray(batch["attention_mask"])
        self.state, metrics = step_fn(
          self.state, self.frozen, device_batch(batch, keys, config.grad_accum, self.mesh)
        )
        self._read_back()  # the previous step's, while this one runs
        step += 1
        self.position += 1
        self.dispatched = _Dispatched(step, metrics, int(mask.sum()), int(mask.size))
        final = step == config.total_steps
        if self.on_state.due(step, force=final):
          info = self._read_back()  # never evaluate or save an unchecked state
          with self.meter.paused():  # throughput counts training only
            self.on_state.run(info, force=final)
      self._read_back()
      if step > self.start and self.ckpt.latest_step() != step:  # the data ran out
        self._write_checkpoint(step, eval_=self.last_eval, metrics=None)
      self.ckpt.wait()

  # -- per step

  def _read_back(self) -> StepInfo | None:
    """Reads back the dispatched step's metrics, stops on a non-finite one, runs the
    `on_checked` hooks; returns the step's `StepInfo` (None when nothing was dispatched)."""
    if self.dispatched is None:
      return None
    done, self.dispatched = self.dispatched, None
    m = {k: float(v) for k, v in jax.device_get(done.metrics).items()}
    if not m["finite"]:
      last = self.ckpt.latest_step()
      raise TrainingDivergedError(
        f"non-finite training loss at step {done.step} (loss={m['loss']}, grad_norm="
        f"{m['grad_norm']}, data position {done.step - 1}); the update was discarded. Last good "
        f"checkpoint: {self.ckpt.path(last)}. Lower the learning rate or inspect that batch, "
        f"then resume from the checkpoint.",
        step=done.step,
        last_checkpoint=None if last is None else self.ckpt.path(last),
      )
    self.meter.add(tokens=done.tokens, slots=done.slots, loss=m["loss"])
    info = StepInfo(done.step, m)
    self.on_checked.run(info, force=done.step in (self.start + 1, self.config.total_steps))
    self.run_log.progress(1)
    return info

  # -- hooks

  def _log(self, info: StepInfo) -> None:
    window = self.meter.close_window(info.step)
    record = {
      "train/loss": window["train/loss"],
      "train/grad_norm": info.metrics["grad_norm"],
      "train/learning_rate": info.metrics["learning_rate"],
      "train/tokens_per_s": window["train/tokens_per_s"],
      "train/padding": window["train/padding"],
      "train/eta_s": window["train/eta_s"],
    }
    self.run_log.scalars(info.step, record)
    self.history.append({"step": info.step, **record})
    self.run_log.progress(
      0, loss=f"{record['train/loss']:.4f}", tok_s=f"{record['train/tokens_per_s']:.0f}"
    )

  def _evaluate(self, info: StepInfo) -> None:
    eval_model = nnx.merge(self.graphdef, self.state.params, self.frozen, self.rest)
    graphdef, params, rest = nnx.split(eval_model, nnx.Param, ...)
    if self.evaluator is None:
      self.evaluator = Evaluator(graphdef, self.mesh)
    self.last_eval, self.eval_step = self.evaluator(params, rest, self.eval_batches), info.step
    self.run_log.scalars(info.step, self.last_eval)
    log.info("step %d eval: %s", info.step, {k: round(v, 4) for k, v in self.last_eval.items()})

  def _save(self, info: StepInfo) -> None:
    evaluated = self.eval_step == info.step
    self._write_checkpoint(
      info.step,
      eval_=self.last_eval if evaluated else {},
      metrics=self.last_eval if evaluated else None,
    )

  def _write_checkpoint(self, step: int, *, eval_: dict, metrics: dict | None) -> None:
    meta = {
      "step": step,
      "data_position": self.position,
      "config": dataclasses.asdict(self.config),
      "eval": eval_,
    }
    self.ckpt.save(step, self.state.as_dict(), meta, metrics=metrics)

  # -- end

  def close(self, model: Llama) -> None:
    """Copies the trained parameters into `model` (unless a failed step consumed them), closes
    the log and the checkpoints."""
    if self.state is not None and not any(
      getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(self.state.params)
    ):
      nnx.update(model, self.state.params)
    if self.run_log is not None:
      self.run_log.close()
    self.ckpt.close()

  def summary(self) -> dict[str, Any]:
    final_step = int(jax.device_get(self.state.step))
    latest, best = self.ckpt.latest_step(), self.ckpt.best_step()
    metrics: dict[str, Any] = {
      "step": final_step,
      "complete": final_step == self.config.total_steps,
      "train_loss": self.history[-1]["train/loss"] if self.history else None,
      "tokens_per_s": self.meter.tokens_per_s,
      "history": self.history,
      "eval": self.last_eval,
      "checkpoint": self.ckpt.path(latest) if latest is not None else None,
    }
    if best is not None:
      metrics["best_checkpoint"] = self.ckpt.path(best)
    return metrics


def train(
  model: Llama,
  train_batches: Iterable[Mapping[str, np.ndarray]],
  config: TrainConfig,
  workdir: epath.PathLike,
  *,
  eval_batches: Iterable[Mapping] | None = None,
  mesh: jax.sharding.Mesh | None = None,
  metrics_hook: Callable[[int, Mapping[str, float]], None] | None = None,
) -> tuple[Llama, dict[str, Any]]:
  """Trains `model` (updated in place and returned), resuming from `<workdir>/checkpoints` when
  it holds a checkpoint.

  Args:
    model: the model; with `loss='value'` it needs a value head. Frozen parameters are not
      checkpointed: pass the same starting model when resuming.
    train_batches: one batch per optimizer step (format in `glore_jax.training.batch`): a
      sequence (indexed, reshuffled each epoch), a re-iterable, or a one-shot iterator.
    config: the training settings.
    workdir: the run's folder, local or an object store (gs://): checkpoints, metrics.jsonl,
      TensorBoard events, and `hf/` with `config.export_hf`.
    eval_batches: evaluated every `config.eval_every` steps and at the end; None skips
      evaluation (and best-checkpoint tracking).
    mesh: the mesh to shard over; None trains on one device.
    metrics_hook: `metrics_hook(step, record)` gets every logged record (process 0), e.g. W&B.

  Returns:
    The model and a dict: `step`, `complete`, `train_loss` (the last logged window's),
    `tokens_per_s` (compilation excluded), `history` (the logged records), `eval` (the last
    evaluation), `checkpoint` and `best_checkpoint` (paths), and `hf_dir` with `export_hf`.

  Raises:
    TrainingDivergedError: a non-finite loss, gradient norm or learning rate.
    StaleOutputError: the checkpoint was written under a config that differs in a field that
      changes the result.
  """
  workdir = epath.Path(workdir)  # local or gs:// (see the module docstring)
  workdir.mkdir(parents=True, exist_ok=True)
  if config.loss == "value" and not model.cfg.value_head:
    raise ValueError(
      "loss='value' needs a model with a value head (LlamaConfig(value_head=True) "
      "or load_hf(..., value_head=True))"
    )
  run = _Run(
    model, config, workdir, eval_batches=eval_batches, mesh=mesh, metrics_hook=metrics_hook
  )
  try:
    run.fit(train_batches)
  finally:
    run.close(model)
  metrics = run.summary()
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
