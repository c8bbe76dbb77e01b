"""The one Llama-2 that serves sampling and value-head training, its sharding and HF checkpoints."""

from glore_jax.model.config import PRESETS, LlamaConfig, UnsupportedConfigError, preset
from glore_jax.model.hf import CheckpointError, load_hf, save_hf
from glore_jax.model.llama import KVCache, Llama, create_model
from glore_jax.model.sharding import RULES, ShardingRules, make_mesh

__all__ = [
  "PRESETS",
  "RULES",
  "CheckpointError",
  "KVCache",
  "Llama",
  "LlamaConfig",
  "ShardingRules",
  "UnsupportedConfigError",
  "create_model",
  "load_hf",
  "make_mesh",
  "preset",
  "save_hf",
]
