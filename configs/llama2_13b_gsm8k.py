"""The paper's headline setting: Llama-2 13B on GSM8K, sized for a TPU v5p-64 slice (32 chips
of 95 GiB, 8 hosts).

  python -m glore_jax.main --config=configs/llama2_13b_gsm8k.py --workdir=gs://BUCKET/glore-13b \
      --config.model.checkpoint=/path/to/Llama-2-13b-hf --config.data.path=/path/to/gsm8k

Batch sizes come from the TPU compiler's memory plan for that slice (README, "Memory plan"):

  python -m glore_jax.plan --config=configs/llama2_13b_gsm8k.py --slice=v5p-64 --layers=1,2
"""

from glore_jax.configs import llama2_7b_gsm8k as _seven

SLICE = "v5p-64"  # the slice these sizes are planned for (tests/scale/test_paper_configs.py)


def get_config():
  c = _seven.get_config("13b")
  c.sample.batch_size = 256  # decode rows per 4-chip host
  c.sorm.batch_size = 128  # 256 rows of a 768-slot cache need 90.6 GiB a chip: no
  c.evaluate.batch_size = 128
  return c
