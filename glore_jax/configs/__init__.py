"""The shipped configs as a package, `glore_jax.configs` (e.g. `glore_jax.configs.demo`).

Their source is the top-level `configs/` folder, the documented `--config=configs/X.py` path. An
installed wheel carries them here (setup.cfg maps `configs/` onto this package); in a clone or
an editable install this file stands in and adds the clone's `configs/` folder to the package.
"""

import pathlib

_CLONE = pathlib.Path(__file__).resolve().parents[2]
if (_CLONE / "setup.cfg").exists() and (_CLONE / "configs" / "__init__.py").exists():
  __path__.append(str(_CLONE / "configs"))
