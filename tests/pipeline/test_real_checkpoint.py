"""A researcher's first run with their own checkpoint: SmolLM2-135M (a real Llama-architecture
model) as an HF folder whose tokenizer has NO pad token, like Llama-2's, on GSM8K problems.

policy (2 SFT steps) -> sample -> label -> train_orm through `python -m glore_jax.main` with
`model.checkpoint` set, then `evaluate` as an eval-only run given its reward models and refiners
through `config.inputs` (the ORM stands in for the SORM, the policy for both refiners: the
plumbing is under test, not the numbers). The second variant swaps in the Llama-2 tokenizer.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest

from .conftest import run_main

pytestmark = pytest.mark.slow  # a 135M-parameter model through every stage: minutes on 2 cores


def _strip_pad(folder: Path) -> None:
  """Removes every trace of a pad token from an HF folder (tokenizer and model config)."""
  config = json.loads((folder / "tokenizer_config.json").read_text())
  config.pop("pad_token", None)
  (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
  special = folder / "special_tokens_map.json"
  if special.exists():
    tokens = json.loads(special.read_text())
    tokens.pop("pad_token", None)
    special.write_text(json.dumps(tokens, indent=2))
  model_config = json.loads((folder / "config.json").read_text())
  model_config.pop("pad_token_id", None)
  (folder / "config.json").write_text(json.dumps(model_config, indent=2))


def _smollm2_without_pad(smollm2_hf_dir: Path, out: Path) -> Path:
  out.mkdir(parents=True)
  for f in smollm2_hf_dir.iterdir():
    if f.name == "model.safetensors":
      (out / f.name).symlink_to(f)  # 540 MB: read-only use
    elif f.is_file():
      shutil.copy(f, out / f.name)
  _strip_pad(out)
  return out


def _with_llama2_tokenizer(
  smollm2_hf_dir: Path, llama2_tokenizer: Path, out: Path, layers: int = 4
) -> Path:
  """SmolLM2's first `layers` layers under Llama-2's tokenizer (32,000 ids, all within SmolLM2's
  49,152 rows). What is under test is the tokenizer (SentencePiece pieces, no pad token, BOS 1,
  EOS 2) through every stage; such a model knows no Llama-2 token anyway, so it keeps only a few
  layers, which compile several times faster than 30."""
  from safetensors.numpy import load_file, save_file

  out.mkdir(parents=True)
  weights = load_file(str(smollm2_hf_dir / "model.safetensors"))
  kept = {
    name: array
    for name, array in weights.items()
    if not name.startswith("model.layers.") or int(name.split(".")[2]) < layers
  }
  save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(llama2_tokenizer / name, out / name)
  config = json.loads((smollm2_hf_dir / "config.json").read_text())
  config.update(
    bos_token_id=1,
    eos_token_id=2,  # Llama-2's <s> and </s>
    num_hidden_layers=layers,
  )
  (out / "config.json").write_text(json.dumps(config, indent=2))
  _strip_pad(out)
  return out


# Tiny step counts and few problems: every stage runs, nothing is trained to quality. One CPU
# device, as on a laptop: 8 simulated devices would each hold a replica (or, with FSDP, need
# batches of 8 rows), more memory than a shared 2-core test machine has.
COMMON = (
  "--config.data.source=gsm8k",
  "--config.data.train_size=16",
  "--config.data.test_size=2",
  "--config.data.max_length=192",
  "--config.policy.train.steps=2",
  "--config.policy.train.batch_size=2",
  "--config.policy.train.warmup_steps=0",
  "--config.policy.train.learning_rate=1e-5",
  "--config.policy.train.checkpoint_every=2",
  "--config.policy.train.eval_every=0",
  "--config.sample.num_questions=4",
  "--config.sample.num_samples=2",
  "--config.sample.max_new_tokens=32",
  "--config.sample.shard_size=4",
  "--config.sorm.num_rollouts=2",
  "--config.sorm.max_new_tokens=16",
  "--config.sorm.balance=False",
  "--config.reward.train.steps=2",
  "--config.reward.train.batch_size=2",
  "--config.reward.train.warmup_steps=0",
  "--config.reward.train.checkpoint_every=2",
  "--config.reward.train.eval_every=0",
  "--config.evaluate.num_questions=2",
  "--config.evaluate.max_new_tokens=24",
  "--config.evaluate.best_of=2",
  "--config.evaluate.bootstrap_resamples=20",
  "--config.evaluate.heldout_fraction=0.5",
  "--config.prompts.marker_as_token=False",  # the user's vocabulary stays as it is
)


def _run_pipeline(subprocess_env, checkpoint: Path, gsm8k: Path, workdir: Path) -> dict:
  subprocess_env = {**subprocess_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  start = time.perf_counter()
  train = run_main(
    subprocess_env,
    workdir,
    f"--config.model.checkpoint={checkpoint}",
    f"--config.data.path={gsm8k}",
    *COMMON,
    "--config.stages=policy,sample,label,train_orm",
    timeout=1500,
  )
  assert train.returncode == 0, f"{train.stdout[-3000:]}\n{train.stderr[-6000:]}"
  orm, policy = workdir / "orm" / "model", workdir / "policy" / "model"
  evaluate = run_main(
    subprocess_env,
    workdir,
    f"--config.model.checkpoint={checkpoint}",
    f"--config.data.path={gsm8k}",
    *COMMON,
    "--config.stages=evaluate",
    f"--config.inputs.sorm={orm}",
    f"--config.inputs.refiner_global={policy}",
    f"--config.inputs.refiner_local={policy}",
    timeout=1500,
  )
  assert evaluate.returncode == 0, f"{evaluate.stdout[-3000:]}\n{evaluate.stderr[-6000:]}"
  return {"train": train, "evaluate": evaluate, "seconds": time.perf_counter() - start}


def _check_outputs(workdir: Path, checkpoint: Path, runs: dict) -> None:
  from transformers import AutoTokenizer

  given = AutoTokenizer.from_pretrained(checkpoint)
  assert given.pad_token is None
  # Every saved model keeps the user's tokenizer: no pad token, no new token.
  for folder in ("policy/model", "orm/model"):
    saved = AutoTokenizer.from_pretrained(workdir / folder)
    assert saved.pad_token is None, folder
    assert len(saved) == len(given), folder
    assert saved.get_vocab() == given.get_vocab(), folder

  out = runs["train"].stdout
  policy_line = re.search(r"^\[policy\] .*train_loss[ =]([\d.,]+)", out, re.M)
  assert policy_line, out
  assert math.isfinite(float(policy_line.group(1).replace(",", "")))

  samples = [
    json.loads(line)
    for f in sorted((workdir / "sample").glob("shard-*.jsonl"))
    for line in f.read_text().splitlines()
  ]
  assert len(samples) == 4 * 2
  assert all(r["tokens"] and r["finish_reason"] in ("eos", "length", "stop") for r in samples)
  labels = [
    json.loads(line)
    for f in sorted((workdir / "label").glob("shard-*.jsonl"))
    for line in f.read_text().splitlines()
  ]
  assert len(labels) == len(samples)
  for r in labels:
    assert len(r["sorm_hard"]) == len(r["steps"])
    assert all(v in (0, 1) for v in r["sorm_hard"])
  assert (workdir / "orm" / "model" / "config.json").exists()

  results = json.loads((workdir / "evaluate" / "results.json").read_text())
  assert isinstance(results, dict) and results
  assert (workdir / "evaluate" / "candidates.json").exists()
  provenance = results["provenance"]
  assert provenance["inputs"]["model.checkpoint"] == str(checkpoint)
  assert provenance["inputs"]["inputs.sorm"] == str(workdir / "orm" / "model")
  assert provenance["config"]["model"]["checkpoint"] == str(checkpoint)
  assert re.search(r"^\[evaluate\] ", runs["evaluate"].stdout, re.M)


def _hf_value_diff(folder: Path, texts: list[str]) -> float:
  """Max |value logit| difference between our reward model and transformers'
  AutoModelForTokenClassification reading the same folder, over every real token of `texts`."""
  import jax.numpy as jnp
  import numpy as np
  import torch
  from transformers import AutoModelForTokenClassification, AutoTokenizer

  from glore_jax.data.tokenizer import padding_id
  from glore_jax.model import load_hf

  tokenizer = AutoTokenizer.from_pretrained(folder)
  ids = [tokenizer(t)["input_ids"] for t in texts]
  tokens = np.full((len(ids), max(map(len, ids))), padding_id(tokenizer), np.int32)
  mask = np.zeros_like(tokens)
  for i, row in enumerate(ids):
    tokens[i, : len(row)], mask[i, : len(row)] = row, 1
  ours = load_hf(folder, value_head=True)
  hidden, _ = ours.forward(jnp.asarray(tokens), attention_mask_bt=jnp.asarray(mask))
  expected = np.asarray(ours.values(hidden))
  hf = AutoModelForTokenClassification.from_pretrained(folder, num_labels=1).eval()
  with torch.no_grad():
    got = hf(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
  return float(np.abs(got[..., 0].float().numpy() - expected)[mask.astype(bool)].max())


def test_smollm2_without_pad_token_gsm8k(tmp_path, smollm2_hf_dir, shared_data, subprocess_env):
  checkpoint = _smollm2_without_pad(smollm2_hf_dir, tmp_path / "smollm2-no-pad")
  runs = _run_pipeline(subprocess_env, checkpoint, shared_data / "gsm8k", tmp_path / "run")
  _check_outputs(tmp_path / "run", checkpoint, runs)
  print(f"real-checkpoint pipeline (SmolLM2-135M, no pad token): {runs['seconds']:.0f} s")
  # the trained ORM, read by transformers as a token classifier, scores as ours does
  samples = [
    json.loads(line)
    for f in sorted((tmp_path / "run" / "sample").glob("shard-*.jsonl"))
    for line in f.read_text().splitlines()
  ]
  texts = [f"Question: {s['problem_id']}\nAnswer:\n{s['text']}" for s in samples[:4]]
  diff = _hf_value_diff(tmp_path / "run" / "orm" / "model", texts)
  print(f"ORM value logits, glore-jax vs AutoModelForTokenClassification: max |diff| {diff:.2e}")
  assert diff < 1e-3


def test_llama2_tokenizer_gsm8k(tmp_path, smollm2_hf_dir, shared_data, subprocess_env):
  tokenizer = shared_data / "tokenizers" / "llama2"
  if not (tokenizer / "tokenizer.json").exists():
    pytest.skip(f"no Llama-2 tokenizer at {tokenizer}")
  checkpoint = _with_llama2_tokenizer(smollm2_hf_dir, tokenizer, tmp_path / "llama2-tok")
  runs = _run_pipeline(subprocess_env, checkpoint, shared_data / "gsm8k", tmp_path / "run")
  _check_outputs(tmp_path / "run", checkpoint, runs)
  print(f"real-checkpoint pipeline (Llama-2 tokenizer): {runs['seconds']:.0f} s")
