"""Recompute every row of the evaluate table from `candidates.json` alone.

  python tests/recompute_table.py /tmp/glore-demo/evaluate/candidates.json

An independent, plain-Python reading of the rows (it shares only answer normalisation and the
seeded pick with the stage), so a test can check that results.json says what the candidates say.
"""

from __future__ import annotations

import json
import sys

from glore_jax.data.grading import normalize_number
from glore_jax.method.labels import hash_rank


def _top(cands, key):
  best = cands[0]
  for c in cands[1:]:  # strictly greater: ties keep the earlier candidate
    if key(c) > key(best):
      best = c
  return best


def recompute(candidates: dict) -> dict[str, float]:
  """Accuracy of every row of the main table, from the per-question candidates."""
  totals: dict[str, float] = {}
  questions = candidates["questions"]
  for q in questions:
    role = lambda r, q=q: [c for c in q["candidates"] if c["role"] == r]
    d, g, l = role("draft")[0], role("global")[0], role("local")[0]
    samples = role("sample")
    n = len(samples)
    rows = {
      "greedy": d["correct"],
      "global": g["correct"],
      "local": l["correct"],
      "oracle": d["correct"] or g["correct"] or l["correct"],
    }
    orm = lambda c: c["orm"]
    rows["draft_global"] = _top([d, g], orm)["correct"]
    rows["draft_local"] = _top([d, l], orm)["correct"]
    rows["draft_global_local"] = _top([d, g, l], orm)["correct"]
    rows["orm_gated"] = (
      d["correct"] if d["orm"] >= candidates["threshold"] else rows["draft_global_local"]
    )
    if "orm_lik" in d:  # the same reranks by ORM + policy likelihood
      mixed = lambda c: c["orm_lik"]
      rows["draft_global+lik"] = _top([d, g], mixed)["correct"]
      rows["draft_local+lik"] = _top([d, l], mixed)["correct"]
      rows["draft_global_local+lik"] = _top([d, g, l], mixed)["correct"]
      if n:
        rows[f"best_of_{n}+lik"] = _top(samples, mixed)["correct"]
    if n:
      rows["mean_sample"] = sum(c["correct"] for c in samples) / n
      rows[f"best_of_{n}"] = _top(samples, orm)["correct"]
      rows[f"likelihood_of_{n}"] = _top(
        samples, lambda c: float("-inf") if c["mean_logprob"] is None else c["mean_logprob"]
      )["correct"]
      pick = hash_rank(candidates["seed"], "random-pick", q["id"]) % n
      rows[f"random_of_{n}"] = samples[pick]["correct"]
      votes: dict = {}
      for c in samples:
        a = normalize_number(c["answer"])
        if a is not None:
          votes.setdefault(a, []).append(c["correct"])
      if votes:
        most = max(len(v) for v in votes.values())
        rows[f"majority_of_{n}"] = next(v[0] for v in votes.values() if len(v) == most)
      else:
        rows[f"majority_of_{n}"] = False
    for k, v in rows.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return {k: v / len(questions) for k, v in totals.items()}


if __name__ == "__main__":
  with open(sys.argv[1]) as f:
    for name, accuracy in recompute(json.load(f)).items():
      print(f"{name:24s} {100 * accuracy:5.1f}")
