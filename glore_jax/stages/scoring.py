"""Value-head scores of solution steps, batched: sigmoid(value) at each step's terminator."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glore_jax.data.tokenizer import padding_id
from glore_jax.model import Llama
from glore_jax.stages.common import try_encode
from glore_jax.training import bucket_length

if TYPE_CHECKING:
  from transformers import PreTrainedTokenizerFast


def _forward_batches(
  model: Llama,
  tokenizer,
  prompts: Sequence[str],
  steps: Sequence[Sequence[str]],
  *,
  max_length: int,
  batch_size: int,
  mesh,
  per_token,
  read,
):
  """Encodes (prompt, steps) pairs, runs `per_token(model, tokens_bt, mask_bt) -> [B, T']` over
  length-sorted, padded batches and returns read(encoded, row of its result) per pair (None
  for a pair with nothing to score)."""
  encoded = [try_encode(tokenizer, p, s, max_length) for p, s in zip(prompts, steps)]
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, tokens_bt, mask_bt):
    return per_token(nnx.merge(graphdef, state), tokens_bt, mask_bt)

  out: list = [None] * len(encoded)
  order = sorted(
    (i for i, e in enumerate(encoded) if e is not None), key=lambda i: len(encoded[i].ids)
  )
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    for start in range(0, len(order), batch_size):
      rows = order[start : start + batch_size]
      width = bucket_length(max(len(encoded[i].ids) for i in rows))
      tokens = np.full((batch_size, width), padding_id(tokenizer), np.int32)
      mask = np.zeros((batch_size, width), np.int32)
      for r, i in enumerate(rows):
        ids = encoded[i].ids
        tokens[r, : len(ids)] = ids
        mask[r, : len(ids)] = 1
      result = np.asarray(run(state, jnp.asarray(tokens), jnp.asarray(mask)))
      for r, i in enumerate(rows):
        out[i] = read(encoded[i], result[r])
  return out


def score_steps(
  model: Llama,
  tokenizer: PreTrainedTokenizerFast,
  prompts: Sequence[str],
  steps: Sequence[Sequence[str]],
  *,
  max_length: int,
  batch_size: int = 64,
  mesh: jax.sharding.Mesh | None = None,
) -> list[list[float]]:
  """P(success) per step for each (prompt, steps); [] for a solution with no steps. Steps cut
  by `max_length` get no score (the list is shorter than the solution).

  Args:
    model: a reward model (value head).
    tokenizer: its tokenizer.
    prompts: one prompt per solution.
    steps: each solution's steps.
    max_length: the longest encoding in tokens.
    batch_size: rows per forward pass.
    mesh: the mesh to run under (`jax.set_mesh`); None: the current one.
  """

  def values(m, tokens_bt, mask_bt):
    hidden_btd, _ = m.forward(tokens_bt, attention_mask_bt=mask_bt)
    return jax.nn.sigmoid(m.values(hidden_btd))

  scores = _forward_batches(
    model,
    tokenizer,
    prompts,
    steps,
    max_length=max_length,
    batch_size=batch_size,
    mesh=mesh,
    per_token=values,
    read=lambda e, probs_t: [float(probs_t[i]) for i in e.step_ends],
  )
  return [s if s is not None else [] for s in scores]


def solution_logprobs(
  model: Llama,
  tokenizer: PreTrainedTokenizerFast,
  prompts: Sequence[str],
  steps: Sequence[Sequence[str]],
  *,
  max_length: int,
  batch_size: int = 64,
  mesh: jax.sharding.Mesh | None = None,
) -> list[float | None]:
  """Mean log-probability per solution token (EOS included) under `model`, teacher-forced:
  the policy's own likelihood of a candidate, whoever wrote it (None: nothing to score).

  Args:
    model: the policy (language-model head).
    tokenizer: its tokenizer.
    prompts: one prompt per solution.
    steps: each solution's steps.
    max_length: the longest encoding in tokens.
    batch_size: rows per forward pass.
    mesh: the mesh to run under (`jax.set_mesh`); None: the current one.
  """

  def token_logprobs(m, tokens_bt, mask_bt):
    hidden_btd, _ = m.forward(tokens_bt, attention_mask_bt=mask_bt)
    logp_btv = jax.nn.log_softmax(m.logits(hidden_btd[:, :-1]).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]  # [B, T-1]

  # token t is predicted at position t-1: solution tokens are prompt_length..len(ids)-1
  return _forward_batches(
    model,
    tokenizer,
    prompts,
    steps,
    max_length=max_length,
    batch_size=batch_size,
    mesh=mesh,
    per_token=token_logprobs,
    read=lambda e, logp_t: float(logp_t[e.prompt_length - 1 : len(e.ids) - 1].mean()),
  )
