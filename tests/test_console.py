"""Stage summaries on the console: one line, rounded figures, readable names."""

from glore_jax.console import format_summary, format_value


def test_figures_are_rounded_for_reading():
  assert format_value(14913.0416) == "14,913"
  assert format_value(2850) == "2,850"
  assert format_value(0.07551234) == "0.07551"
  assert format_value(0.5) == "0.5"
  assert format_value(3.0) == "3"
  assert format_value(True) == "True"
  assert format_value(float("nan")) == "nan"
  assert format_value("x") == "x"


def test_summary_line():
  line = format_summary({"examples": 2850, "train_loss": 0.0755, "tokens_per_s": 14913.0416})
  assert line == "examples 2,850  train_loss 0.0755  tokens/s 14,913"
