"""HF Llama checkpoints (safetensors only; never pickle) <-> our NNX `Llama`.

Loading reads one tensor at a time and places it straight into its target sharding, so a
70B checkpoint never has to fit in one host's memory as a whole model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from glore_jax.errors import InputError
from glore_jax.model.config import LlamaConfig
from glore_jax.model.layers import INIT_STD
from glore_jax.model.llama import Llama
from glore_jax.model.sharding import tree_shardings

log = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
# The value head is saved in model.safetensors under the names of transformers'
# `LlamaForTokenClassification` classifier, so that
# `AutoModelForTokenClassification.from_pretrained(folder, num_labels=1)` returns our value
# logits. Folders written before kept it in VALUE_HEAD_FILE under the names on the left.
_LEGACY_HEAD_NAMES = {"value_head.weight": "score.weight", "value_head.bias": "score.bias"}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(InputError, ValueError):
  """A checkpoint does not match the model it is loaded into."""


@dataclasses.dataclass(frozen=True)
class _Mapping:
  """How one HF tensor becomes one of our parameters, and back."""

  ours: tuple  # path into the nnx state
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _tensor_map(cfg: LlamaConfig) -> dict[str, _Mapping]:
  d, f, v, h = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
  n, k = cfg.num_heads, cfg.num_kv_heads
  same = lambda x: x
  transpose = lambda x: np.ascontiguousarray(x.T)

  def heads_in(num):  # HF [num*H, D] -> ours [D, num, H]
    return (
      lambda x: np.ascontiguousarray(x.T).reshape(d, num, h),
      lambda x: np.ascontiguousarray(x.reshape(d, num * h).T),
    )

  table = {
    "model.embed_tokens.weight": _Mapping(("embedding",), (v, d), same, same),
    "model.norm.weight": _Mapping(("final_norm",), (d,), same, same),
  }
  if not cfg.tie_word_embeddings:
    table["lm_head.weight"] = _Mapping(("lm_head",), (v, d), transpose, transpose)
  for i in range(cfg.num_layers):
    pre = f"model.layers.{i}."
    layer = ("layers", i)
    q_in, q_out = heads_in(n)
    kv_in, kv_out = heads_in(k)
    table.update(
      {
        pre + "self_attn.q_proj.weight": _Mapping(layer + ("attn", "q"), (n * h, d), q_in, q_out),
        pre + "self_attn.k_proj.weight": _Mapping(layer + ("attn", "k"), (k * h, d), kv_in, kv_out),
        pre + "self_attn.v_proj.weight": _Mapping(layer + ("attn", "v"), (k * h, d), kv_in, kv_out),
        pre + "self_attn.o_proj.weight": _Mapping(
          layer + ("attn", "o"),
          (d, n * h),
          lambda x: np.ascontiguousarray(x.T).reshape(n, h, d),
          lambda x: np.ascontiguousarray(x.reshape(n * h, d).T),
        ),
        pre + "mlp.gate_proj.weight": _Mapping(
          layer + ("mlp", "gate"), (f, d), transpose, transpose
        ),
        pre + "mlp.up_proj.weight": _Mapping(layer + ("mlp", "up"), (f, d), transpose, transpose),
        pre + "mlp.down_proj.weight": _Mapping(
          layer + ("mlp", "down"), (d, f), transpose, transpose
        ),
        pre + "input_layernorm.weight": _Mapping(layer + ("attn_norm",), (d,), same, same),
        pre + "post_attention_layernorm.weight": _Mapping(layer + ("mlp_norm",), (d,), same, same),
      }
    )
  return table


def _value_head_map(cfg: LlamaConfig) -> dict[str, _Mapping]:
  d = cfg.hidden_size
  return {
    "score.weight": _Mapping(("value_head",), (1, d), lambda x: x.T, lambda x: x.T),
    "score.bias": _Mapping(("value_bias",), (1,), lambda x: x, lambda x: x),
  }


def _safetensor_files(folder: Path) -> list[Path]:
  index = folder / "model.safetensors.index.json"
  if index.exists():
    try:
      weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, AttributeError) as e:
      raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index}: expected a 'weight_map' object")
    files = []
    for name in sorted(set(map(str, weight_map.values()))):
      path = (folder / name).resolve()
      # an index names files of its own folder; "../x" or "/etc/x" would read anything
      if path.parent != folder.resolve() or not name.endswith(".safetensors"):
        raise CheckpointError(
          f"{index}: weight_map entry {name!r} is not a .safetensors file in the model folder"
        )
      if not path.is_file():
        raise CheckpointError(f"{index}: weight_map names {name!r}, which is not in {folder}")
      files.append(folder / name)
    return files
  single = folder / "model.safetensors"
  if single.exists():
    return [single]
  if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
    raise CheckpointError(
      f"{folder}: only pickle weights (*.bin/*.pt) found; glore-jax loads "
      "safetensors only. Convert with transformers' save_pretrained(safe_serialization=True)"
    )
  raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _iter_tensors(files: list[Path]) -> Iterator[tuple[str, Path, Callable[[], np.ndarray]]]:
  for path in files:
    try:
      handle = safe_open(str(path), framework="numpy")
    except Exception as e:
      raise CheckpointError(
        f"{path}: not a readable safetensors file (truncated or damaged?): {e}"
      ) from None
    with handle as f:
      for name in f.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
        yield name, path, lambda f=f, name=name, path=path: _read_tensor(f, name, path)


def _read_tensor(f, name: str, path: Path) -> np.ndarray:
  try:
    array = f.get_tensor(name)
  except Exception as e:
    raise CheckpointError(
      f"{path}: tensor {name!r} cannot be read (truncated or damaged?): {e}"
    ) from None
  from glore_jax.integrity import check_finite

  check_finite(array, f"{path}: tensor {name!r}")
  return array


def _get_path(state, path):
  node = state
  for key in path:
    node = node[key]
  return node


def _abstract(cfg: LlamaConfig) -> tuple[nnx.GraphDef, nnx.State]:
  abstract_model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
  return nnx.split(abstract_model)


def load_hf(
  path: str | Path,
  *,
  mesh: jax.sharding.Mesh | None = None,
  dtype: str | None = None,
  param_dtype: str | None = None,
  value_head: bool = False,
  vocab_size: int | None = None,
  seed: int = 0,
  **config_overrides,
) -> Llama:
  """Loads an HF Llama folder (config.json + safetensors) into a (sharded) `Llama`.

  `vocab_size` larger than the checkpoint's grows the embedding (and LM head) for added
  special tokens such as `[BAD]`; new rows start at the mean of the existing rows.
  With `value_head=True`, `value_head.safetensors` in the folder is loaded when present,
  otherwise the head starts from small random weights (seeded by `seed`).

  Args:
    path: the HF folder (config.json and model.safetensors or a sharded index).
    mesh: place the weights sharded over this mesh by the model's table; None: one device.
    dtype: the compute dtype (e.g. 'bfloat16'); None keeps float32.
    param_dtype: the dtype the weights are held in; None keeps float32.
    value_head: add the scalar value head (reward models).
    vocab_size: grow the embedding and LM head to this many rows; None keeps the checkpoint's.
    seed: seeds the new value head when the folder has none.
    **config_overrides: further `LlamaConfig` fields to set (e.g. `remat=True`).

  Returns:
    The model, on `mesh` when given.

  Raises:
    CheckpointError: a missing, truncated or mismatched file or tensor (named in the message),
      or a `vocab_size` below the checkpoint's.
  """
  folder = Path(path)
  cfg = LlamaConfig.from_hf(folder, value_head=value_head, **config_overrides)
  if dtype:
    cfg = cfg.replace(dtype=dtype)
  if param_dtype:
    cfg = cfg.replace(param_dtype=param_dtype)
  ckpt_vocab = cfg.vocab_size
  if vocab_size is not None and vocab_size < ckpt_vocab:
    raise CheckpointError(f"vocab_size={vocab_size} is smaller than the checkpoint's {ckpt_vocab}")
  if vocab_size:
    cfg = cfg.replace(vocab_size=vocab_size)
  files = _safetensor_files(folder)  # fail on a bad folder before any compute
  stored_dtype = jnp.dtype(cfg.param_dtype)  # a numpy dtype: the tensors are read as numpy

  graphdef, abstract_state = _abstract(cfg)
  shardings = None if mesh is None else tree_shardings(abstract_state, mesh)
  table = _tensor_map(cfg.replace(vocab_size=ckpt_vocab))
  head_table = _value_head_map(cfg)
  if value_head:
    table.update(head_table)
    if (folder / VALUE_HEAD_FILE).exists():  # written by glore-jax before the head moved
      files = files + [folder / VALUE_HEAD_FILE]

  names = {name for name, _, _ in _iter_tensors(files)}
  # A tied checkpoint may store the shared matrix under either name (safetensors' dedup
  # keeps one of them); read whichever is there as the embedding.
  tied_alias = (
    cfg.tie_word_embeddings
    and "lm_head.weight" in names
    and "model.embed_tokens.weight" not in names
  )
  loaded: dict[str, jax.Array] = {}
  for name, file, read in _iter_tensors(files):
    if file.name == VALUE_HEAD_FILE:
      name = _LEGACY_HEAD_NAMES.get(name, name)
    if name in head_table and not value_head:
      continue  # a reward model read as a plain LM
    if tied_alias and name == "lm_head.weight":
      name = "model.embed_tokens.weight"
    if name.endswith(_IGNORED_SUFFIXES) or (cfg.tie_word_embeddings and name == "lm_head.weight"):
      continue
    if name not in table:
      raise CheckpointError(f"{file}: unexpected tensor {name!r}; this Llama has no such parameter")
    spec = table[name]
    array = read()
    if tuple(array.shape) != spec.hf_shape:
      raise CheckpointError(
        f"{file}: tensor {name!r} has shape {tuple(array.shape)}, "
        f"expected {spec.hf_shape} from config.json"
      )
    array = spec.to_ours(array).astype(stored_dtype)
    if vocab_size and vocab_size > ckpt_vocab and spec.ours in (("embedding",), ("lm_head",)):
      array = _grow_vocab(array, vocab_size, axis=0 if spec.ours == ("embedding",) else 1)
    target = _get_path(abstract_state, spec.ours)
    if shardings is None:
      value = jnp.asarray(array)
    else:
      sharding = _get_path(shardings, spec.ours).get_value()
      value = jax.make_array_from_callback(array.shape, sharding, lambda idx, a=array: a[idx])
    assert value.shape == target.shape, (name, value.shape, target.shape)
    loaded[name] = value
    target.set_value(value)
  missing = sorted(set(table) - set(loaded) - set(head_table))  # a new head starts fresh
  if missing:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise CheckpointError(f"{folder}: missing tensors {shown}")
  if value_head and "score.weight" not in loaded:
    fresh = {
      ("value_head",): INIT_STD
      * jax.random.normal(jax.random.key(seed), (cfg.hidden_size, 1), jnp.float32).astype(
        stored_dtype
      ),
      ("value_bias",): jnp.zeros((1,), stored_dtype),
    }
    for ours, value in fresh.items():
      if shardings is not None:
        value = jax.device_put(value, _get_path(shardings, ours).get_value())
      _get_path(abstract_state, ours).set_value(value)
  log.info("loaded %s: %d tensors, %.1fM parameters", folder, len(loaded), cfg.num_params() / 1e6)
  return nnx.merge(graphdef, abstract_state)


def _grow_vocab(array: np.ndarray, vocab_size: int, axis: int) -> np.ndarray:
  extra = vocab_size - array.shape[axis]
  mean = array.mean(axis=axis, keepdims=True)
  return np.concatenate([array, np.repeat(mean, extra, axis=axis)], axis=axis)


def _host_array(value: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    value = multihost_utils.process_allgather(value, tiled=True)
  return np.asarray(jax.device_get(value))


def save_hf(model: Llama, path: str | Path) -> Path:
  """Writes an HF folder that `transformers.AutoModelForCausalLM.from_pretrained` loads; the
  value head (if any) goes into the same file as `score.weight` and `score.bias`, the names of
  `LlamaForTokenClassification`'s classifier, so `AutoModelForTokenClassification` loads it
  (one label) and returns our value logits. Only process 0 writes.

  Args:
    model: the model to write (its weights are gathered from every process).
    path: the folder to write config.json and model.safetensors into (created if missing).

  Returns:
    The folder.
  """
  folder = Path(path)
  cfg = model.cfg
  state = nnx.state(model)
  tensors = {
    name: spec.to_hf(_host_array(_get_path(state, spec.ours).get_value()))
    for name, spec in _tensor_map(cfg).items()
  }
  heads = {}
  if cfg.value_head:
    heads = {
      name: spec.to_hf(_host_array(_get_path(state, spec.ours).get_value()))
      for name, spec in _value_head_map(cfg).items()
    }
  if jax.process_index() != 0:
    return folder
  folder.mkdir(parents=True, exist_ok=True)
  save_file({**tensors, **heads}, str(folder / "model.safetensors"), metadata={"format": "pt"})
  hf_config = cfg.to_hf()
  if heads:
    hf_config.update(id2label={"0": "value"}, label2id={"value": 0})  # one logit per token
  (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
  return folder
