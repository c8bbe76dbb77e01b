"""User-facing errors and the exit codes `python -m glore_jax.main` returns for them.

    0  success
    2  a config error (a key's value, type or a cross-key constraint), found before any compute
    3  a missing, stale or corrupt input: an unfinished or outdated stage output, a damaged
       shard / model folder / checkpoint, a malformed data file or HF checkpoint
    1  anything else (a bug, an out-of-memory, a diverged training run)

Known errors print as one line without a traceback; `--verbose` or GLORE_VERBOSE=1 shows it.
Other modules' user-facing errors derive from the classes here (`DataError(InputError,
ValueError)`, ...), so this module imports nothing of the package and the mapping is `exit_code`.
"""

from __future__ import annotations

import os

EXIT_OK, EXIT_OTHER, EXIT_CONFIG, EXIT_INPUT = 0, 1, 2, 3


class GloreError(Exception):
  """Base of the package's user-facing errors; `exit_code` is what main returns for them."""

  exit_code = EXIT_OTHER


class ConfigError(GloreError, ValueError):
  """A config key has a value the pipeline cannot use."""

  exit_code = EXIT_CONFIG


class InputError(GloreError, RuntimeError):
  """An input of a stage is missing, outdated or damaged."""

  exit_code = EXIT_INPUT


class StaleOutputError(InputError):
  """A stage output was computed under another configuration than the current one."""


class CorruptOutputError(InputError):
  """A stage output's files do not match the record count / checksum of its manifest."""


def exit_code(error: BaseException) -> int | None:
  """The exit code of a user-facing error, or None for an unexpected one (show its traceback)."""
  if isinstance(error, GloreError):
    return error.exit_code
  if isinstance(error, UnicodeDecodeError):  # a data file that is not UTF-8
    return EXIT_INPUT
  return None


def one_line(error: BaseException) -> str:
  """The error's message on one line (continuation lines joined with ' / ')."""
  text = str(error) or type(error).__name__
  if isinstance(error, UnicodeDecodeError):
    text = f"not valid UTF-8 ({error.reason} at byte {error.start})"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return " / ".join(lines)


def verbose_from_env() -> bool:
  return os.environ.get("GLORE_VERBOSE", "").lower() not in ("", "0", "false", "no")
