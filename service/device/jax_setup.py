"""The private directory the executable store lives in.

JAX's own persistent compilation cache is deliberately left off: an executable it hands back
(a cache hit) serializes without its compiled functions on XLA:CPU (jaxlib 0.10.2), and a store
entry made from one fails at its first call with ``NOT_FOUND: Function ... not found`` (see
:mod:`service.device.executable_store`). The store already skips tracing, lowering and compiling.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


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
