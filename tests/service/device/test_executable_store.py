"""Executables stored on disk load back without tracing or compiling, only under their own
fingerprint; a damaged entry is a miss; the directory must be private. The JAX persistent cache
works from another path than the one it was written at (a primed image, a mounted volume)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from service.device.buckets import ShapeBucket
from service.device.executable_store import ExecutableStore, fingerprint
from service.device.kernels import CompiledKernels, KernelInputs, KernelKey, arguments
from service.device.operators import bind_operators
from service.device.variants import form_of
from service.observability.compile_events import compile_stats, start_counting

ROOT = Path(__file__).resolve().parents[3]
HARD = bind_operators((2.0,))["hard"]
KEY = KernelKey((form_of(HARD, "mask", ()).variant,), False, ShapeBucket(2, 16))
INPUTS = KernelInputs(
    np.arange(32, dtype=np.float32).reshape(2, 16),
    np.array([3, 1], np.int32),
    np.ones(2, np.float32),
    np.array([16, 4], np.int32),
)


def run(kernels: CompiledKernels) -> np.ndarray:
    return np.asarray(kernels.get(KEY)(*arguments(KEY, np.zeros(3, np.int32), INPUTS))[0])


def test_a_stored_executable_loads_without_compiling_and_answers_the_same(tmp_path: Path) -> None:
    start_counting()
    store = ExecutableStore(str(tmp_path / "x"), fingerprint(jax.local_devices()[:1]))
    first = CompiledKernels(store=store)
    assert first.build(KEY) == "compiled"
    assert store.keys() == [KEY]
    before = compile_stats().compilations
    second = CompiledKernels(store=store)
    assert second.build(KEY) == "loaded"
    assert compile_stats().compilations == before
    np.testing.assert_array_equal(run(second), run(first))
    assert run(second).tolist()[1] == [0] * 3 + [1] + [0] * 12


def test_another_fingerprint_or_a_damaged_entry_is_a_miss(tmp_path: Path) -> None:
    directory = str(tmp_path / "x")
    kernels = CompiledKernels()
    kernels.build(KEY)
    ExecutableStore(directory, "a" * 64).save(KEY, kernels.get(KEY))
    assert ExecutableStore(directory, "b" * 64).load(KEY) is None
    assert ExecutableStore(directory, "b" * 64).keys() == []
    (entry,) = Path(directory).glob("*.xla")
    entry.write_bytes(entry.read_bytes()[:100])
    assert ExecutableStore(directory, "a" * 64).load(KEY) is None
    assert CompiledKernels(store=ExecutableStore(directory, "a" * 64)).build(KEY) == "compiled"


def test_the_store_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="not group/world writable"):
        ExecutableStore(str(shared), "a" * 64)


def test_the_fingerprint_covers_the_code_that_shapes_a_kernel() -> None:
    import service.device.executable_store as module

    sources = {str(path.relative_to(ROOT)) for path in module._source_files()}
    assert {"core/_sparse.py", "service/device/kernels.py", "api/registry.py"} <= sources


PRIME = """
import sys, jax, jax.numpy as jnp, numpy as np
from service.device.jax_setup import enable_persistent_cache
from service.observability.compile_events import compile_stats, start_counting
start_counting()
enable_persistent_cache(sys.argv[1])
jax.jit(lambda x: jnp.sort(x) * 2).lower(jax.ShapeDtypeStruct((8, 64), np.float32)).compile()
print("hits", compile_stats().cache_hits)
"""


def test_the_jax_cache_hits_when_read_from_another_path(tmp_path: Path) -> None:
    """JAX 0.10 puts the cache directory's path into every key unless the XLA-internal caches are
    off (``jax_persistent_cache_enable_xla_caches="none"``, set by enable_persistent_cache)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}

    def hits(directory: Path) -> str:
        done = subprocess.run(
            [sys.executable, "-c", PRIME, str(directory)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return done.stdout.strip()

    assert hits(tmp_path / "built") == "hits 0"
    shutil.copytree(tmp_path / "built", tmp_path / "moved")
    assert hits(tmp_path / "moved") == "hits 1"
