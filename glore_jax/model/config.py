"""Llama architecture settings: presets, HF `config.json` import/export, validation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from glore_jax.errors import InputError


class UnsupportedConfigError(InputError, ValueError):
  """An HF config asks for a feature this implementation does not have."""


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shapes and numerics of a Llama-2 style decoder.

  Fields are settings as configs and HF files write them; three properties give the resolved
  form of a field (one name per setting, one per resolved value):

  * `dtype`: the compute dtype (activations, matmul inputs), a dtype name; `compute_dtype` is
    the same as a `jnp.dtype` (for `.itemsize`, `ShapeDtypeStruct`).
  * `param_dtype`: the storage dtype of the parameters (Flax's name). TPU training wants bf16
    compute over fp32 params; the parity tests want fp32 everywhere.
  * `fuse_projections`: a request (True, False, or None = the platform's default);
    `Ops.fused_projections` (`glore_jax.model.ops.select_ops`, `model.ops`) is the answer for
    the platform, resolved once when a model is built.
  * `platform`: the platform asked for (None: the default backend); `target_platform` is the
    resolved name.

  Attributes:
    vocab_size, hidden_size (D), intermediate_size (F), num_layers, num_heads (N),
      num_kv_heads (K; N must be a multiple), head_dim (H; 0 = hidden_size // num_heads):
      the shapes.
    rope_theta, rms_norm_eps, max_position_embeddings, tie_word_embeddings, bos_token_id,
      eos_token_id: as in an HF Llama config.json.
    dtype, param_dtype: compute and storage dtype names (above).
    value_head: add a scalar value head (reward models, value training).
    remat: recompute each layer's activations in the backward pass.
    fuse_projections, platform, pallas_attention: the platform's fast paths (see the comments
      on each field).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int = 0  # 0: hidden_size // num_heads
  rope_theta: float = 10_000.0
  rms_norm_eps: float = 1e-5
  max_position_embeddings: int = 4096
  tie_word_embeddings: bool = False
  bos_token_id: int | None = 1
  eos_token_id: int | None = 2
  dtype: str = "float32"
  param_dtype: str = "float32"
  value_head: bool = False
  remat: bool = False
  # q/k/v and gate/up each as one wide matmul over weights concatenated at run time: faster on
  # XLA:CPU (narrow matmuls run well below its peak), no gain on TPU, where the concatenated
  # copies would only cost memory. None: fuse when the default backend is the CPU.
  fuse_projections: bool | None = None
  # The backend the model's programs are built for: None, the default backend; 'tpu' when
  # compiling ahead of time for a TPU slice from another machine (`glore_jax.aot`). Picks the
  # projections above and the attention kernels (`glore_jax.model.kernels`).
  platform: str | None = None
  # Pallas attention kernels: None uses them on TPU only; False never (XLA attention); True
  # everywhere (off TPU only under Pallas interpret mode, for tests).
  pallas_attention: bool | None = None

  def __post_init__(self):
    if self.head_dim == 0:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
      )
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"LlamaConfig.{name}={getattr(self, name)!r} is not a dtype") from e

  @property
  def compute_dtype(self) -> jnp.dtype:
    """`dtype` as a `jnp.dtype`."""
    return jnp.dtype(self.dtype)

  @property
  def target_platform(self) -> str:
    """`platform`, or the default backend when None ('cpu', 'tpu', 'gpu')."""
    return self.platform or jax.default_backend()

  def replace(self, **changes: Any) -> LlamaConfig:
    """A copy with `changes` (field=value) applied and validated."""
    return dataclasses.replace(self, **changes)

  def num_params(self, *, include_embedding: bool = True) -> int:
    """The parameter count (value head excluded); `include_embedding=False` leaves out the
    embedding and the LM head."""
    d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
    attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * d * f + 2 * d
    emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
    return self.num_layers * per_layer + d + (emb if include_embedding else 0)

  # ---- HF interop -------------------------------------------------------------------------

  @classmethod
  def from_hf(cls, source: str | Path | Mapping[str, Any], **overrides: Any) -> LlamaConfig:
    """Reads an HF Llama `config.json` (a folder, the file, or its dict).

    Fails before any compute on features we do not implement, naming the key.
    """
    where = "config dict"
    if not isinstance(source, Mapping):
      path = Path(source)
      if path.is_dir():
        path = path / "config.json"
      where = str(path)
      if not path.exists():
        raise FileNotFoundError(f"{where}: no HF config.json here")
      try:
        source = json.loads(path.read_text(encoding="utf-8"))
      except (ValueError, UnicodeDecodeError) as e:
        raise UnsupportedConfigError(f"{where}: not valid JSON ({e})") from None
      if not isinstance(source, Mapping):
        raise UnsupportedConfigError(f"{where}: expected a JSON object")
    hf = dict(source)
    _check_hf_fields(hf, where)
    model_type = hf.get("model_type", "llama")
    if model_type != "llama":
      raise UnsupportedConfigError(f"{where}: model_type={model_type!r}; only 'llama' is supported")
    for key in ("attention_bias", "mlp_bias"):
      if hf.get(key):
        raise UnsupportedConfigError(
          f"{where}: {key}=true is not supported (Llama-2 has no biases)"
        )
    act = hf.get("hidden_act", "silu")
    if act != "silu":
      raise UnsupportedConfigError(
        f"{where}: hidden_act={act!r}; only 'silu' (SwiGLU) is supported"
      )
    rope_theta = hf.get("rope_theta")
    # transformers 5 moved RoPE settings into `rope_parameters`; 4.x used `rope_scaling`.
    for key in ("rope_scaling", "rope_parameters"):
      rope = hf.get(key)
      if not rope:
        continue
      rope_type = rope.get("rope_type", rope.get("type", "default"))
      if rope_type != "default":
        raise UnsupportedConfigError(
          f"{where}: {key}.rope_type={rope_type!r}; only default RoPE is supported"
        )
      rope_theta = rope.get("rope_theta", rope_theta)
    if hf.get("pretraining_tp", 1) not in (1, None):
      raise UnsupportedConfigError(
        f"{where}: pretraining_tp={hf['pretraining_tp']} is not supported"
      )
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
      eos = eos[0] if eos else None
    num_heads = hf["num_attention_heads"]
    fields = dict(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=num_heads,
      num_kv_heads=hf.get("num_key_value_heads") or num_heads,
      head_dim=hf.get("head_dim") or 0,
      rope_theta=float(rope_theta if rope_theta is not None else 10_000.0),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      max_position_embeddings=hf.get("max_position_embeddings", 4096),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_id=eos,
    )
    fields.update(overrides)
    return cls(**fields)

  def to_hf(self) -> dict[str, Any]:
    """The `config.json` dict that transformers' LlamaForCausalLM loads."""
    return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": self.vocab_size,
      "hidden_size": self.hidden_size,
      "intermediate_size": self.intermediate_size,
      "num_hidden_layers": self.num_layers,
      "num_attention_heads": self.num_heads,
      "num_key_value_heads": self.num_kv_heads,
      "head_dim": self.head_dim,
      "hidden_act": "silu",
      "rope_theta": self.rope_theta,
      "rms_norm_eps": self.rms_norm_eps,
      "max_position_embeddings": self.max_position_embeddings,
      "tie_word_embeddings": self.tie_word_embeddings,
      "attention_bias": False,
      "mlp_bias": False,
      "bos_token_id": self.bos_token_id,
      "eos_token_id": self.eos_token_id,
      "torch_dtype": self.param_dtype,
    }


