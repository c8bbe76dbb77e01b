"""The shipped configs (`--config=configs/X.py`); installed as the package `glore_jax.configs`, so
`--config=configs/demo.py` also works without a clone (see glore_jax/config_files.py)."""
