"""The evaluate stage's outputs for people: the Markdown results tables and the reliability
diagram.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from glore_jax.method.reranking import row_descriptions
from glore_jax.method.verifier_metrics import calibration_bins, expected_calibration_error

__all__ = [
  "STEP_LEVEL_MODELS",
  "markdown_table",
  "reliability_diagram",
]


STEP_LEVEL_MODELS = ("orm", "sorm")  # the step-level table's first rows, in this order


def reliability_diagram(curves: Mapping[str, tuple[Any, Any]], path: Any, bins: int = 10) -> None:
  """Write a PNG: fraction of positives against mean predicted probability, one curve per model.

  Uses the Agg canvas directly (no pyplot state, no display needed); `path` may be any
  `etils.epath` path, gs:// included.

  Args:
    curves: {model name: (probabilities, labels)}.
    path: the PNG file to write (str or etils.epath path).
    bins: the number of equal-width bins.
  """
  from etils import epath
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(4.5, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
  for name, (probs, labels) in curves.items():
    conf, acc, count = calibration_bins(probs, labels, bins)
    ok = count > 0
    ece = expected_calibration_error(probs, labels, bins)
    label = name if ece is None else f"{name} (ECE {ece:.3f})"
    ax.plot(conf[ok], acc[ok], marker="o", label=label)
  ax.set(
    xlim=(0, 1),
    ylim=(0, 1),
    xlabel="mean predicted probability",
    ylabel="fraction of positive labels",
    title="Reliability on held-out steps",
  )
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(buf.getvalue())


def _pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 3) -> str:
  return "n/a" if x is None else f"{x:.{digits}f}"


def _signed(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:+.1f}"


def markdown_table(results: Mapping[str, Any]) -> str:
  """The final tables as Markdown: accuracy rows (in `ROWS` order, then any others) and, when
  present, the step-level ORM vs SORM table.

  Rows are read from results["rows"] if present, else from top-level keys whose value has an
  "accuracy" (the layout of `evaluate/results.json`).
  """
  rows = results.get("rows", results)
  described = row_descriptions(int(results.get("best_of", 3)))
  names = [k for k in described if k in rows]
  names += sorted(
    k for k, v in rows.items() if k not in described and isinstance(v, Mapping) and "accuracy" in v
  )
  lines = ["| method | | accuracy (%) | 95% CI (%) | n |", "|---|---|---:|---|---:|"]
  for k in names:
    r = rows[k]
    lo, hi = r.get("ci95") or [None, None]
    lines.append(
      f"| {k} | {described.get(k, '')} | {_pct(r['accuracy'])} | "
      f"[{_pct(lo)}, {_pct(hi)}] | {r.get('n', 'n/a')} |"
    )
  differences = results.get("differences")
  if differences:
    lines += [
      "",
      "| paired difference (same questions) | points | 95% CI (points) |",
      "|---|---:|---|",
    ]
    for name, d in differences.items():
      lo, hi = d["ci95"]
      lines.append(f"| {name} | {_signed(d['difference'])} | [{_signed(lo)}, {_signed(hi)}] |")
  step = results.get("step_level")
  if step and any("auroc_truth" in r for r in step.values()):
    lines += [
      "",
      "| reward model (test questions) | step AUROC vs truth | step AUROC vs rollouts | "
      "final AUROC | within-question pairs | first-error F1 | steps |",
      "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in [m for m in STEP_LEVEL_MODELS if m in step]:
      r = step[m]
      loc = r.get("localisation") or {}
      lines.append(
        f"| {m} | {_num(r.get('auroc_truth'))} | {_num(r.get('auroc'))} | "
        f"{_num(r.get('final_auroc'))} | {_num(r.get('within_question_pairs'))} | "
        f"{_num(loc.get('f1'))} | {r.get('n_steps', 'n/a')} |"
      )
  elif step:
    lines += [
      "",
      "| reward model | step accuracy (%) | final accuracy (%) | step AUROC | step ECE | steps |",
      "|---|---:|---:|---:|---:|---:|",
    ]
    models = [m for m in STEP_LEVEL_MODELS if m in step]
    models += sorted(m for m in step if m not in STEP_LEVEL_MODELS)
    for m in models:
      r = step[m]
      lines.append(
        f"| {m} | {_pct(r.get('step_accuracy'))} | "
        f"{_pct(r.get('final_accuracy'))} | {_num(r.get('auroc'))} | "
        f"{_num(r.get('ece'))} | {r.get('n_steps', 'n/a')} |"
      )
  return "\n".join(lines) + "\n"
