"""Where each stage's output lives in a work directory, and which stage writes it."""

from __future__ import annotations

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
