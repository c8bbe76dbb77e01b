"""The paper's setting with Llama-2 7B on GSM8K, sized for a TPU v4-32 slice (16 chips of
32 GiB, 4 hosts).

  python -m glore_jax.main --config=configs/llama2_7b_gsm8k.py --workdir=gs://BUCKET/glore-7b \
      --config.model.checkpoint=/path/to/Llama-2-7b-hf --config.data.path=/path/to/gsm8k

model.checkpoint is an HF folder (config.json + safetensors); the tokenizer is read from it.
Batch sizes come from the TPU compiler's memory plan for that slice (README, "Memory plan"):

  python -m glore_jax.plan --config=configs/llama2_7b_gsm8k.py --slice=v4-32 --layers=1,2

Sampling stages (sample, label, evaluate) run on each 4-chip host alone, with the policy's
fp32 weights; their batch_size is decode rows per host (the KV cache is most of their memory).
"""

from glore_jax.defaults import get_config as base

SLICE = "v4-32"  # the slice these sizes are planned for (tests/scale/test_paper_configs.py)


def get_config(size: str = "7b"):
  c = base()
  c.model.checkpoint = f"/path/to/Llama-2-{size}-hf"  # override on the command line
  c.model.preset = f"llama2-{size}"  # the checkpoint's architecture (what the memory plan compiles)
  c.model.update(dtype="bfloat16", param_dtype="float32", remat=True)
  c.mesh.update(data=1, fsdp=-1, tensor=1)  # FSDP over the whole slice
  c.data.update(
    source="gsm8k", path="/path/to/gsm8k", train_size=7473, test_size=1319, max_length=512
  )
  c.policy.train.update(
    steps=2000,
    batch_size=128,
    learning_rate=2e-5,
    warmup_steps=100,
    checkpoint_every=250,
    eval_every=250,
  )
  c.sample.update(
    num_samples=16,
    temperature=1.0,
    max_new_tokens=256,
    batch_size=128,
    num_questions=7473,
    shard_size=256,
  )
  c.sorm.update(num_rollouts=8, temperature=1.0, max_new_tokens=256, batch_size=128, shard_size=128)
  for section in (c.reward, c.refine):
    section.train.update(
      steps=2000,
      batch_size=128,
      learning_rate=1e-5,
      warmup_steps=100,
      checkpoint_every=250,
      eval_every=250,
    )
  c.evaluate.update(
    num_questions=1319, temperature=1.0, max_new_tokens=256, batch_size=128, heldout_fraction=0.05
  )
  return c
