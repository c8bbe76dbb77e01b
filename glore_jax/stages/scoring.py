"""Value-head scores of solution steps, batched: sigmoid(value) at each step's terminator."""

from __future__ import annotations

import contextlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glore_jax.data.tokenizer import padding_id
from glore_jax.model import Llama
from glore_jax.stages.common import try_encode
from glore_jax.training import bucket_length


def score_steps(model: Llama, tokenizer, prompts: Sequence[str], steps: Sequence[Sequence[str]], *,
                max_length: int, batch_size: int = 64, mesh=None) -> list[list[float]]:
  """P(success) per step for each (prompt, steps); [] for a solution with no steps. Steps cut
  by `max_length` get no score (the list is shorter than the solution)."""
  encoded = [try_encode(tokenizer, p, s, max_length) for p, s in zip(prompts, steps)]
  graphdef, state = nnx.split(model)

  @jax.jit
  def values(state, tokens_bt, mask_bt):
    m = nnx.merge(graphdef, state)
    hidden_btd, _ = m.forward(tokens_bt, attention_mask_bt=mask_bt)
    return jax.nn.sigmoid(m.values(hidden_btd))

  out: list[list[float]] = [[] for _ in encoded]
  order = sorted((i for i, e in enumerate(encoded) if e is not None), key=lambda i: len(encoded[i].ids))
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = bucket_length(max(len(encoded[i].ids) for i in rows))
      tokens = np.full((batch_size, width), padding_id(tokenizer), np.int32)
      mask = np.zeros((batch_size, width), np.int32)
      for r, i in enumerate(rows):
        ids = encoded[i].ids
        tokens[r, :len(ids)] = ids
        mask[r, :len(ids)] = 1
      probs = np.asarray(values(state, jnp.asarray(tokens), jnp.asarray(mask)))
      for r, i in enumerate(rows):
        out[i] = [float(probs[r, e]) for e in encoded[i].step_ends]
  return out



def solution_logprobs(model: Llama, tokenizer, prompts: Sequence[str],
                      steps: Sequence[Sequence[str]], *, max_length: int, batch_size: int = 64,
                      mesh=None) -> list[float | None]:
  """Mean log-probability per solution token (EOS included) under `model`, teacher-forced:
  the policy's own likelihood of a candidate, whoever wrote it (None: nothing to score)."""
  encoded = [try_encode(tokenizer, p, s, max_length) for p, s in zip(prompts, steps)]
  graphdef, state = nnx.split(model)

  @jax.jit
  def token_logprobs(state, tokens_bt, mask_bt):
    m = nnx.merge(graphdef, state)
    hidden_btd, _ = m.forward(tokens_bt, attention_mask_bt=mask_bt)
    logp_btv = jax.nn.log_softmax(m.logits(hidden_btd[:, :-1]).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]  # [B, T-1]

  out: list[float | None] = [None] * len(encoded)
  order = sorted((i for i, e in enumerate(encoded) if e is not None), key=lambda i: len(encoded[i].ids))
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = bucket_length(max(len(encoded[i].ids) for i in rows))
      tokens = np.full((batch_size, width), padding_id(tokenizer), np.int32)
      mask = np.zeros((batch_size, width), np.int32)
      for r, i in enumerate(rows):
        ids = encoded[i].ids
        tokens[r, :len(ids)] = ids
        mask[r, :len(ids)] = 1
      logp = np.asarray(token_logprobs(state, jnp.asarray(tokens), jnp.asarray(mask)))
      for r, i in enumerate(rows):
        e = encoded[i]
        # token t is predicted at position t-1: solution tokens are prompt_length..len(ids)-1
        out[i] = float(logp[r, e.prompt_length - 1:len(e.ids) - 1].mean())
  return out
