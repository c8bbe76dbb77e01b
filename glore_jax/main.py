"""Entry point: `python -m glore_jax.main --config=configs/sorm.py --workdir=DIR [--config.x=y]`.

Validates the whole config before any compute, sets up (multi-host) devices and the mesh, then
runs the configured stages in order. Each stage reads its inputs from the work directory and
skips work it already finished there, so rerunning after a crash resumes.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import traceback

# transformers is used for tokenizers only; its "PyTorch was not found" advice is noise here.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (local path or gs://bucket/run).")
_VERBOSE = flags.DEFINE_bool(
  "verbose",
  False,
  "Print the traceback of an error, not only its one-line message (also: GLORE_VERBOSE=1).",
)
_DESCRIBE = flags.DEFINE_bool(
  "describe",
  False,
  "Print every config key with its type, value "
  "(after the overrides), default and doc, then exit; runs nothing.",
)
flags.mark_flags_as_required(["config"])
flags.register_multi_flags_validator(
  ["workdir", "describe"],
  lambda f: f["describe"] or f["workdir"] is not None,
  message="--workdir is required (except with --describe)",
)

log = logging.getLogger("glore_jax")
# Set by run() in a process it restarts with malloc settings; the restarted process logs it.
_MALLOC_RESTART = "GLORE_JAX_MALLOC_RESTARTED"
_malloc_restarted = False


def main(argv: list[str]) -> int:
  """The command after absl parsed the flags: --describe, or validate and run the stages.

  Args:
    argv: the arguments absl left (the program name only, for a valid command line).
  """
  if len(argv) > 1:
    raise app.UsageError(
      f"unexpected arguments {argv[1:]}; configuration goes through --config.KEY=VALUE"
    )
  # orbax and friends log every checkpoint step through absl; keep the console for our stages.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("glore_jax").setLevel(logging.INFO)
  from glore_jax.errors import one_line, verbose_from_env

  try:
    _CONFIG.value.keys()  # ml_collections reports a config file that failed to load only now
  except OSError as e:
    print(f"config error: --config: {one_line(e)}", file=sys.stderr)
    return 2
  if _DESCRIBE.value:
    from glore_jax.config_keys import describe
    from glore_jax.fingerprint import flatten

    print(describe(flatten(_CONFIG.value)))
    return 0
  return run_pipeline(_CONFIG.value, _WORKDIR.value, verbose=_VERBOSE.value or verbose_from_env())


def run_pipeline(config: ml_collections.ConfigDict, workdir: str, *, verbose: bool = False) -> int:
  """Validates `config` (before anything touches `workdir`), then runs its stages.

  Returns the exit code (glore_jax/errors.py): 0, 2 for a config error, 3 for a missing, stale
  or corrupt input, 1 for the other known errors, each printed as one line on stderr (with the
  traceback when `verbose`); an unexpected exception propagates with its traceback.

  Args:
    config: the stage config (validated here).
    workdir: the work directory (local path or gs://).
    verbose: print the traceback of a known error too.
  """
  from glore_jax import errors
  from glore_jax.config_check import validate

  try:
    validate(config)
    if _malloc_restarted:  # said after validation, so that a config error stays one line
      from glore_jax.cpu_malloc import OPT_OUT

      log.info(
        "restarted once with GLIBC_TUNABLES set (XLA:CPU keeps its buffers; "
        "glore_jax/cpu_malloc.py); %s=0 turns this off",
        OPT_OUT,
      )
    from glore_jax.stages import run_stages

    run_stages(config, workdir)
  except Exception as e:  # classified below; unknown ones are re-raised
    code = errors.exit_code(e)
    if code is None:
      raise
    if verbose:
      traceback.print_exc()
    prefix = "config error" if code == errors.EXIT_CONFIG else "error"
    print(f"{prefix}: {errors.one_line(e)}", file=sys.stderr, flush=True)
    return code
  return errors.EXIT_OK


def _unknown_overrides(argv: list[str]) -> list[str]:
  """The KEYs of --config.KEY=VALUE arguments that the default config does not have."""
  from glore_jax.defaults import get_config

  defaults, unknown = get_config(), []
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    path, node = arg[len("--config.") :].split("=", 1)[0], defaults
    for part in path.split("."):
      if not hasattr(node, "keys") or part not in node:
        close = difflib.get_close_matches(
          part, list(node.keys()) if hasattr(node, "keys") else [], n=1
        )
        unknown.append(path + (f" (did you mean {close[0]!r}?)" if close else ""))
        break
      node = node[part]
  return unknown


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; an override of a key the config lacks (ml_collections raises a bare
  AttributeError from inside the parser) or a value of the wrong type becomes a one-line
  message naming the key, exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"config error: {errors_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:
    keys = ", ".join(f"config.{k}" for k in _unknown_overrides(argv)) or str(e)
    print(
      f"config error: unknown key {keys}: the config has no such key (every key, its "
      "default and doc: glore_jax/config_keys.py, or --describe)",
      file=sys.stderr,
    )
    sys.exit(2)


def errors_one_line(e: BaseException) -> str:
  from glore_jax.errors import one_line

  return one_line(e)


def run() -> None:
  """The `glore-jax` command: restarts once with malloc settings on CPU-only installs, finds the
  config file, parses the flags and runs `main`."""
  global _malloc_restarted
  _malloc_restarted = os.environ.pop(_MALLOC_RESTART, "") == "1"
  from glore_jax import cpu_malloc

  if cpu_malloc.should_reexec():  # CPU-only installs: keep XLA:CPU's buffers (see cpu_malloc.py)
    os.environ[_MALLOC_RESTART] = "1"
    cpu_malloc.reexec_with_malloc_tunables()
  from glore_jax.config_files import resolve_config_argv

  sys.argv = resolve_config_argv(sys.argv)  # configs/X.py from the installed package too
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
