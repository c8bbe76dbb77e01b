"""AdamW with global-norm clipping as ONE elementwise pass per parameter, in place.

The same update as `optax.chain(optax.clip_by_global_norm(c), optax.adamw(schedule, mask=...))`
(tested against it), written so that the compiler needs no parameter-sized temporaries: the
gradient normalisation (1 / target count), the clipping scale and the skip of a non-finite step
are scalars folded into each leaf's update, and the new moments and parameters are written into
the donated state. optax's chain materialises the normalised gradients, the clipped gradients and
the updates as separate trees, and skipping a step needs either a `where` over two full states or
a `lax.cond` whose branches copy the state: on the Llama-2 7B training step that was 2.7x the fp32
parameters in temporaries against 1.3x here (the gradients themselves plus the backward pass's
working set), the difference between fitting 16 GiB per device on 8 devices or not.

optax still provides the learning-rate schedule and the global norm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AdamWState:
  """The optimizer's state: the update count and the two moment trees (fp32)."""

  count: jax.Array  # int32 scalar: updates applied (the bias correction's t)
  mu: Any  # first moments, shaped like the parameters (fp32)
  nu: Any  # second moments


@dataclasses.dataclass(frozen=True)
class FusedAdamW:
  """AdamW (decoupled weight decay) after optional global-norm clipping; see the module doc.

  Args:
    schedule: the learning rate as a function of the update count.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's epsilon.
    weight_decay: decoupled weight decay (on the parameters `decay_mask` selects).
    decay_mask: a tree of bools like the parameters, or a function of them (None: all decay).
    clip_norm: clip the gradients' global norm to this (None: no clipping).
  """

  schedule: optax.Schedule
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  # which parameters decay (True) or not: a tree of bools, or a function of the parameters
  decay_mask: Callable[[Any], Any] | None = None
  clip_norm: float | None = None  # global-norm clipping of the (normalised) gradients

  def init(self, params: Any) -> AdamWState:
    """Zero moments shaped like `params` (fp32), count 0."""
    zeros = lambda tree: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), tree)
    return AdamWState(count=jnp.zeros((), jnp.int32), mu=zeros(params), nu=zeros(params))

  def update(
    self,
    grads: Any,
    state: AdamWState,
    params: Any,
    *,
    grad_scale: float | jax.Array = 1.0,
    skip: bool | jax.Array = False,
  ) -> tuple[Any, AdamWState, jax.Array, jax.Array]:
    """-> (new params, new state, update applied?, gradient norm).

    The gradients used are `grads * grad_scale` (e.g. 1 / the batch's target count), clipped to
    `clip_norm`. When `skip` is true, or the gradient norm or the learning rate is not finite,
    params and moments come back bit-identical and the count does not advance. The norm
    returned is that of the scaled gradients before clipping.

    Args:
      grads: the gradients, shaped like `params`.
      state: the optimizer state.
      params: the parameters (donated in the train step: updated in place).
      grad_scale: multiplies the gradients (a scalar, traced or not).
      skip: a scalar bool; true leaves everything unchanged.
    """
    grad_norm = optax.global_norm(grads) * grad_scale
    lr = self.schedule(state.count)
    # finite gradients (clipped or not) and a finite rate keep moments and parameters finite
    ok = jnp.logical_not(skip) & jnp.isfinite(grad_norm) & jnp.isfinite(lr)
    scale = grad_scale
    if self.clip_norm:
      # optax.clip_by_global_norm: g * c / max(norm, c)
      scale = scale * self.clip_norm / jnp.maximum(grad_norm, self.clip_norm)
    t = (state.count + 1).astype(jnp.float32)
    bias1, bias2 = 1 - self.b1**t, 1 - self.b2**t
    mask = self.decay_mask(params) if callable(self.decay_mask) else self.decay_mask
    if mask is None:
      mask = jax.tree.map(lambda _: True, params)

    scaled = lambda g: g.astype(jnp.float32) * scale
    mu = jax.tree.map(
      lambda g, m: jnp.where(ok, self.b1 * m + (1 - self.b1) * scaled(g), m), grads, state.mu
    )
    nu = jax.tree.map(
      lambda g, v: jnp.where(ok, self.b2 * v + (1 - self.b2) * jnp.square(scaled(g)), v),
      grads,
      state.nu,
    )

    def new_param(p, m, v, decays):
      step = (m / bias1) / (jnp.sqrt(v / bias2) + self.eps)
      if decays and self.weight_decay:
        step = step + self.weight_decay * p.astype(jnp.float32)
      return jnp.where(ok, (p.astype(jnp.float32) - lr * step).astype(p.dtype), p)

    new_params = jax.tree.map(new_param, params, mu, nu, mask)
    new_state = AdamWState(count=state.count + ok.astype(jnp.int32), mu=mu, nu=nu)
    return new_params, new_state, ok, grad_norm
