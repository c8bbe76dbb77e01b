"""The sampler on a tiny random Llama: exactness against the full forward pass, determinism,
stop rules, fan-out (a) and (b), top-k/top-p support, sharding, bucketing and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glore_jax import sampling, sampling_text
from glore_jax.model import create_model, make_mesh, preset
from glore_jax.sampling import engine, rules

MAX_NEW = 12


def _sharpen(model, factor=6.0):
  """Random init gives near-uniform logits; a larger LM head makes distributions peaked, so
  sampled text has structure (repeats, EOS) and greedy choices have clear margins."""
  model.lm_head.set_value(model.lm_head[...] * factor)
  return model


# vocabulary = the embedded character tokenizer's 100 ids, so every id decodes; one config for
# every test keeps the number of compiled programs (the cost of this file) small
CFG = preset("tiny", vocab_size=100)
SAMPLED = dict(temperature=1.0, top_k=20)  # the one sampling rule most tests share


@pytest.fixture(scope="module")
def model():
  return _sharpen(create_model(CFG, seed=0))


@pytest.fixture(scope="module")
def text_model(model):
  return model


def _prompts(rng, lengths, vocab=100):
  return [[1] + rng.integers(4, vocab, size=n - 1).tolist() for n in lengths]


def _teacher_forced(model, prompt, tokens):
  """Logits of the full forward pass (no cache) over prompt + tokens, at the positions that
  predicted each new token."""
  seq = jnp.asarray([prompt + tokens])
  logits = model(seq)[0]
  return np.asarray(logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)])


def _teacher_forced_batch(model, prompts, outputs):
  """`_teacher_forced` for many rows in one (right-padded, causal) forward pass."""
  seqs = [p + t for p, t in zip(prompts, outputs)]
  width = max(map(len, seqs))
  logits = np.asarray(model(jnp.asarray([s + [0] * (width - len(s)) for s in seqs])))
  return [
    logits[i, len(p) - 1 : len(p) - 1 + len(t)] for i, (p, t) in enumerate(zip(prompts, outputs))
  ]


# 6 prompts decode as 8 rows (attention as batched dots, the vocabulary-major LM head on CPU),
# 3 as 4 rows (multiply-and-sum attention, the row-major head): both decode paths
@pytest.mark.parametrize("lengths", [[1, 3, 7, 16, 17, 30], [2, 9, 20]], ids=["8-rows", "4-rows"])
def test_greedy_equals_stepwise_argmax_of_full_forward(model, lengths):
  assert (len(lengths) > 4) == sampling.use_vocab_major(engine.pow2_bucket(len(lengths)))
  rng = np.random.default_rng(0)
  prompts = _prompts(rng, lengths)  # ragged, left-padded in one batch
  out = sampling.generate(model, prompts, max_new_tokens=MAX_NEW, eos_token_id=None)
  all_logits = _teacher_forced_batch(model, prompts, [r[0].tokens for r in out])
  for (sample,), logits in zip(out, all_logits):
    assert sample.finish_reason == "length" and len(sample.tokens) == MAX_NEW
    # each generated token is the argmax of the uncached forward at its position ...
    assert sample.tokens == np.argmax(logits, -1).tolist()
    # ... and its logprob is the model's log-softmax there
    expected = jax.nn.log_softmax(logits, -1)[np.arange(MAX_NEW), sample.tokens]
    np.testing.assert_allclose(sample.logprobs, expected, atol=2e-5)


def test_same_seed_same_samples_and_rows_do_not_depend_on_their_batch(model):
  rng = np.random.default_rng(1)
  prompts = _prompts(rng, [5, 9, 2, 12, 4])
  kw = dict(max_new_tokens=MAX_NEW, **SAMPLED, num_samples=3, seed=7, eos_token_id=None)
  a = sampling.generate(model, prompts, **kw)
  b = sampling.generate(model, prompts, **kw, batch_size=4)  # different batching
  assert [[s.tokens for s in row] for row in a] == [[s.tokens for s in row] for row in b]
  # one prompt alone, with its example id, gives the same three samples
  alone = sampling.generate(model, [prompts[3]], example_ids=[3], **kw)
  assert [s.tokens for s in alone[0]] == [s.tokens for s in a[3]]
  # the samples of one prompt differ from each other, and another seed changes them
  assert len({tuple(s.tokens) for s in a[3]}) > 1
  other = sampling.generate(model, prompts, **{**kw, "seed": 8})
  assert [[s.tokens for s in row] for row in other] != [[s.tokens for s in row] for row in a]


def test_stop_token_ids_and_eos_give_the_right_finish_reasons(model):
  prompt = _prompts(np.random.default_rng(2), [6])
  ((greedy,),) = sampling.generate(model, prompt, max_new_tokens=MAX_NEW, eos_token_id=None)
  g = greedy.tokens
  stop = g[4]
  cut = g.index(stop) + 1
  ((s,),) = sampling.generate(
    model, prompt, max_new_tokens=MAX_NEW, eos_token_id=None, stop_token_ids=[stop]
  )
  assert (s.tokens, s.finish_reason) == (g[:cut], "stop")
  assert s.logprobs == pytest.approx(greedy.logprobs[:cut], abs=1e-5)
  ((e,),) = sampling.generate(model, prompt, max_new_tokens=MAX_NEW, eos_token_id=stop)
  assert (e.tokens, e.finish_reason) == (g[:cut], "eos")
  # EOS wins over a stop id naming the same token; a budget of 1 token ends with 'length'
  ((s1,),) = sampling.generate(model, prompt, max_new_tokens=1, eos_token_id=None)
  assert (s1.tokens, s1.finish_reason) == (g[:1], "length")


def test_stop_strings_cut_exactly_at_the_first_occurrence(text_model):
  from glore_jax.data.tokenizer import embedded_tokenizer

  tok = embedded_tokenizer()
  prompts = ["Q: 12+30=?\nA:", "Tom has 3 apples"]
  kw = dict(max_new_tokens=MAX_NEW, eos_token_id=None, check_every=4)
  full = sampling_text.generate_text(text_model, tok, prompts, **kw)
  for i, row in enumerate(full):
    text, free = row[0].text, row[0].tokens
    assert row[0].finish_reason == "length" and len(free) == MAX_NEW
    assert text == tok.decode(free, skip_special_tokens=True)
    two = text[6:8]  # a two-token stop string, so the checker (not the loop) must catch it
    one = text[4]  # a one-token stop string: ends the row inside the decode loop
    for stops in ([two], [one], [two, one], ["@@never@@"]):
      hits = [(text.find(s), s) for s in stops if s in text]
      ((s,),) = sampling_text.generate_text(text_model, tok, [prompts[i]], stop_strings=stops, **kw)
      if not hits:
        assert (s.text, s.finish_reason) == (text, "length")
        continue
      # the occurrence completed first (smallest end, then smallest start) wins
      pos, first = min(hits, key=lambda h: (h[0] + len(h[1]), h[0]))
      assert s.text == text[:pos] and s.finish_reason == "stop"
      # tokens end with the token that completes the stop string; same prefix as the free run
      n = next(
        n for n in range(1, MAX_NEW + 1) if first in tok.decode(free[:n], skip_special_tokens=True)
      )
      assert s.tokens == free[:n]
      ((inc,),) = sampling_text.generate_text(
        text_model, tok, [prompts[i]], stop_strings=stops, include_stop_string=True, **kw
      )
      assert inc.text == text[: pos + len(first)]


def test_fanout_a_equals_separate_prefills(model):
  prompts = _prompts(np.random.default_rng(3), [3, 11])
  kw = dict(max_new_tokens=MAX_NEW, **SAMPLED, num_samples=4, seed=1, eos_token_id=None)
  shared = sampling.generate(model, prompts, **kw)
  naive = sampling.generate(model, prompts, share_prefill=False, **kw)
  for row_a, row_b in zip(shared, naive):
    assert [s.tokens for s in row_a] == [s.tokens for s in row_b]
    np.testing.assert_allclose([s.logprobs for s in row_a], [s.logprobs for s in row_b], atol=1e-5)


def test_fanout_b_rollouts_equal_independent_sampling_from_each_prefix(model):
  rng = np.random.default_rng(4)
  prompts = _prompts(rng, [5, 9])
  drafts = [rng.integers(4, 100, size=n).tolist() for n in (10, 14)]
  ends = [[0, 3, 9], [2, 6, 7, 12]]  # draft 1's last 1 token is never prefilled
  k = 3
  kw = dict(max_new_tokens=MAX_NEW, **SAMPLED, seed=5, eos_token_id=None)
  got = sampling.rollouts_from_prefixes_batch(
    model, prompts, drafts, ends, num_rollouts=k, example_ids=[(40,), (41,)], batch_size=8, **kw
  )
  for d in range(2):
    prefixes = [prompts[d] + drafts[d][: e + 1] for e in ends[d]]
    indep = sampling.generate(
      model, prefixes, num_samples=k, example_ids=[(40 + d, e) for e in ends[d]], **kw
    )
    assert [[s.tokens for s in row] for row in got[d].samples] == [
      [s.tokens for s in row] for row in indep
    ]
    for row_a, row_b in zip(got[d].samples, indep):
      np.testing.assert_allclose(
        [s.logprobs for s in row_a], [s.logprobs for s in row_b], atol=1e-4
      )
  # counts: one prefill of prompt + draft up to the last prefix vs one per prefix
  assert got[0].prefill_tokens == 5 + 10
  assert got[0].naive_prefill_tokens == (5 + 1) + (5 + 4) + (5 + 10)
  assert got[1].prefill_tokens == 9 + 13
  assert got[1].naive_per_rollout_tokens == k * sum(9 + e + 1 for e in ends[1])
  assert got[1].prefill_saved == got[1].naive_prefill_tokens - got[1].prefill_tokens
  # the single-draft form is the same computation
  one = sampling.rollouts_from_prefixes(
    model, prompts[1], drafts[1], ends[1], num_rollouts=k, example_id=41, **kw
  )
  assert [[s.tokens for s in row] for row in one.samples] == [
    [s.tokens for s in row] for row in got[1].samples
  ]


def _allowed_draws(logits, params, n=512):
  keys = jax.random.split(jax.random.key(0), n)
  tokens, _ = jax.jit(sampling.sample_logits, static_argnums=2)(
    keys, jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits))), params
  )
  return set(np.asarray(tokens).tolist())


def test_top_k_and_top_p_never_draw_outside_the_allowed_set():
  probs = np.array([0.05, 0.5, 0.01, 0.3, 0.02, 0.12])  # order: 1, 3, 5, 0, 4, 2
  logits = np.log(probs)
  P = sampling.SamplingParams
  assert _allowed_draws(logits, P(1.0, top_k=2)) == {1, 3}
  assert _allowed_draws(logits, P(1.0, top_k=3)) == {1, 3, 5}
  assert _allowed_draws(logits, P(1.0, top_p=0.45)) == {1}  # 0.5 alone reaches 0.45
  assert _allowed_draws(logits, P(1.0, top_p=0.75)) == {1, 3}
  assert _allowed_draws(logits, P(1.0, top_p=0.85)) == {1, 3, 5}
  assert _allowed_draws(logits, P(1.0, top_k=2, top_p=0.99)) == {1, 3}
  assert _allowed_draws(logits, P(3.0, top_k=4, top_p=0.6)) <= {1, 3, 5}  # hot, still filtered
  assert _allowed_draws(logits, P(1.0)) == set(range(6))


# a few static rule sets (each compiles once) against arbitrary distributions
RULE_SETS = [(1.0, 5, 1.0), (0.7, 31, 0.6), (2.0, 32, 0.3), (1.0, 0, 0.9)]


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(RULE_SETS), st.integers(0, 2**31 - 1), st.floats(0.5, 6.0))
def test_top_k_top_p_property(rules, seed, scale):
  temperature, top_k, top_p = rules
  top_k = top_k or 32
  logits = np.random.default_rng(seed).normal(size=32) * scale
  drawn = _allowed_draws(logits, sampling.SamplingParams(*rules), n=64)
  order = np.argsort(-logits)
  assert drawn <= set(order[:top_k].tolist())
  probs = np.exp((logits - logits.max()) / temperature)
  probs = probs[order[:top_k]] / probs[order[:top_k]].sum()
  kept = int(np.sum(np.cumsum(probs) - probs < top_p - 1e-6)) + 1  # slack for fp rounding
  assert drawn <= set(order[:kept].tolist())


def test_vocabulary_major_greedy_equals_sample_logits():
  rng = np.random.default_rng(11)
  logits_rv = rng.normal(size=(8, 50)).astype(np.float32) * 4
  logits_rv[1, [7, 30]] = logits_rv[1].max() + 1.0  # a tie: the first index wins
  logits_rv[2, :] = logits_rv[2, 0]  # all equal
  logits_rv[3, 5] = np.nan  # NaN row: still a valid id
  keys = jax.random.split(jax.random.key(0), 8)
  tokens, logprobs = sampling.sample_logits(
    keys, jnp.asarray(logits_rv), sampling.SamplingParams(0.0)
  )
  tokens_vm, logprobs_vm = rules.greedy_vocab_major(jnp.asarray(logits_rv.T))
  assert np.asarray(tokens_vm).tolist() == np.asarray(tokens).tolist()
  assert (
    np.asarray(tokens)[1] == 7 and np.asarray(tokens)[2] == 0 and 0 <= np.asarray(tokens)[3] < 50
  )
  np.testing.assert_allclose(logprobs_vm, logprobs, atol=1e-6)
  finite = [0, 1, 2, 4, 5, 6, 7]
  expected = jax.nn.log_softmax(logits_rv[finite], -1)[np.arange(7), np.asarray(tokens)[finite]]
  np.testing.assert_allclose(np.asarray(logprobs_vm)[finite], expected, atol=1e-5)


def test_top_k_1_sampling_is_greedy(model):
  prompts = _prompts(np.random.default_rng(5), [4, 8])
  g = sampling.generate(model, prompts, max_new_tokens=MAX_NEW, eos_token_id=None)
  s = sampling.generate(
    model, prompts, max_new_tokens=MAX_NEW, eos_token_id=None, temperature=1.3, top_k=1, seed=3
  )  # (top_k=1 is its own program)
  assert [r[0].tokens for r in g] == [r[0].tokens for r in s]


def test_sharded_on_8_devices_equals_unsharded():
  assert len(jax.devices()) == 8
  plain = _sharpen(create_model(CFG, seed=2))
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  sharded = _sharpen(create_model(CFG, seed=2, mesh=mesh))
  prompts = _prompts(np.random.default_rng(6), [3, 9, 5])
  for kw in (dict(**SAMPLED, top_p=0.9, num_samples=3, seed=4),):
    a = sampling.generate(plain, prompts, max_new_tokens=MAX_NEW, eos_token_id=None, **kw)
    with jax.set_mesh(mesh):
      b = sampling.generate(
        sharded, prompts, max_new_tokens=MAX_NEW, eos_token_id=None, mesh=mesh, **kw
      )
    assert [[s.tokens for s in r] for r in a] == [[s.tokens for s in r] for r in b]
    np.testing.assert_allclose(
      [[s.logprobs for s in r] for r in a], [[s.logprobs for s in r] for r in b], atol=1e-4
    )


def test_buckets_reuse_compiled_programs(model):
  rng = np.random.default_rng(7)
  kw = dict(max_new_tokens=MAX_NEW, eos_token_id=None)
  sizes = lambda: (
    sampling.prefill_program._cache_size(),
    sampling.start_program._cache_size(),
    sampling.decode_program._cache_size(),
  )
  before = sizes()
  # length bucket 16, 3-4 rows -> 4: 64 slots. The prefill also buckets how many prompt tokens
  # it computes (packing, counting a dummy row's one pad token) at 32, 48 or all 64 of them:
  # at most 3 prefill programs for the bucket, one start and one decode program
  for lengths in ([3, 5, 9], [16, 2, 11, 4], [16, 16, 16, 16]):  # 18 -> 32, 33 -> 48, 64 -> 64
    sampling.generate(model, _prompts(rng, lengths), **kw)
  warm = sizes()
  assert warm[0] - before[0] <= 3 and warm[1] - before[1] <= 1 and warm[2] - before[2] <= 1
  for lengths in ([7, 13, 1], [2, 16, 16], [9, 12, 14, 16]):  # 22 -> 32, 35 -> 48, 51 -> 64
    sampling.generate(model, _prompts(rng, lengths), **kw)
  assert sizes() == warm


def test_prompt_too_long_is_a_clear_error(model):
  ctx = model.cfg.max_position_embeddings
  with pytest.raises(
    sampling.PromptTooLongError,
    match=rf"prompt 1 has {ctx - 5} tokens.*"
    rf"max_new_tokens=10.*at most {ctx - 10} tokens",
  ):
    sampling.generate(model, [[1, 2], [1] * (ctx - 5)], max_new_tokens=10)
  with pytest.raises(sampling.PromptTooLongError, match="draft 0 prefix 1"):
    sampling.rollouts_from_prefixes(
      model, [1] * (ctx - 12), [5] * 8, [0, 7], num_rollouts=2, max_new_tokens=10
    )
  with pytest.raises(ValueError, match="empty"):
    sampling.generate(model, [[]], max_new_tokens=4)
  with pytest.raises(ValueError, match="outside the draft"):
    sampling.rollouts_from_prefixes(model, [1, 2], [5, 6], [2], num_rollouts=2, max_new_tokens=4)


def test_sampler_options_hold_the_defaults_and_reject_bad_options(model):
  import dataclasses
  import inspect

  # generate's keyword defaults are SamplerOptions' (one home for every default)
  signature = inspect.signature(sampling.generate).parameters
  for field in dataclasses.fields(sampling.SamplerOptions):
    if field.name != "max_new_tokens":
      assert signature[field.name].default == field.default, field.name
  options = sampling.SamplerOptions(max_new_tokens=4, stop_token_ids=iter([7, 3]))
  assert options.stop_token_ids == (7, 3) and options.params == sampling.SamplingParams()
  for bad, match in [
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(max_new_tokens=4, batch_size=0), "batch_size=0"),
    (dict(max_new_tokens=4, temperature=-1.0), "temperature=-1.0"),
  ]:
    with pytest.raises(ValueError, match=match):
      sampling.SamplerOptions(**bad)
  with pytest.raises(
    TypeError, match=r"unexpected sampling options \['temprature'\].*'temperature'"
  ):
    sampling.rollouts_from_prefixes(
      model, [1, 2], [5, 6], [1], num_rollouts=2, max_new_tokens=4, temprature=1.0
    )


def test_decode_state_is_a_pytree_with_named_fields():
  leaves = [
    np.zeros((2, 3), np.int32),
    np.zeros((2, 3), np.float32),
    np.zeros(2, np.int32),
    np.ones(2, np.int32),
    np.int32(1),
  ]
  state = sampling.DecodeState(*leaves)
  assert [x is y for x, y in zip(jax.tree.leaves(state), leaves, strict=True)] == [True] * 5
  doubled = jax.tree.map(lambda x: x * 2, state)
  assert isinstance(doubled, sampling.DecodeState) and doubled.step == 2
  assert doubled.replace(step=np.int32(5)).step == 5 and doubled.last_r.tolist() == [2, 2]
