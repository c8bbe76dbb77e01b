"""Shared defaults for every stage (`configs/base.py` re-exports them). A stage config starts
from `get_config()`, sets `stages` and overrides what it needs; the command line overrides any
key:

  python -m glore_jax.main --config=configs/sorm.py --workdir=DIR --config.sorm.num_rollouts=16

Every key, its default, range and doc is one row of `glore_jax/config_keys.py`; list them with
`python -m glore_jax.main --config=configs/base.py --describe`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from glore_jax.config_keys import KEYS


def get_config() -> ml_collections.ConfigDict:
  """The default config: every key of `config_keys.KEYS` at its default, nested by its dots."""
  tree: dict[str, Any] = {}
  for key in KEYS.values():
    *sections, leaf = key.name.split(".")
    node = tree
    for section in sections:
      node = node.setdefault(section, {})
    node[leaf] = key.default
  return ml_collections.ConfigDict(tree)
