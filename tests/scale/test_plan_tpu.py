"""glore_jax.plan with the TPU compiler: a config's stages as programs, fits per stage, batch
recommendations, the label stage's prefix sharing on paper, roofline throughput."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glore_jax import aot, plan

GiB = plan.GiB
REPO = Path(__file__).resolve().parents[2]
needs_libtpu = pytest.mark.skipif(
  not aot.available(),
  reason="libtpu is not installed (extra `tpu-aot`; Linux x86-64 only): no TPU compiler",
)


def test_stage_shapes_follow_the_config():
  """The shapes the runtime builds from configs/micro.py: power-of-two rows and buckets, one
  prefill row per K samples, drafts carried in the label and evaluate prompts."""
  config = plan.load_config(str(REPO / "configs" / "micro.py"))
  shapes = {
    (s, p): (host, shape, size)
    for s, p, host, shape, size in plan.stage_shapes(config, prompt_tokens=100)
  }
  host, shape, size = shapes[("policy", "train_lm")]
  assert not host and shape == {"batch": 16, "seq": 256, "grad_accum": 1} and size == 16
  assert shapes[("sample", "prefill")][1] == {"batch": 32, "seq": 128}  # 64 rows / 2 samples
  host, shape, size = shapes[("label", "decode")]
  assert host and size == 128
  assert shape == {"rows": 128, "cache": 256 + 64, "max_new_tokens": 64, "temperature": 0.8}
  assert shapes[("label", "fanout")][1]["sequences"] == 64  # >= 2 rollouts per draft
  assert shapes[("evaluate", "prefill")][1] == {"batch": 64, "seq": 256}
  assert shapes[("train_orm", "train_value")][1]["seq"] == 256
  assert shapes[("train_global", "train_lm")][1]["seq"] == 512  # refine.max_length 384


def test_batch_multiplier_is_the_largest_power_of_two_that_fits():
  # 2 GiB fixed + 8 GiB for the batch (6 GiB at half of it); 16 GiB chips, 90%: 14.4 GiB
  assert plan.batch_multiplier(10 * GiB, 6 * GiB, 16 * GiB) == 1.0  # 2 + 16 > 14.4
  assert plan.batch_multiplier(4 * GiB, 3 * GiB, 16 * GiB) == 4.0  # 2 + 2 * 4 <= 14.4
  assert plan.batch_multiplier(20 * GiB, 19 * GiB, 16 * GiB) is None


def test_prefix_sharing_on_paper_at_7b():
  """Llama-2 7B, bf16 cache: 32 layers x (K, V) x 32 heads x 128 x 2 bytes = 512 KiB a slot.
  A label row of a 512-slot prefix and 256 new tokens holds 384 MiB, 256 of them the prefix's
  copy; 8 rollouts sharing one copy need 128 + 256 / 8 = 160 MiB a row."""
  cfg = plan.model_config("llama2-7b")
  mib = 1024**2
  s = plan.prefix_sharing(
    cfg,
    prefix_slots=512,
    new_tokens=256,
    rollouts=8,
    peak=20 * GiB,
    rows=32,
    host_chips=4,
    hbm=32 * GiB,
  )
  assert s["cache_bytes_per_row"] == 384 * mib
  assert s["prefix_bytes_per_row"] == 256 * mib
  assert s["shared_cache_bytes_per_row"] == 160 * mib
  # 20 GiB peak at 8 rows a chip: 17 GiB besides the cache; 4 x (28.8 - 17) GiB for rows
  assert s["rows_per_host_copied"] == pytest.approx(4 * 11.8 * 1024 / 384)
  assert s["rows_per_host_shared"] / s["rows_per_host_copied"] == pytest.approx(384 / 160)


def test_model_flops_per_token():
  cfg = plan.model_config("llama2-7b")
  n = cfg.num_params(include_embedding=False) + cfg.vocab_size * cfg.hidden_size
  assert plan.model_flops_per_token(cfg, 512) == 6 * n + 6 * 32 * 512 * 4096


def test_config_without_slice_is_refused(capsys):
  with pytest.raises(SystemExit):
    plan.main(["--config=configs/micro.py"])
  assert "--config needs --slice" in capsys.readouterr().err


@needs_libtpu
@pytest.mark.slow
def test_config_plan_from_the_tpu_compiler(tmp_path):
  """`--config --slice`: the label stage of configs/micro.py compiled for v5e-8, per program
  fits / roofline / tokens per second, the prefix-sharing figures, exit status 0 (fits)."""
  out = tmp_path / "plan.json"
  assert (
    plan.main(["--config=configs/micro.py", "--slice=v5e-8", "--stages=label", f"--json={out}"])
    == 0
  )
  p = json.loads(out.read_text())
  assert [x["program"] for x in p["programs"]] == ["prefill", "fanout", "decode"]
  assert all(x["fits"] and x["result"]["roofline_s"] > 0 for x in p["programs"])
  decode = p["programs"][-1]
  assert decode["result"]["tokens_per_s_per_chip"] > 0
  share = p["label_prefix_sharing"]
  assert share["rows_per_host_shared"] > share["rows_per_host_copied"] > 0


def test_merge_plans_of_disjoint_stages():
  base = {
    "slice": "v4-32",
    "model": 1,
    "num_layers": 2,
    "global_mesh": {},
    "host_mesh": {},
    "prompt_tokens": 256,
  }
  a = {**base, "programs": [{"stage": "policy"}], "compile_s": 1.0}
  b = {
    **base,
    "programs": [{"stage": "label"}],
    "compile_s": 2.0,
    "label_prefix_sharing": {"rollouts": 8},
  }
  merged = plan.merge_plans([a, b])
  assert [p["stage"] for p in merged["programs"]] == ["policy", "label"]
  assert merged["compile_s"] == 3.0 and merged["label_prefix_sharing"] == {"rollouts": 8}
  with pytest.raises(ValueError, match="different slice"):
    plan.merge_plans([a, {**b, "slice": "v5e-8"}])


def test_throughput_from_the_models_flops_when_the_compiler_counts_fewer():
  """A train step whose counted flops are below 6 N per token (multi-host slices, a depth
  extrapolation gone wrong) is timed with the model's flops (x4/3 for remat) and flagged; one
  above gets MFU = model flops / roofline time / peak from the compiler's count."""
  cfg = plan.model_config("llama2-7b")
  chip = aot.CHIPS["v5e"]
  model = plan.model_flops_per_token(cfg, 512) * 8 * 512 / 8
  shape = {"batch": 8, "seq": 512}
  low = aot.Program("train_lm", 0, 0, 0, 0, 0, flops=0.5 * model, bytes_accessed=1.0, compile_s=0)
  out = plan.throughput("train_lm", shape, low, cfg, 8, chip)
  remat = 4 / 3 if cfg.remat else 1.0
  assert out["flops_below_model"] and out["flops_source"] == "model" and out["compute_bound"]
  assert out["roofline_s"] == pytest.approx(remat * model / chip.peak_bf16_flops)
  assert out["mfu"] == pytest.approx(1 / remat)
  assert out["tokens_per_s_per_chip"] == pytest.approx(512 / out["roofline_s"])
  memory_bound = aot.Program(
    "train_lm", 0, 0, 0, 0, 0, flops=0.5 * model, bytes_accessed=1e15, compile_s=0
  )
  out = plan.throughput("train_lm", shape, memory_bound, cfg, 8, chip)
  assert not out["compute_bound"]
  assert out["roofline_s"] == pytest.approx(1e15 / chip.hbm_bytes_per_s)
  ok = aot.Program("train_lm", 0, 0, 0, 0, 0, flops=1.25 * model, bytes_accessed=1.0, compile_s=0)
  out = plan.throughput("train_lm", shape, ok, cfg, 8, chip)
  assert out["mfu"] == pytest.approx(1 / 1.25)
  assert out["tokens_per_s_per_chip"] == pytest.approx(512 / ok.roofline_s(chip))
