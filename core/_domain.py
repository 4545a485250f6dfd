"""What each operator computes exactly, stated as data, so that a caller can refuse the rest up front.

Measured reason: every operator was swept over scales ``1e-30 ... 3e38`` and epsilons
``1e-45 ... 3.4e38`` in float32 and float64 against float64 and 120-digit decimal oracles
(tests/core); this module records the few limits that remain, as constants and pure predicates
(plain Python, no JAX), so that a service can answer 422 naming the field and list the limits.

The limits:

* **Sparse solvers and p** (:data:`SOLVER_P`): Dykstra serves ``p = 2`` only.
* **Sparse mask / values**: exact while ``max|x| / epsilon <= 2^140`` (:data:`MASK_MAX_RATIO_LOG2`).
  Beyond, a row mixing scores near ``3e38`` with scores near ``epsilon`` (below ``1e-4`` in
  float32) cannot be brought into units where both are normal numbers.
* **Outputs in the units of x** (sorted values, isotonic fits, top-k values and magnitudes): the
  device flushes subnormal results to zero (denormals-are-zero), so a row whose largest ``|x|`` is
  below :func:`min_row_scale` (``2^-103 ~ 9.9e-32`` in float32) loses up to all of its answer.
  Above it, a flushed entry errs by less than one ulp of ``max|x|``. Masks and ranks are exact
  for subnormal scores too (they are read from their bits).
* **Derivatives** scale like ``tangent / epsilon``; :func:`derivative_in_range` bounds them.

Everything else (soft sort/rank, SOFT mask, hard top-k, isotonic PAV, the sparse threshold and PAV
solvers) is exact to a few ulps for every finite input and every ``epsilon > 0`` of the dtype.
Dykstra is approximate by design (stops at 10 ulps of movement per cycle: measured within 73
ulps of ``max|x|``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "MASK_MAX_RATIO_LOG2",
    "SOLVER_P",
    "derivative_in_range",
    "domain_limits",
    "domain_violation",
    "min_row_scale",
    "solver_supports_p",
]

SOLVER_P: Mapping[str, tuple[float, ...] | None] = MappingProxyType(
    {"auto": None, "threshold": None, "pav": None, "dykstra": (2.0,)}
)
"""The ``p`` each sparse solver supports: ``None`` for every ``p > 1``, else the tuple of values.

