"""Test-wide configuration: float64 is available everywhere; each test picks its dtype explicitly."""

import jax
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

# Property tests run the same examples every time, so CI is reproducible.
settings.register_profile("reproducible", derandomize=True, deadline=None)
settings.load_profile("reproducible")
