"""What is running: the package, JAX and the devices (the labels of ``topk_build_info``)."""

from __future__ import annotations

from importlib import metadata

import jax
import jaxlib


def build_info() -> dict[str, str]:
    """Low-cardinality facts about this process, fixed for its lifetime."""
    try:
        version = metadata.version("topk-service")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        version = "unknown"
    devices = jax.devices()
    return {
        "version": version,
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device_count": str(len(devices)),
        "device_kind": devices[0].device_kind if devices else "none",
    }
