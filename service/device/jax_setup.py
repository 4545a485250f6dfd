"""Process-wide JAX configuration the service needs, applied once before anything compiles."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import jax

log = logging.getLogger(__name__)


def private_directory(directory: str) -> Path:
    """``directory``, created 0700 if missing; ``PermissionError`` unless it is this user's alone.

    Compiled executables are trusted code (whoever can write them can run code here).
    """
    path = Path(directory).expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if path.stat().st_uid != os.getuid() or mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(
            f"compilation cache {path} must be owned by this user and not group/world writable"
        )
    return path


def enable_persistent_cache(directory: str) -> str | None:
    """Turn on JAX's persistent compilation cache in a private ``directory`` ('' leaves it off).

    The thresholds are lowered so that small kernels are written too (the default minimum compile
    time of 1 s would skip every top-k kernel, and a restart would recompile all of them). The
    XLA-internal caches are turned off: with them on (JAX 0.10's default), the cache directory's
    own path enters every cache key, so a cache copied or mounted at another path (a Docker image
    primed at build time, a volume) never hits; measured in bench/RESULTS.md, "Start-up".
    """
    if not directory:
        return None
    path = private_directory(directory)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    log.info("JAX persistent compilation cache in %s", path)
    return str(path)
