"""Evaluation: LM loss and greedy accuracy over target tokens; value-head loss, accuracy and
AUROC over labelled steps; for whatever keys the eval batches carry."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from glore_jax.model.llama import Llama
from glore_jax.model.sharding import single_device_mesh
from glore_jax.training import losses
from glore_jax.training.batch import LM_KEYS, VALUE_KEYS
from glore_jax.training.feed import device_batch
from glore_jax.training.steps import make_eval_step


class Evaluator:
  """Evaluates models of one graph on a mesh, compiling one eval step per set of batch keys
  (kept across calls: a run evaluates many times).

  Args:
    graphdef: the graph of the models it evaluates (from `nnx.split(model, nnx.Param, ...)`).
    mesh: the mesh the parameters live on.
  """

  def __init__(self, graphdef: nnx.GraphDef, mesh: Mesh):
    self.graphdef, self.mesh = graphdef, mesh
    self._compiled: dict[tuple[str, ...], Callable] = {}

  def _step(self, keys: tuple[str, ...]) -> Callable:
    if keys not in self._compiled:
      self._compiled[keys] = jax.jit(
        make_eval_step(self.graphdef, keys), out_shardings=NamedSharding(self.mesh, P())
      )
    return self._compiled[keys]

  def __call__(self, params: Any, rest: Any, batches: Iterable[Mapping]) -> dict[str, float]:
    """Metrics over `batches` (see `evaluate`).

    Args:
      params: the model's parameters (nnx State), placed on the mesh.
      rest: its other state (nnx State).
      batches: eval batches (format in `glore_jax.training.batch`).
    """
    sums: collections.Counter = collections.Counter()
    scores, labels, targets = [], [], []
    with jax.set_mesh(self.mesh):
      for batch in batches:
        keys = tuple(dict.fromkeys(k for k in (*LM_KEYS, *VALUE_KEYS) if k in batch))
        dev = {k: v[0] for k, v in device_batch(batch, keys, 1, self.mesh).items()}
        out = jax.device_get(self._step(keys)(params, rest, dev))
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
      metrics["eval/value_accuracy"] = (
        float(((z > 0) == (y > 0.5)).mean()) if len(z) else float("nan")
      )
      metrics["eval/value_auroc"] = losses.auroc(z, y)
      metrics["eval/value_steps"] = float(len(z))
    return metrics


def evaluate(
  model: Llama, batches: Iterable[Mapping], *, mesh: Mesh | None = None
) -> dict[str, float]:
  """LM loss / greedy next-token accuracy over target tokens, and value-head loss, accuracy
  (sigmoid > 0.5 vs the hard label) and AUROC over labelled steps, for whatever keys the batches
  carry. Value loss uses `value_target` (hard or soft).

  Args:
    model: the model (its parameters already placed on `mesh` when one is given).
    batches: eval batches (format in `glore_jax.training.batch`), each a dict of numpy arrays.
    mesh: the mesh to run on; None runs on one device.

  Returns:
    `eval/lm_loss`, `eval/lm_accuracy`, `eval/lm_tokens` (LM batches) and `eval/value_loss`,
    `eval/value_accuracy`, `eval/value_auroc`, `eval/value_steps` (value batches).
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return Evaluator(graphdef, mesh if mesh is not None else single_device_mesh())(
    params, rest, batches
  )
