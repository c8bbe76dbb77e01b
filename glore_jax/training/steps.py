"""The jitted computations of training: the train state, which parameters train, the optimizer,
the loss, one optimizer step (micro-batches scanned, loss sums accumulated) and one eval step."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from glore_jax.model.llama import Llama
from glore_jax.training import losses
from glore_jax.training.batch import LM_KEYS, VALUE_KEYS
from glore_jax.training.config import TrainConfig
from glore_jax.training.optimizer import FusedAdamW

Batch = Mapping[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  """Everything a step updates (and a checkpoint holds); the frozen parameters are not in it."""

  step: jax.Array  # int32 scalar: optimizer updates applied
  params: Any  # nnx.State of the trainable parameters
  opt_state: Any
  rng: jax.Array  # uint32 [2] key, split every step (for dropout-like noise; the model has none)

  def as_dict(self) -> dict[str, Any]:
    """The state as the checkpoint stores it."""
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state, "rng": self.rng}


def trainable_filter(config: TrainConfig) -> nnx.filterlib.Filter:
  """Which parameters the loss trains (the others are frozen and never checkpointed): `lm` all
  but the value head; `value` all but the LM head, or the value head alone when
  `train_backbone=False`.

  Args:
    config: the run's config (`loss`, `train_backbone`).
  """
  head = nnx.Any(nnx.PathContains("value_head"), nnx.PathContains("value_bias"))
  if config.loss == "lm":
    return nnx.All(nnx.Param, nnx.Not(head))
  if not config.train_backbone:
    return nnx.All(nnx.Param, head)
  return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("lm_head")))


def make_optimizer(config: TrainConfig) -> tuple[FusedAdamW, optax.Schedule]:
  """AdamW (no decay on vectors) after global-norm clipping, with warmup and cosine decay.

  Args:
    config: the run's config (learning rate, schedule, Adam and clipping settings).

  Returns:
    The optimizer and its learning-rate schedule (step -> rate).
  """
  peak = config.learning_rate
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=config.warmup_steps,
    decay_steps=max(config.total_steps, config.warmup_steps + 1),
    end_value=peak * config.min_learning_rate_ratio,
  )
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return FusedAdamW(
    schedule,
    b1=config.adam_b1,
    b2=config.adam_b2,
    eps=config.adam_eps,
    weight_decay=config.weight_decay,
    decay_mask=decay_mask,
    clip_norm=config.grad_clip or None,
  ), schedule


def reconfigured(model: Llama, **changes: Any) -> Llama:
  """The same parameters under a model whose config differs in `changes` (compute dtype, remat);
  None values keep the model's setting.

  Args:
    model: the model.
    **changes: `LlamaConfig` fields to change.
  """
  changes = {k: v for k, v in changes.items() if v is not None and getattr(model.cfg, k) != v}
  if not changes:
    return model
  cfg = model.cfg.replace(**changes)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, nnx.state(model))


def required_keys(config: TrainConfig) -> tuple[str, ...]:
  """The batch keys the config's loss reads (`batch.LM_KEYS` or `batch.VALUE_KEYS`)."""
  return LM_KEYS if config.loss == "lm" else VALUE_KEYS


def make_loss_fn(
  graphdef: nnx.GraphDef, config: TrainConfig
) -> Callable[[Any, Any, Batch], tuple[jax.Array, jax.Array]]:
  """(trainable, frozen, micro-batch) -> (loss sum, count of target tokens or labelled steps).

  Args:
    graphdef: the model's graph (from `nnx.split`).
    config: the run's config (`loss`).
  """

  def loss_sums(trainable, frozen, mb):
    model = nnx.merge(graphdef, trainable, frozen)
    hidden_btd, _ = model.forward(mb["tokens"], attention_mask_bt=mb["attention_mask"])
    if config.loss == "lm":
      logits_btv = model.logits(hidden_btd)
      return losses.lm_loss_sums(logits_btv, losses.shift_targets(mb["tokens"]), mb["target_mask"])
    hidden_bmd = losses.gather_steps(hidden_btd, mb["value_index"])
    return losses.value_loss_sums(
      model.values(hidden_bmd), mb["value_target"], mb["value_index"] >= 0
    )

  return loss_sums


def make_train_step(
  graphdef: nnx.GraphDef, config: TrainConfig, tx: FusedAdamW, schedule: optax.Schedule
) -> Callable[[TrainState, Any, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """One optimizer update, (state, frozen, batch) -> (new state, metrics); not yet jitted.

  The batch's leaves are [A, B, ...]: A micro-batches of B rows, scanned, their loss sums and
  counts added, so the loss is the mean over every target of the whole step. A non-finite loss
  leaves the state unchanged (`metrics['finite']` is False).

  Args:
    graphdef: the model's graph (from `nnx.split`).
    config: the run's config.
    tx: the optimizer from `make_optimizer`.
    schedule: its learning-rate schedule (reported in the metrics).
  """
  loss_sums = make_loss_fn(graphdef, config)
  value_and_grad = jax.value_and_grad(loss_sums, has_aux=True)

  def micro(params, frozen, mb):
    (total, count), grads = value_and_grad(params, frozen, mb)
    return grads, total, count

  def step(state: TrainState, frozen, batch):
    accum = batch["tokens"].shape[0]
    if accum == 1:
      grads, total, count = micro(state.params, frozen, jax.tree.map(lambda x: x[0], batch))
    else:

      def body(carry, mb):
        g, t, c = micro(state.params, frozen, mb)
        return jax.tree.map(jnp.add, carry, (g, t, c)), None

      zeros = (
        jax.tree.map(jnp.zeros_like, state.params),
        jnp.zeros((), jnp.float32),
        jnp.zeros((), jnp.float32),
      )
      (grads, total, count), _ = jax.lax.scan(body, zeros, batch)
    denom = jnp.maximum(count, 1.0)
    loss = total / denom
    # 1 / denom, the clipping and the skip of a non-finite step are folded into the optimizer's
    # one in-place pass over the donated state (no normalised or clipped copy of the gradients)
    params, opt_state, ok, grad_norm = tx.update(
      grads, state.opt_state, state.params, grad_scale=1.0 / denom, skip=~jnp.isfinite(loss)
    )
    new_state = TrainState(
      step=state.step + ok.astype(state.step.dtype),
      params=params,
      opt_state=opt_state,
      rng=jnp.where(ok, jax.random.split(state.rng)[0], state.rng),
    )
    metrics = {
      "loss": loss,
      "count": count,
      "grad_norm": grad_norm,
      "learning_rate": schedule(state.step),
      "finite": ok,
    }
    return new_state, metrics

  return step


def make_eval_step(
  graphdef: nnx.GraphDef, keys: tuple[str, ...]
) -> Callable[[Any, Any, Batch], dict[str, jax.Array]]:
  """(trainable, rest, batch) -> LM loss sum, count and correct greedy tokens (when `keys` has
  `target_mask`) and the value logits at the labelled steps (when it has `value_index`).

  Args:
    graphdef: the model's graph (from `nnx.split`).
    keys: the keys the eval batches carry.
  """
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
