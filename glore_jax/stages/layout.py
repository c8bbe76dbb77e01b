"""Where each stage's output lives in a work directory, which stage writes it, and the run
context every stage gets (`stages.outputs.require` checks an output before a stage reads it)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from etils import epath

from glore_jax.data.prompts import PromptFormat
from glore_jax.errors import InputError

# Where each stage writes, relative to the work directory. A model folder is an HF folder
# (config.json + model.safetensors [+ value_head.safetensors] + the tokenizer).
LAYOUT = {
  "policy": "policy/model",
  "sample": "sample",
  "label": "label",
  "orm": "orm/model",
  "sorm": "sorm/model",
  "refine_data": "refine_data",
  "global": "refiner_global/model",
  "local": "refiner_local/model",
  "evaluate": "evaluate",
}
# Outputs a config can give from outside (config.inputs.KEY, an HF folder) instead of training.
INPUT_KEYS = {
  "policy": "policy",
  "orm": "orm",
  "sorm": "sorm",
  "global": "refiner_global",
  "local": "refiner_local",
}
# Which stage produces each output, for "run stage X first" messages.
PRODUCER = {
  "policy": "policy",
  "sample": "sample",
  "label": "label",
  "orm": "train_orm",
  "sorm": "train_sorm",
  "refine_data": "refine_data",
  "global": "train_global",
  "local": "train_local",
  "evaluate": "evaluate",
}


class MissingInputError(InputError):
  """A stage's inputs are not in the work directory yet."""


@dataclasses.dataclass
class Context:
  """One run: the validated config, the work directory and the device mesh."""

  config: Any
  workdir: epath.Path
  mesh: jax.sharding.Mesh

  def path(self, output: str) -> epath.Path:
    """Where `output` is: the folder given in config.inputs, else its place in the workdir."""
    given = self.given(output)
    return epath.Path(given) if given else self.workdir / LAYOUT[output]

  def given(self, output: str) -> str:
    """The folder config.inputs names for `output` ('' when the workdir's own is used)."""
    inputs = getattr(self.config, "inputs", None) or {}
    return inputs.get(INPUT_KEYS.get(output, ""), "") or ""

  @property
  def prompts(self) -> PromptFormat:
    return PromptFormat.from_config(self.config.prompts)

  @property
  def is_leader(self) -> bool:
    return jax.process_index() == 0
