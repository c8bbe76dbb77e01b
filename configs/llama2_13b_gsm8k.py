"""The paper's headline setting: Llama-2 13B on GSM8K (TPU v4-64 / v5p-64 or larger).

  python -m glore_jax.main --config=configs/llama2_13b_gsm8k.py --workdir=gs://BUCKET/glore-13b \
      --config.model.checkpoint=/path/to/Llama-2-13b-hf --config.data.path=/path/to/gsm8k
"""

from glore_jax.configs import llama2_7b_gsm8k as _seven


def get_config():
  c = _seven.get_config("13b")
  c.sorm.batch_size = 512
  c.sample.batch_size = 256
  return c
