"""Compiled executables on disk, so that a restart loads its kernels instead of building them.

JAX's persistent compilation cache skips XLA's compile but not tracing and lowering, which is
Python and, for the service's multiplexed kernels, ~3 s per kernel (bench/RESULTS.md, "Start-up").
This store keeps the executables themselves (``jax.experimental.serialize_executable``): loading
one takes milliseconds and needs no tracing.

An executable is only valid for the code and the machine that built it, so every entry is filed
under a *fingerprint* of both: the jax and jaxlib versions, the backend, the devices' kinds and
count, the CPU's instruction set flags (an executable built on a CPU with AVX-512 must not run on
one without), ``XLA_FLAGS``, the float64 switch, and the source of every module that shapes a
kernel (``core/``, ``service/device/``, ``api/registry.py``). A different fingerprint is a miss, and
the kernel is compiled. Entries are pickles, i.e. trusted code, so the directory must be private
(:func:`~service.device.jax_setup.private_directory`).

Nothing is written while JAX's own persistent compilation cache is on in this process (say through
``JAX_COMPILATION_CACHE_DIR``): an executable that cache hands back serializes without its compiled
functions on XLA:CPU (jaxlib 0.10.2), and loads into one that fails at its first call with
``NOT_FOUND: Function abs_select_fusion not found``. Measured: a restart after the store was
cleared but the JAX cache kept answered every batch of 32 rows with a 500 (the soak test found it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib
from jax.experimental import serialize_executable

from service.device.jax_setup import private_directory

log = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parents[2]
_SOURCES = ("core", "service/device", "api/registry.py")
_SUFFIX = ".xla"


def _cpu_flags() -> str:
    """The instruction set extensions of this CPU (Linux: /proc/cpuinfo), else its name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.machine() + " " + platform.processor()


def _source_files() -> list[Path]:
    files: list[Path] = []
    for name in _SOURCES:
        path = _REPO / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def fingerprint(devices: Sequence[jax.Device]) -> str:
    """The identity of the code and machine an executable built here belongs to."""
    digest = hashlib.sha256()
    client = devices[0].client
    parts: list[Any] = [
        jax.__version__,
        jaxlib.__version__,
        client.platform,
        client.platform_version,
        [device.device_kind for device in devices],
        len(devices),
        os.environ.get("XLA_FLAGS", ""),
        str(jax.dtypes.canonicalize_dtype(float)),  # float64 only with x64 on
        _cpu_flags(),
    ]
    digest.update(repr(parts).encode())
    for path in _source_files():
        digest.update(str(path.relative_to(_REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def jax_cache_is_on() -> bool:
    """Whether JAX's persistent compilation cache is on in this process."""
    config: Any = jax.config  # its flags are attributes the stubs do not declare
    return bool(config.jax_enable_compilation_cache and config.jax_compilation_cache_dir)


class ExecutableStore:
    """Executables of one fingerprint in a private directory, one file per kernel key."""

    def __init__(self, directory: str, fingerprint: str) -> None:
        self.directory = private_directory(directory)
        self.fingerprint = fingerprint
        self._prefix = fingerprint[:24]

    def _path(self, key: object) -> Path:
        name = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        return self.directory / f"{self._prefix}-{name}{_SUFFIX}"

    def load(
        self, key: object, devices: Sequence[jax.Device] | None = None
    ) -> jax.stages.Compiled | None:
        """The stored executable of ``key``, or None (missing, another fingerprint, unreadable)."""
        path = self._path(key)
        try:
            with path.open("rb") as file:
                header = pickle.load(file)
                if header != {"fingerprint": self.fingerprint, "key": key}:
                    return None
                entry = pickle.load(file)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 — a damaged entry is a miss, and is rebuilt
            log.warning("unreadable stored executable %s; it will be rebuilt", path, exc_info=True)
            return None
        try:
            return serialize_executable.deserialize_and_load(
                entry["payload"],
                entry["in_tree"],
                entry["out_tree"],
                execution_devices=None if devices is None else list(devices),
            )
        except Exception:  # noqa: BLE001 — e.g. a backend that cannot load it: compile instead
            log.warning("stored executable %s did not load; compiling", path, exc_info=True)
            return None

    def save(self, key: object, executable: jax.stages.Compiled) -> None:
        """Write ``key``'s executable (atomically: a reader never sees half a file); nothing while
        JAX's persistent cache is on, since its hits do not serialize whole (see the module)."""
        if jax_cache_is_on():
            log.warning("JAX's persistent compilation cache is on: %s is not stored", key)
            return
        try:
            payload, in_tree, out_tree = serialize_executable.serialize(executable)
        except Exception:  # noqa: BLE001 — not every backend serializes; the kernel still runs
            log.warning("executable of %s cannot be serialized", key, exc_info=True)
            return
        header = {"fingerprint": self.fingerprint, "key": key}
        entry = {"payload": payload, "in_tree": in_tree, "out_tree": out_tree}
        path = self._path(key)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        with partial.open("wb") as file:  # the header first: keys() reads only that
            pickle.dump(header, file, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.dump(entry, file, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, path)

    def keys(self) -> list[Any]:
        """The kernel keys stored under this fingerprint (read from each entry)."""
        keys: list[Any] = []
        for path in sorted(self.directory.glob(f"{self._prefix}-*{_SUFFIX}")):
            try:
                with path.open("rb") as file:
                    header = pickle.load(file)
            except Exception:  # noqa: BLE001 — damaged: load() will say so if it is needed
                continue
            if header.get("fingerprint") == self.fingerprint:
                keys.append(header["key"])
        return keys
