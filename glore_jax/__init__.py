"""glore-jax: GLoRe (global and local refinements with ORM/SORM reward models) in JAX/Flax."""

__version__ = "0.1.0"
