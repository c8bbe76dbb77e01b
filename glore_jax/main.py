"""Entry point: `python -m glore_jax.main --config=configs/sorm.py --workdir=DIR [--config.x=y]`.

Validates the whole config before any compute, sets up (multi-host) devices and the mesh, then
runs the configured stages in order. Each stage reads its inputs from the work directory and
skips work it already finished there, so rerunning after a crash resumes.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (local path or gs://bucket/run).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; configuration goes through --config.KEY=VALUE")
  # orbax and friends log every checkpoint step through absl; keep the console for our stages.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("glore_jax").setLevel(logging.INFO)
  from glore_jax.config_check import ConfigError, validate
  config = _CONFIG.value
  try:
    validate(config)
  except ConfigError as e:
    logging.error("%s", e)
    print(f"config error: {e}", file=sys.stderr)
    return 2
  from glore_jax.stages import MissingInputError, run_stages
  from glore_jax.workdir import FingerprintMismatchError, MissingStageError
  try:
    run_stages(config, _WORKDIR.value)
  except (MissingInputError, MissingStageError, FingerprintMismatchError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  return 0


def run() -> None:
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
