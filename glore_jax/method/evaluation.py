"""Evaluation arithmetic on plain arrays: reranking, gating, bootstrap intervals, step-level metrics.

The evaluate stage produces scores and correctness flags; everything after that is model-free, so
every number in the results table can be checked by hand. This module is the one import for all of
it; each job lives in its own module:

  reranking.py         one answer per question (rerank, ORM gating, majority vote, oracle), table rows
  bootstrap.py         percentile bootstrap intervals: one row's accuracy, paired differences
  verifier_metrics.py  AUROC, calibration, step accuracy, within-question pairs, localisation
  report.py            the Markdown results tables and the reliability diagram
"""

from __future__ import annotations

from glore_jax.method.bootstrap import bootstrap_ci, paired_difference
from glore_jax.method.report import STEP_LEVEL_MODELS, markdown_table, reliability_diagram
from glore_jax.method.reranking import (
  ROWS,
  Reranked,
  accuracy_row,
  gated_rerank,
  majority_vote,
  oracle,
  rerank,
  row_descriptions,
)
from glore_jax.method.verifier_metrics import (
  auroc,
  calibration_bins,
  choose_where_threshold,
  expected_calibration_error,
  first_step_below,
  localisation,
  step_level_metrics,
  within_question_pairs,
)

__all__ = [
  "ROWS",
  "STEP_LEVEL_MODELS",
  "Reranked",
  "accuracy_row",
  "auroc",
  "bootstrap_ci",
  "calibration_bins",
  "choose_where_threshold",
  "expected_calibration_error",
  "first_step_below",
  "gated_rerank",
  "localisation",
  "majority_vote",
  "markdown_table",
  "oracle",
  "paired_difference",
  "reliability_diagram",
  "rerank",
  "row_descriptions",
  "step_level_metrics",
  "within_question_pairs",
]
