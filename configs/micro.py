"""A minutes-long smoke run of every stage (CI, the Colab notebook on CPU): an easy synthetic
task and a very small model. Its numbers mean little; it proves the plumbing end to end."""

from glore_jax.defaults import get_config as base


def get_config():
  c = base()
  c.model.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1)
  c.data.update(train_size=200, test_size=12)
  c.data.synthetic.update(min_steps=1, max_steps=2, max_operand=9, max_multiplier=3, max_value=99)
  c.policy.train.update(
    steps=60, batch_size=16, learning_rate=1e-2, warmup_steps=5, checkpoint_every=30, eval_every=0
  )
  for section in (c.reward, c.refine):
    section.train.update(steps=4, batch_size=8, warmup_steps=1, checkpoint_every=2, eval_every=0)
  c.sample.update(num_samples=2, num_questions=24, shard_size=8, max_new_tokens=64, batch_size=64)
  c.sorm.update(
    num_rollouts=2, shard_size=16, max_new_tokens=64, batch_size=128, balance=False
  )  # an untrained policy gets one-class labels
  c.evaluate.update(
    num_questions=12,
    max_new_tokens=64,
    batch_size=64,
    bootstrap_resamples=100,
    heldout_fraction=0.25,
  )
  return c
