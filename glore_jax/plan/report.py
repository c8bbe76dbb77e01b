"""The plans as readable text: `format_plan` for the CPU plan of one model (`cli.make_plan`),
`format_stage_plan` for the TPU compiler's plan of a config's stages (`plan_stages`).
"""

from __future__ import annotations

from typing import Any

from glore_jax.plan.estimate import HOST_DEVICES, TPU_SLICES
from glore_jax.plan.memory import HEADROOM, GiB


def _gib(x: float) -> str:
  return f"{x / GiB:.2f}"


def format_stage_plan(plan: dict[str, Any]) -> str:
  """The `plan_stages` result as a Markdown table, one row per program."""
  chip = plan["chip"]
  lines = [
    f"# {plan['slice']}: {chip['kind']} chips of {chip['hbm_bytes'] / GiB:.0f} GiB; "
    f"{plan['model'] / 1e9:.2f}B parameters, {plan['num_layers']} layers, attention: "
    f"{plan.get('attention', 'pallas where it applies')}; training mesh "
    f"{plan['global_mesh']}, sampling on each host's mesh {plan['host_mesh']}",
    f"TPU compiler's memory analysis per device (GiB); fits = peak <= "
    f"{int(HEADROOM * 100)}% of HBM; prompts up to {plan['prompt_tokens']} tokens",
    "",
    "| stage | program | shape | arguments | temp | peak | fits | roofline ms | "
    "est. tokens/s/chip | est. MFU |",
    "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
  ]
  notes = set()
  for p in plan["programs"]:
    r = p["result"]
    shape = " ".join(f"{k}={v}" for k, v in p["shape"].items() if k != "temperature")
    lines.append(
      f"| {p['stage']} | {p['program']} | {shape} | {_gib(r['argument'])} | "
      f"{_gib(r['temp'])} | **{_gib(r['peak'])}** | {'yes' if p['fits'] else 'NO'} | "
      f"{r['roofline_s'] * 1e3:.1f} | "
      + (f"{r['tokens_per_s_per_chip']:,.0f}" if "tokens_per_s_per_chip" in r else "-")
      + " | "
      + (f"{r['mfu']:.0%}" if "mfu" in r else "-")
      + (" (model FLOPs)" if r.get("flops_source") == "model" else "")
      + " |"
    )
    if r.get("flops_source") == "model":
      notes.add(
        "model FLOPs: the compiler counted fewer FLOPs than the model has, so the roofline's "
        "compute term uses the model's 6 N per token plus attention, x4/3 for remat"
      )
    if p["note"]:
      notes.add(p["note"])
  lines += [""] + [f"({n})" for n in sorted(notes)]
  bad = sorted({p["stage"] for p in plan["programs"] if not p["fits"]})
  lines.append("every stage fits" if not bad else f"does NOT fit: {', '.join(bad)}")
  share = plan.get("label_prefix_sharing")
  if share:
    mib = 1024**2
    lines += [
      "",
      f"Label stage KV cache: {share['cache_bytes_per_row'] / mib:,.0f} MiB per rollout "
      f"row, {share['prefix_bytes_per_row'] / mib:,.0f} MiB of it a copy of the prefix's "
      f"cache; one host fits {share['rows_per_host_copied']:,.0f} rows so; with the "
      f"{share['rollouts']} rollouts of a prefix sharing one copy "
      f"{share['shared_cache_bytes_per_row'] / mib:,.0f} MiB per row, "
      f"{share['rows_per_host_shared']:,.0f} rows (on paper: the sampler copies).",
    ]
  rec = plan.get("recommended_batch_multiplier")
  if rec:
    lines += [
      "",
      "Recommended batch_size per stage (the largest power-of-two multiple of the "
      "configured one that fits, bytes linear in rows):",
      "",
    ]
    for stage, f in rec.items():
      size = next(p for p in plan["programs"] if p["stage"] == stage)["batch_size"]
      lines.append(
        f"  {stage}: " + ("nothing fits" if not f else f"{int(size * f)} (configured {size})")
      )
  return "\n".join(lines)


