"""glore_jax.aot: the runtime's programs compiled by the TPU compiler for real slice topologies,
on this CPU machine (the `tpu-aot` extra installs libtpu; skipped where it cannot install)."""

from __future__ import annotations

import pytest

from glore_jax import aot
from glore_jax.model.config import preset
from glore_jax.model.ops import select_ops

pytestmark = pytest.mark.skipif(
  not aot.available(),
  reason="libtpu is not installed (extra `tpu-aot`; Linux x86-64 only): "
  "no TPU compiler to compile for",
)


def _tiny(**changes):
  """A small Llama with TPU-friendly widths (every sharded dimension a multiple of the (8, 128)
  tiles on 8 devices, so the per-device sizes are the shapes' own, not tile padding)."""
  settings = dict(
    vocab_size=512,
    hidden_size=1024,
    intermediate_size=1024,
    num_heads=8,
    num_kv_heads=4,
    head_dim=128,
    dtype="bfloat16",
    param_dtype="float32",
    remat=True,
  )
  return preset("tiny", **{**settings, **changes})


@pytest.mark.parametrize(
  "name, chips, kind, hosts",
  [
    ("v4-8", 4, "TPU v4", 1),
    ("v4-32", 16, "TPU v4", 4),
    ("v5e-8", 8, "TPU v5 lite", 1),
    ("v5e-256", 256, "TPU v5 lite", 64),
    ("v5p-64", 32, "TPU v5", 8),
    ("v6e-8", 8, "TPU v6 lite", 1),
  ],
)
def test_named_slices_have_their_chips_and_hosts(name, chips, kind, hosts):
  devices = aot.devices(name)
  assert len(devices) == chips == aot.get_slice(name).chips
  assert {d.device_kind for d in devices} == {kind}
  assert len({d.process_index for d in devices}) == hosts
  assert aot.get_slice(name).chips_per_host * hosts == chips


def test_unknown_slice_is_named():
  with pytest.raises(ValueError, match="unknown TPU slice 'v9-8'.*v4-8"):
    aot.get_slice("v9-8")


def test_host_mesh_is_one_hosts_devices():
  mesh = aot.mesh("v4-32")
  host = aot.host_mesh("v4-32", mesh)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 16, "tensor": 1}
  assert dict(host.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
  assert {d.process_index for d in host.devices.flat} == {0}


def _check(program, mesh):
  assert program.argument > 0 and program.peak >= program.argument
  assert program.flops > 0 and program.bytes_accessed > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v5e-8", "v4-8"])
def test_train_steps_compile_for_tpu(name):
  """LM and value-head losses, bf16 compute over fp32 parameters, remat, fsdp over the slice.
  Per-device state is the sharded fp32 parameters plus two AdamW moments."""
  mesh = aot.mesh(name)
  cfg = _tiny()
  lm = aot.compile_train(cfg, mesh, batch=8, seq=128)  # 128 tokens: flash attention's tile
  value = aot.compile_train(cfg, mesh, batch=8, seq=128, loss="value")
  for p in (lm, value):
    _check(p, mesh)
  n = mesh.size
  # the LM loss trains everything but a value head: params + 2 moments, fp32, sharded n ways
  # (the norms' vectors are replicated, a fraction of a percent)
  assert lm.argument == pytest.approx(12 * cfg.num_params() / n, rel=0.02)
  # the state is donated: outputs alias the inputs
  assert lm.alias >= 0.9 * lm.argument


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v5e-8", "v4-8"])
def test_sampling_programs_compile_for_tpu(name):
  """Prefill, the label stage's prefix fan-out and the decode loop, on one host's mesh."""
  cfg = _tiny(param_dtype="bfloat16", remat=False)
  host = aot.host_mesh(name, aot.mesh(name))
  prefill = aot.compile_prefill(cfg, host, batch=8, seq=64)
  fanout = aot.compile_fanout(cfg, host, sequences=8, seq=64, rows=32, max_new_tokens=16)
  decode = aot.compile_decode(cfg, host, rows=32, cache=80, max_new_tokens=16)
  for p in (prefill, fanout, decode):
    _check(p, host)
  # the decode loop's cost is one step (XLA counts a while loop's body once): about
  # 2 flops per weight per row, split over the host's devices
  per_step = 2 * cfg.num_params(include_embedding=False) * 32 / host.size
  assert per_step < decode.flops < 20 * per_step
  # the cache (donated) is part of the arguments: rows x layers x 2 x K x H x slots, bf16
  cache = 32 * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 80 * 2 / host.size
  assert decode.argument > cache
  assert decode.alias >= cache


def test_target_platform_picks_the_tpu_program():
  """Built for TPU, the model keeps separate projections (fusing them is an XLA:CPU speed-up)
  and the greedy decode head is not laid out vocabulary-major."""
  from glore_jax import sampling

  cfg = aot.for_tpu(_tiny())
  assert cfg.target_platform == "tpu" and not select_ops(cfg).fused_projections
  assert not sampling.use_vocab_major(32, cfg.target_platform)
  assert sampling.use_vocab_major(32, "cpu")


@pytest.mark.parametrize(
  "pallas, seq, expected", [(None, 128, True), (False, 128, False), (None, 64, False)]
)
def test_tpu_train_step_runs_flash_attention(pallas, seq, expected):
  """Built for TPU, the training forward pass calls the Pallas flash-attention kernel (a Mosaic
  custom call in the lowered program) when its 128-token tiles cover the sequence."""
  import jax

  mesh = aot.mesh("v5e-8", 1, 4, 2)
  fn, args = aot.train_args(aot.for_tpu(_tiny(pallas_attention=pallas)), mesh, batch=8, seq=seq)
  with jax.set_mesh(mesh):
    text = fn.lower(*args).as_text()
  assert ("tpu_custom_call" in text) == expected


@pytest.mark.slow
def test_decode_loop_with_the_pallas_kernel_compiles_for_tpu():
  """The decode loop over a 512-slot cache on a (1, 4, 2) mesh of v5e chips: the ragged Pallas
  decode kernel (a Mosaic custom call) inside the while loop, compiled by the TPU compiler."""
  cfg = aot.for_tpu(_tiny(param_dtype="bfloat16", remat=False))
  mesh = aot.mesh("v5e-8", 1, 4, 2)
  decode = aot.compile_decode(cfg, mesh, rows=32, cache=512, max_new_tokens=64)
  _check(decode, mesh)
  xla = aot.compile_decode(
    cfg.replace(pallas_attention=False), mesh, rows=32, cache=512, max_new_tokens=64
  )
  # same cache and weights in HBM either way
  assert decode.argument == xla.argument
