"""Test-wide configuration: float64 is available everywhere; each test picks its dtype explicitly."""

from pathlib import Path

import jax
import pytest
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

# Property tests run the same examples every time, so CI is reproducible.
settings.register_profile("reproducible", derandomize=True, deadline=None)
settings.load_profile("reproducible")


# The cover of the test servers started as processes (tests/clients, tests/e2e): one ROWSxN and
# one store for the session, so that the first server compiles it and the others load it.
TEST_COVER = "8x64"


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private executable store shared by the session."""
    path = tmp_path_factory.mktemp("kernel-cache")
    path.chmod(0o700)
    return path