def format_plan(plan: dict[str, Any]) -> str:
  """The `make_plan` result as readable text."""
  m = plan["mesh"]
  lines = [
    f"# {plan['model']}: {plan['params'] / 1e9:.2f}B parameters, {plan['num_layers']} layers",
    f"mesh data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']} ({plan['devices']} "
    f"simulated devices); training: {plan['dtype']} compute over {plan['param_dtype']} "
    f"params + AdamW, remat={plan['remat']}; sampling: {plan['decode_param_dtype']} weights",
    "",
  ]
  t, d = plan["train"], plan["decode"]
  shapes = {
    "train": f"batch {t['batch']} x seq {t['seq']} (accum {t['grad_accum']})",
    "decode": f"batch {d['batch']}, KV cache {d['cache']} slots",
  }
  if any("cpu_spmd" in plan[k] for k in ("train", "decode")):
    lines += [
      "XLA:CPU memory analysis of the SPMD program, per device (GiB):",
      "",
      "| step | shape | arguments | outputs | aliased | temp | code | peak |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for kind in ("train", "decode"):
      mem = plan[kind].get("cpu_spmd")
      if mem:
        lines.append(
          f"| {kind} | {shapes[kind]} | {_gib(mem['argument'])} | {_gib(mem['output'])} "
          f"| {_gib(mem['alias'])} | {_gib(mem['temp'])} | {_gib(mem['code'])} | "
          f"{_gib(mem['peak'])} |"
        )
        if mem["extrapolated"]:
          notes.append(mem["extrapolated"])
    lines += [
      "",
      "(XLA:CPU has no reduce-scatter and runs bf16 collectives in f32, so its temp "
      "holds every layer's full f32 gradient: a loose upper bound on TPU.)",
    ]
    lines += [f"({n})" for n in notes]
    lines.append("")
  if any("tpu_estimate" in plan[k] for k in ("train", "decode")):
    lines += [
      "TPU estimate per device (GiB), from one-device compiles (see glore_jax/plan/estimate.py):",
      "",
      "| step | shape | state / weights | backward: grads + activations (or KV cache) | "
      "optimizer phase | FSDP gathered | total | total, XLA:CPU schedule |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    shards = m["data"] * m["fsdp"]
    pshards = m["fsdp"] * m["tensor"]
    for kind in ("train", "decode"):
      if "tpu_estimate" not in plan[kind]:
        continue
      f = plan[kind]["fit"]
      rows = t["batch"] / t["grad_accum"] / shards if kind == "train" else d["batch"] / shards
      per_row = f.get("per_row_remat") or f["per_row"]
      cells = [
        f["state"] / pshards,
        f["grads"] / pshards + per_row * rows,
        f["param_phase"] / pshards,
        f["fixed"] / m["tensor"],
      ]
      scheduled = plan[kind].get("as_scheduled_estimate", plan[kind]["tpu_estimate"])
      lines.append(
        f"| {kind} | {shapes[kind]} | "
        + " | ".join(_gib(c) for c in cells)
        + f" | **{_gib(plan[kind]['tpu_estimate'])}** | {_gib(scheduled)} |"
      )
    lines += [
      "",
      "(total = state + the larger of the two phases + gathered. Activations count "
      "remat as realized on TPU: the compiled activations of the shallowest model plus "
      "each further block's saved input; XLA:CPU's own schedule keeps every block's "
      "activations (last column).)",
    ]
    if plan["layers"]:
      lines += [
        f"(compiled at {plan['layers'][0]} and {plan['layers'][1]} layers, "
        f"extrapolated linearly to {plan['num_layers']})"
      ]
    lines.append("")
  rec = plan.get("recommend")
  if rec:
    lines += [
      f"Recommended for TPU slices (fsdp over the slice for training at seq {t['seq']}; "
      f"sampling on each {HOST_DEVICES}-chip host, cache {d['cache']}), "
      f"filling <= {int(HEADROOM * 100)}% of HBM:",
      "",
      "| slice | chips x HBM | train mesh (data, fsdp, tensor) | train global batch | "
      "train GiB/chip | decode rows per host | decode GiB/chip |",
      "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, (n, hbm) in TPU_SLICES.items():
      r = rec.get("train", {}).get(name)
      s = rec.get("decode", {}).get(name)
      train_cells = (
        ["does not fit", "-", "-"]
        if r is None
        else [
          f"{r['mesh']['data']}, {r['mesh']['fsdp']}, {r['mesh']['tensor']}",
          str(r["global_batch"]),
          _gib(r["bytes_per_device"]),
        ]
      )
      decode_cells = (
        ["does not fit on one host", "-"]
        if s is None
        else [str(s["global_batch"]), _gib(s["bytes_per_device"])]
      )
      lines.append(
        f"| {name} | {n} x {hbm // GiB} GiB | " + " | ".join(train_cells + decode_cells) + " |"
      )
  return "\n".join(lines)
