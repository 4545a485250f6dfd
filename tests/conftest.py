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


# `make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`), each test module a
# group of its own (module-scoped servers start once), except the core's modules: they drop JAX's
# in-memory caches after each module (tests/core/conftest.py), which makes the next in-process
# test server of that worker compile its cover again (~40 CPU-s). So the core runs as two groups,
# one per worker, split by their measured cost (sparse and SOFT are the two largest), and the
# service tests that follow on a worker compile the cover once.
CORE_GROUP_2 = {"test_soft.py", "test_properties.py", "test_device_paths.py", "test_isotonic.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.fspath)
        if path.parent.name == "core" and path.parent.parent.name == "tests":
            group = "core-2" if path.name in CORE_GROUP_2 else "core-1"
        else:
            group = str(path)
        item.add_marker(pytest.mark.xdist_group(group))