Dykstra's alternating projections (the GPU method of Sander et al., ICML 2023) project onto pairs of
order constraints in the Euclidean norm, which is the block problem for ``p = 2`` only; for another
``p`` each pair projection becomes a one-dimensional root and the method loses its closed-form
steps, so the exact solvers (``threshold``, ``pav``) serve every ``p``.
"""

MASK_MAX_RATIO_LOG2 = 140
"""The sparse mask (and values) is exact while ``log2(max|x| / epsilon) <= 140``."""

_FORMATS = {"float32": (-126, 23, 128), "float64": (-1022, 52, 1024)}  # minexp, nmant, maxexp

# Outputs in the units of x, per operator of the service's table (the others are dimensionless).
_X_UNITS = {"sort": {"values"}, "isotonic": {"values"}, "sparse": {"values", "magnitude"}}
_X_UNITS["hard"] = {"values", "magnitude"}


def _format(dtype: str) -> tuple[int, int, int]:
    if str(dtype) not in _FORMATS:
        raise ValueError(f"dtype must be one of {tuple(_FORMATS)}, got {dtype!r}")
    return _FORMATS[str(dtype)]


def solver_supports_p(solver: str, p: float) -> bool:
    """Whether the sparse ``solver`` computes the operators for this ``p`` (see :data:`SOLVER_P`)."""
    if solver not in SOLVER_P or not p > 1:
        return False
    supported = SOLVER_P[solver]
    return supported is None or any(abs(p - value) < 1e-9 for value in supported)


def min_row_scale(dtype: str = "float32") -> float:
    """The smallest non-zero ``max|x|`` of a row whose outputs in x's units are exact:
    ``2^(minexp + nmant)``, where one ulp of ``max|x|`` is the smallest normal number."""
    minexp, nmant, _ = _format(dtype)
    return math.ldexp(1.0, minexp + nmant)


def derivative_in_range(
    max_abs_tangent: float,
    epsilon: float,
    *,
    max_abs_x: float = 1.0,
    n: int = 1,
    p: float = 2.0,
    dtype: str = "float32",
) -> bool:
    """Whether every JVP/VJP entry is representable, by the bound ``|J t| <= c n |t| / epsilon``.

    Derivatives of the masks, ranks and the SOFT mask are at most ``2 r |t| / epsilon``
    (``r = 1 / (p - 1)``, 1 for the others), the values' add a factor ``max|x|``, the magnitude's
    use ``epsilon / max|x|^(2 - p)``; a sort's or an isotonic fit's are at most ``|t|``. The bound
    is what is checked (a request far below the overflow passes), with a margin of ``2^8 n``.
    """
    if max_abs_tangent == 0:
        return True
    _, _, maxexp = _format(dtype)
    r = 1.0 / (p - 1.0) if p > 1 else 1.0
    scale = max(max_abs_x, 1.0) * max(r, 1.0) * 256 * max(n, 1)
    return math.log2(max_abs_tangent) + math.log2(scale) - math.log2(epsilon) < maxexp - 1


def domain_violation(
    operator: str,
    output: str = "values",
    *,
    max_abs_x: float,
    epsilon: float | None = None,
    p: float | None = None,
    solver: str | None = None,
    dtype: str = "float32",
) -> tuple[str, str] | None:
    """``None`` if the core answers this request exactly, else ``(field, reason)``.

    ``operator``/``output`` as in the service's table (``sparse``, ``soft``, ``hard``, ``sort``,
    ``rank``, ``isotonic``; ``mask``, ``values``, ``magnitude``); ``max_abs_x`` the largest ``|x|``
    of the row (the caller takes the largest over a batch's rows only if it refuses them all).
    """
    if solver is not None and p is not None and not solver_supports_p(solver, p):
        supported = SOLVER_P.get(solver, ())
        return "p" if solver in SOLVER_P else "solver", (
            f"solver={solver!r} supports p in {supported}, got p={p}"
        )
    if output in _X_UNITS.get(operator, set()) and 0 < max_abs_x < min_row_scale(dtype):
        return "x", (
            f"rows whose largest |x| is below {min_row_scale(dtype):.3g} have subnormal outputs, "
            "which the device flushes to zero"
        )
    sparse_mask = operator == "sparse" and output in ("mask", "values")
    ratio_log2 = math.log2(max_abs_x) - math.log2(epsilon) if epsilon and max_abs_x > 0 else 0.0
    if sparse_mask and ratio_log2 > MASK_MAX_RATIO_LOG2:
        return "epsilon", (
            f"the sparse mask needs max|x| / epsilon <= 2^{MASK_MAX_RATIO_LOG2}; "
            f"got {max_abs_x:.3g} / {epsilon:.3g}"
        )
    return None


def domain_limits(dtype: str = "float32") -> dict[str, tuple[str, ...]]:
    """The limits of each operator of the service's table, in words (for ``GET /v1/operators``)."""
    small = f"{min_row_scale(dtype):.3g}"
    x_units = f"rows with 0 < max|x| < {small}: outputs in x's units are subnormal (flushed to 0)"
    derivative = "derivatives scale like |tangent| / epsilon and must be representable"
    return {
        "sparse": (
            "solver='dykstra' supports p = 2 only",
            f"mask and values: max|x| / epsilon <= 2^{MASK_MAX_RATIO_LOG2}",
            x_units + " (values, magnitude)",
            derivative,
        ),
        "soft": (derivative,),
        "hard": (x_units + " (values, magnitude)",),
        "sort": (x_units,),
        "rank": (derivative,),
        "isotonic": (x_units,),
    }
