"""Shared defaults for every stage (`configs/base.py` re-exports them). A stage config starts
from `get_config()`, sets `stages` and overrides what it needs; the command line overrides any
key:

  python -m glore_jax.main --config=configs/sorm.py --workdir=DIR --config.sorm.num_rollouts=16
"""

import ml_collections

from glore_jax.config_check import STAGES


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Comma-separated, run in this order; each skips work already finished in the workdir.
  c.stages = ",".join(STAGES)
  # Comma-separated stages whose outputs may be discarded and computed again when they are
  # stale (computed under another config) or damaged; without it such outputs stop the run.
  c.recompute = ""
  c.seed = 0

  # Devices: sizes of the ('data', 'fsdp', 'tensor') mesh; -1 takes the remaining devices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Multi-host: left empty, TPU VM workers are detected; set all three for explicit clusters.
  c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0,
                                                 process_id=-1))

  # The policy model: a preset trained from scratch, or an HF Llama folder to fine-tune.
  c.model = ml_collections.ConfigDict(dict(
      checkpoint="",  # HF folder (config.json + safetensors); empty: `preset` from scratch
      preset="tiny",
      hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2,
      max_position_embeddings=512,
      dtype="float32", param_dtype="float32", remat=False,
  ))
  # Model folders given from outside (HF folders, local or gs://): each replaces the work
  # directory's own output of that stage, which then is not trained (an eval-only run takes
  # orm, sorm and the refiners; `policy` also replaces model.checkpoint's SFT).
  c.inputs = ml_collections.ConfigDict(dict(policy="", orm="", sorm="", refiner_global="",
                                            refiner_local=""))
  # Optional trackers fed by the trainer's metrics (glore_jax/tracking.py; the `wandb` extra).
  c.tracking = ml_collections.ConfigDict(dict(wandb=False, wandb_project="glore-jax",
                                              wandb_entity="", wandb_group=""))
  # "embedded-bpe" (byte-level BPE trained on the synthetic task, offline), "embedded"
  # (characters), or a tokenizer folder / tokenizer.json; ignored with model.checkpoint.
  c.tokenizer = "embedded-bpe"

  # Problems: the embedded synthetic task, GSM8K JSONL files, or GSM8K from TFDS.
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic",  # synthetic | gsm8k | gsm8k_tfds
      path="",  # gsm8k: folder with train.jsonl/test.jsonl; gsm8k_tfds: TFDS data_dir
      train_size=2000, test_size=200, on_error="raise",  # or "skip" (counted, logged)
      synthetic=ml_collections.ConfigDict(dict(min_steps=2, max_steps=4, max_operand=30,
                                               max_multiplier=9, max_value=999, distractors=0)),
      max_length=256,  # tokens of prompt + solution; longer examples drop whole trailing steps
      bucket_multiple=0,  # pad training batches to a multiple of this; 0 = powers of two
  ))
  c.prompts = ml_collections.ConfigDict(dict(
      policy="Question: {question}\nAnswer:\n",
      reward="Question: {question}\nAnswer:\n",
      global_refine="Question: {question}\nDraft:\n{draft}\nImproved answer:\n",
      local_refine="Question: {question}\nDraft:\n{draft}\nImproved answer from {marker}:\n",
      marker="[BAD]",
      marker_as_token=True,  # add the marker to the tokenizer as one token (grows the embedding)
  ))

  def train(**kw):
    t = ml_collections.ConfigDict(dict(
        steps=600, batch_size=32, learning_rate=3e-3, warmup_steps=50, weight_decay=0.01,
        grad_clip=1.0, grad_accum=1, checkpoint_every=200, keep_last=2, eval_every=200,
        max_epochs=0.0,  # > 0: stop after this many passes over the data, if before `steps`
    ))
    t.update(kw)
    return t

  c.policy = ml_collections.ConfigDict(dict(train=train()))
  c.sample = ml_collections.ConfigDict(dict(
      num_samples=4, temperature=0.8, top_k=0, top_p=1.0, max_new_tokens=160, batch_size=256,
      num_questions=500, shard_size=100))
  c.sorm = ml_collections.ConfigDict(dict(
      num_rollouts=4, temperature=0.8, max_new_tokens=160, batch_size=256, shard_size=25,
      consistency=True, propagate_positive=True, balance=True,
      # "exhaustive": K rollouts from every prefix; "first_error_search": K rollouts only from
      # the prefixes a binary search for the first negative one picks (glore_jax.method.
      # first_error_search), the other labels filled by monotonicity (needs propagate_positive).
      labeling="exhaustive",
      search_strategy="bisect"))  # first_error_search: "bisect" or "gallop" (from prefix 0)
  c.reward = ml_collections.ConfigDict(dict(
      train=train(steps=300, learning_rate=1e-3, warmup_steps=30, max_epochs=3.0),
      train_backbone=True,
      orm_rollouts=False,
      truth_labels=False,  # diagnostic (synthetic task only): SORM trained on ground-truth steps  # also train the ORM on the label stage's rollouts (prefix + continuation)
      targets="hard"))  # hard | soft (fraction of rollouts that succeeded)
  c.refine = ml_collections.ConfigDict(dict(
      train=train(steps=300, learning_rate=1e-3, warmup_steps=30, max_epochs=4.0),
      max_pairs_per_question=2,
      correct_draft_pairs=0,  # > 0: also train G on right -> right pairs (keep right drafts)
      max_length=384))  # question + draft + target: longer than a policy example
  c.evaluate = ml_collections.ConfigDict(dict(
      num_questions=200,
      threshold=0.5,  # ORM gate: refine only drafts the ORM scores below this
      where_threshold=0.5,  # SORM: the first step scored below this is where to refine
      tune_where_threshold=False,  # choose it on held-out training questions' rollout labels
      keep_confident_answer=False,  # don't refine when only the answer line is flagged and ORM(D) >= threshold
      rollout_labels=True,  # K rollouts per prefix of test solutions, for the step-level table
      best_of=3, temperature=0.8, max_new_tokens=160,
      batch_size=256, bootstrap_resamples=1000, heldout_fraction=0.2))
  return c