# config.json fields we read: required ones, then optional ones with their expected kind.
_HF_REQUIRED = (
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
)
_HF_POSITIVE_INTS = _HF_REQUIRED + ("num_key_value_heads", "head_dim", "max_position_embeddings")
_HF_NUMBERS = ("rope_theta", "rms_norm_eps")


def _check_hf_fields(hf: Mapping[str, Any], where: str) -> None:
  """Missing keys and wrong types as one message naming the file and field."""
  for key in _HF_REQUIRED:
    if key not in hf:
      raise UnsupportedConfigError(
        f"{where}: field {key!r} is missing (an HF Llama config.json needs it)"
      )
  for key in _HF_POSITIVE_INTS:
    value = hf.get(key)
    positive_int = isinstance(value, int) and not isinstance(value, bool) and value > 0
    head_dim_default = key == "head_dim" and value == 0  # 0: hidden_size // num_heads
    if (key in _HF_REQUIRED or value is not None) and not positive_int and not head_dim_default:
      raise UnsupportedConfigError(
        f"{where}: field {key!r} = {value!r}; expected a positive integer"
      )
  for key in _HF_NUMBERS:
    value = hf.get(key)
    if value is not None and not (
      isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    ):
      raise UnsupportedConfigError(
        f"{where}: field {key!r} = {value!r}; expected a positive number"
      )


PRESETS: dict[str, LlamaConfig] = {
  "llama2-7b": LlamaConfig(
    vocab_size=32_000,
    hidden_size=4096,
    intermediate_size=11_008,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
  ),
  "llama2-13b": LlamaConfig(
    vocab_size=32_000,
    hidden_size=5120,
    intermediate_size=13_824,
    num_layers=40,
    num_heads=40,
    num_kv_heads=40,
  ),
  "llama2-70b": LlamaConfig(
    vocab_size=32_000,
    hidden_size=8192,
    intermediate_size=28_672,
    num_layers=80,
    num_heads=64,
    num_kv_heads=8,
  ),
  "smollm2-135m": LlamaConfig(
    vocab_size=49_152,
    hidden_size=576,
    intermediate_size=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    rope_theta=100_000.0,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
  ),
  "tiny": LlamaConfig(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=176,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=512,
  ),
}


def preset(name: str, **overrides: Any) -> LlamaConfig:
  """The named preset (`PRESETS`) with `overrides` (LlamaConfig fields) applied.

  Raises:
    KeyError: an unknown name, listing the known ones.
  """
  try:
    base = PRESETS[name]
  except KeyError:
    raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
  return base.replace(**overrides)
