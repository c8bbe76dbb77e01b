"""Bad checkpoints and unsupported configs fail early with errors that name the problem."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from glore_jax.model import CheckpointError, LlamaConfig, UnsupportedConfigError, load_hf

pytest.importorskip("torch")
from tests.model.hf_reference import make_hf_llama


@pytest.fixture
def folder(tmp_path):
  make_hf_llama(tmp_path)
  return tmp_path


def _edit_tensors(folder, fn):
  tensors = load_file(str(folder / "model.safetensors"))
  fn(tensors)
  save_file(tensors, str(folder / "model.safetensors"))


def test_missing_tensor_is_named(folder):
  _edit_tensors(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(
    CheckpointError, match=r"missing tensors model\.layers\.1\.mlp\.up_proj\.weight"
  ):
    load_hf(folder)


def test_unexpected_tensor_is_named(folder):
  _edit_tensors(
    folder, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
  )
  with pytest.raises(
    CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'"
  ):
    load_hf(folder)


def test_wrong_shape_names_tensor_and_both_shapes(folder):
  _edit_tensors(folder, lambda t: t.update({"model.norm.weight": np.ones(63, np.float32)}))
  with pytest.raises(
    CheckpointError, match=r"'model\.norm\.weight' has shape \(63,\), expected \(64,\)"
  ):
    load_hf(folder)


@pytest.mark.parametrize(
  "change, message",
  [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type='yarn'"),
    (
      {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}},
      "rope_parameters.rope_type='llama3'",
    ),
    ({"attention_bias": True}, "attention_bias=true is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"model_type": "mistral"}, "model_type='mistral'"),
  ],
)
def test_unsupported_config_features_fail_before_compute(folder, change, message):
  config = json.loads((folder / "config.json").read_text())
  config.update(change)
  (folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(UnsupportedConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
    load_hf(folder)


def test_pickle_only_checkpoint_is_refused(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(LlamaConfig(64, 32, 64, 1, 4, 4).to_hf()))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
  with pytest.raises(CheckpointError, match="safetensors only"):
    load_hf(tmp_path)


def test_grown_vocab_keeps_old_rows_and_adds_mean_rows(folder):
  base = load_hf(folder)
  grown = load_hf(folder, vocab_size=130)
  old = np.asarray(base.embedding[...])
  new = np.asarray(grown.embedding[...])
  assert new.shape == (130, 64) and np.array_equal(new[:128], old)
  np.testing.assert_allclose(new[128], old.mean(0), rtol=1e-6)
  assert grown.lm_head[...].shape == (64, 130)
