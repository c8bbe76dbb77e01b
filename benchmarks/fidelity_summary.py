"""One line of key fidelity figures per finished work directory (for docs/fidelity_notebook.md).

  python benchmarks/fidelity_summary.py /tmp/glore-demo /tmp/glore-repro ...
  python benchmarks/fidelity_summary.py --claims /tmp/glore-demo /tmp/glore-repro

Reads only `<workdir>/evaluate/results.json`: accuracies (%) of the rows that decide the paper's
claims, the paired differences with their 95% intervals, and the verifier diagnostics; with
`--claims`, one line per paper claim and run (the README's "Does GLoRe work here?" table).
"""

from __future__ import annotations

import json
import pathlib
import sys


def _pct(r: dict | None) -> str:
  return "n/a" if not r or r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}"


def _diff(results: dict, name: str) -> str:
  d = results.get("differences", {}).get(name)
  if not d:
    return "n/a"
  lo, hi = d["ci95"]
  return f"{100 * d['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def summary(workdir: pathlib.Path) -> dict[str, str]:
  r = json.loads((workdir / "evaluate" / "results.json").read_text())
  n = r.get("best_of", 3)
  step = r.get("step_level", {})
  num = lambda x: "n/a" if x is None else f"{x:.3f}"
  out = {"run": workdir.name}
  for key in (
    "greedy",
    "mean_sample",
    f"random_of_{n}",
    f"majority_of_{n}",
    f"likelihood_of_{n}",
    f"best_of_{n}",
    f"best_of_{n}+lik",
    "global",
    "local",
    "draft_global_local",
    "draft_global_local+lik",
    "oracle",
  ):
    out[key] = _pct(r.get(key))
  out["DGL+lik - greedy"] = _diff(r, "draft_global_local+lik - greedy")
  out["DGL - greedy"] = _diff(r, "draft_global_local - greedy")
  for kind in ("orm", "sorm"):
    s = step.get(kind, {})
    out[f"{kind} AUROC truth"] = num(s.get("auroc_truth"))
    out[f"{kind} final AUROC"] = num(s.get("final_auroc"))
    out[f"{kind} within-q"] = num(s.get("within_question_pairs"))
  q = r.get("label_quality") or {}
  out["SORM label acc"] = num(q.get("sorm_label_accuracy"))
  f = r.get("fixes", {})
  out["fixes G/L/both/either of wrong"] = (
    f"{f.get('fixed_by_global')}/{f.get('fixed_by_local')}/"
    f"{f.get('fixed_by_both')}/{f.get('fixed_by_either')} of "
    f"{f.get('wrong_drafts')}"
  )
  out["broken G/L"] = f"{f.get('broken_by_global')}/{f.get('broken_by_local')}"
  return out


def claims(workdir: pathlib.Path) -> dict[str, str]:
  """Each claim of the paper as measured in one run, with the figure that decides it."""
  r = json.loads((workdir / "evaluate" / "results.json").read_text())
  n = r.get("best_of", 3)
  step = r["step_level"]
  f = r["fixes"]
  num = lambda x: "n/a" if x is None else f"{x:.3f}"
  return {
    "run": workdir.name,
    f"(a) best_of_{n} - mean_sample": _diff(r, f"best_of_{n} - mean_sample"),
    f"(a) best_of_{n} - random_of_{n}": _diff(r, f"best_of_{n} - random_of_{n}"),
    "(b) {D,G,L} - greedy": _diff(r, "draft_global_local - greedy"),
    f"(b) {{D,G,L}} - best_of_{n}": _diff(r, f"draft_global_local - best_of_{n}"),
    "(c) step AUROC vs truth, SORM / ORM": f"{num(step['sorm']['auroc_truth'])} / "
    f"{num(step['orm']['auroc_truth'])}",
    "(c) final AUROC, ORM / SORM": f"{num(step['orm']['final_auroc'])} / "
    f"{num(step['sorm']['final_auroc'])}",
    "(d) wrong drafts fixed by G / L / both": f"{f['fixed_by_global']} / {f['fixed_by_local']} / "
    f"{f['fixed_by_both']} of {f['wrong_drafts']}",
    f"ORM + likelihood: best_of_{n}+lik - mean_sample": _diff(r, f"best_of_{n}+lik - mean_sample"),
    "ORM + likelihood: {D,G,L}+lik - greedy": _diff(r, "draft_global_local+lik - greedy"),
  }


if __name__ == "__main__":
  args = sys.argv[1:]
  make = claims if args and args[0] == "--claims" else summary
  rows = [make(pathlib.Path(p)) for p in args if p != "--claims"]
  keys = list(rows[0])
  print("| " + " | ".join(keys) + " |")
  print("|" + "---|" * len(keys))
  for row in rows:
    print("| " + " | ".join(row[k] for k in keys) + " |")
