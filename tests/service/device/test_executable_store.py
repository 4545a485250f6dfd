"""Executables stored on disk load back without tracing or compiling, only under their own
fingerprint and from another path than the one they were written at; a damaged entry is a miss;
the directory must be private; nothing is stored from JAX's persistent cache."""

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
from service.device.executable_store import ExecutableStore, fingerprint, jax_cache_is_on
from service.device.kernels import (
    SELECTOR_LENGTH,
    CompiledKernels,
    KernelInputs,
    KernelKey,
    arguments,
)
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
    return np.asarray(
        kernels.get(KEY)(*arguments(KEY, np.zeros(SELECTOR_LENGTH, np.int32), INPUTS))[0]
    )


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


RESTART = """
import shutil, sys
import jax
from service.device.executable_store import ExecutableStore, fingerprint
from service.device.kernels import CompiledKernels
from tests.service.device.test_executable_store import KEY, run

jax_cache, directory = sys.argv[1], sys.argv[2]
if jax_cache:  # as an embedding program, or JAX_COMPILATION_CACHE_DIR, would turn it on
    jax.config.update("jax_compilation_cache_dir", jax_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
store = ExecutableStore(directory, fingerprint(jax.local_devices()[:1]))
kernels = CompiledKernels(store=store)
source = kernels.build(KEY)
print(source, len(store.keys()), run(kernels).tolist()[1])
"""
ANSWER = str([0.0] * 3 + [1.0] + [0.0] * 12)


def restart(jax_cache: Path | str, directory: Path) -> str:
    """One fresh process that builds KEY through the store and runs it."""
    done = subprocess.run(
        [sys.executable, "-c", RESTART, str(jax_cache), str(directory)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_a_store_written_in_one_process_runs_in_the_next_at_another_path(tmp_path: Path) -> None:
    """A primed image or a mounted volume: the store is read at a path it was not written at."""
    assert restart("", tmp_path / "built") == f"compiled 1 {ANSWER}"
    shutil.copytree(tmp_path / "built", tmp_path / "moved")
    assert restart("", tmp_path / "moved") == f"loaded 1 {ANSWER}"


def test_nothing_is_stored_while_the_jax_cache_is_on(tmp_path: Path) -> None:
    """A JAX cache hit serializes without its functions on XLA:CPU: stored, it failed at its first
    call ("NOT_FOUND: Function abs_select_fusion not found") in every later process."""
    jax_cache = tmp_path / "jax"
    assert restart(jax_cache, tmp_path / "first") == f"compiled 0 {ANSWER}"
    assert restart(jax_cache, tmp_path / "second") == f"compiled 0 {ANSWER}"  # a JAX cache hit
    assert restart("", tmp_path / "second") == f"compiled 1 {ANSWER}"
    assert restart("", tmp_path / "second") == f"loaded 1 {ANSWER}"


def test_the_service_leaves_the_jax_cache_off(server: object) -> None:
    """A warm server (its lifespan has run in this process) never turned JAX's cache on."""
    assert not jax_cache_is_on()
