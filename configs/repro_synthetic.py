"""Our small-scale reproduction of the paper's claims: the demo's synthetic task and model, with
more questions, samples and rollouts (K=8 as in the paper) and a larger test set, so the
answers table has tighter intervals. About 25 minutes on a 2-core CPU.

  python -m glore_jax.main --config=configs/repro_synthetic.py --workdir=/tmp/glore-repro

Its tables are in README.md ("Reproducing the paper's claims at small scale").
"""

from glore_jax.configs import demo as _demo


def get_config():
  c = _demo.get_config()
  c.data.update(train_size=4000, test_size=500)
  c.sample.update(num_samples=8, num_questions=800, shard_size=100)
  c.sorm.update(num_rollouts=8, shard_size=200)
  c.reward.train.update(steps=1000, max_epochs=5.0, eval_every=500, checkpoint_every=250)
  c.refine.train.update(steps=800, max_epochs=6.0, eval_every=400, checkpoint_every=200)
  c.evaluate.update(num_questions=500, heldout_fraction=0.1)
  return c
