"""topk-service core: differentiable top-k operators as pure JAX functions.

Every operator works on the last axis of an ``(..., n)`` array, in float32 and float64, is jit- and
vmap-safe, takes ``k`` (and ``epsilon``, ``lengths``) as data so that new values never recompile, and
has a hand-written ``custom_jvp`` (reverse mode by transposition). Every operator is exact to a few
ulps for every finite input and every ``epsilon > 0`` of the dtype, except for the few limits that
``domain_violation`` / ``domain_limits`` state (see :mod:`core._domain`).
"""

from core._domain import MASK_MAX_RATIO_LOG2 as MASK_MAX_RATIO_LOG2
from core._domain import SOLVER_P as SOLVER_P
from core._domain import derivative_in_range as derivative_in_range
from core._domain import domain_limits as domain_limits
from core._domain import domain_violation as domain_violation
from core._domain import min_row_scale as min_row_scale
from core._domain import solver_supports_p as solver_supports_p
from core._hard import hard_topk_magnitude as hard_topk_magnitude
from core._hard import hard_topk_mask as hard_topk_mask
from core._hard import hard_topk_values as hard_topk_values
from core._isotonic import DykstraSolution as DykstraSolution
from core._isotonic import PavSolution as PavSolution
from core._isotonic import dykstra_decreasing as dykstra_decreasing
from core._isotonic import isotonic_regression as isotonic_regression
from core._isotonic import pav_decreasing as pav_decreasing
from core._permutahedron import project_permutahedron as project_permutahedron
from core._permutahedron import soft_rank as soft_rank
from core._permutahedron import soft_sort as soft_sort
from core._soft import SoftTopkInfo as SoftTopkInfo
from core._soft import SoftTopkSorted as SoftTopkSorted
from core._soft import soft_topk_mask as soft_topk_mask
from core._soft import soft_topk_sorted as soft_topk_sorted
from core._sparse import SOLVERS as SOLVERS
from core._sparse import sparse_topk_magnitude as sparse_topk_magnitude
from core._sparse import sparse_topk_mask as sparse_topk_mask
from core._sparse import sparse_topk_values as sparse_topk_values
from core._threshold import ThresholdSolution as ThresholdSolution
from core._threshold import solve_threshold as solve_threshold

__all__ = [
    "SoftTopkInfo",
    "SoftTopkSorted",
    "project_permutahedron",
    "soft_rank",
    "soft_sort",
    "soft_topk_mask",
    "soft_topk_sorted",
    "SOLVERS",
    "SOLVER_P",
    "MASK_MAX_RATIO_LOG2",
    "derivative_in_range",
    "domain_limits",
    "domain_violation",
    "min_row_scale",
    "solver_supports_p",
    "DykstraSolution",
    "PavSolution",
    "ThresholdSolution",
    "dykstra_decreasing",
    "hard_topk_magnitude",
    "hard_topk_mask",
    "hard_topk_values",
    "isotonic_regression",
    "pav_decreasing",
    "solve_threshold",
    "sparse_topk_magnitude",
    "sparse_topk_mask",
    "sparse_topk_values",
]
