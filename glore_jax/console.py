"""How a stage's one-line summary reads on the console: `[policy] 112.0 s  examples 2,850
train_loss 0.0755 tokens/s 24,722`, each figure rounded for reading (results.json and the
manifests keep the exact values)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Keys shown under a shorter name.
_NAMES = {"tokens_per_s": "tokens/s"}


def format_value(value: Any) -> str:
  """A figure for reading: integers with thousands separators, large floats as integers, small
  ones to 4 significant digits.

  Args:
    value: an int, float, bool or anything printable.
  """
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, int):
    return f"{value:,}"
  if not math.isfinite(value):
    return str(value)
  if abs(value) >= 100:
    return f"{round(value):,}"
  if value == int(value):
    return str(int(value))
  return f"{value:.4g}"


def format_summary(summary: Mapping[str, Any]) -> str:
  """`key value` pairs, two spaces apart, in the summary's order.

  Args:
    summary: a stage's figures by name.
  """
  return "  ".join(f"{_NAMES.get(k, k)} {format_value(v)}" for k, v in summary.items())
