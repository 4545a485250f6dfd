"""Test-wide configuration: float64 is available everywhere; each test picks its dtype explicitly."""

import jax

jax.config.update("jax_enable_x64", True)
