"""Fixtures of the core tests."""

from collections.abc import Iterator

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_executables_after_each_module() -> Iterator[None]:
    """Drop the module's jitted executables when it is done. XLA:CPU crashed (SIGSEGV/SIGABRT
    inside backend_compile_and_load) compiling the large sweep of tests/core/test_sparse.py after
    the other core modules had left hundreds of executables loaded, while that module alone, or
    after fewer of them, passed. (Only here: the service tests' servers share their cover through
    JAX's in-memory caches.)"""
    yield
    jax.clear_caches()
