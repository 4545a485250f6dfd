"""The wire contract of topk-service, shared by the server and its clients.

Only pydantic (and httpx for :mod:`api.client`); never ``core`` or ``service``.
"""

from api.errors import ErrorBody as ErrorBody
from api.errors import FieldError as FieldError
from api.limits import Limits as Limits
from api.models import DERIVATIVE_FIELDS as DERIVATIVE_FIELDS
from api.models import DenseResponse as DenseResponse
from api.models import DenseRow as DenseRow
from api.models import IsotonicRequest as IsotonicRequest
from api.models import OperatorInfo as OperatorInfo
from api.models import OperatorsResponse as OperatorsResponse
from api.models import ParameterInfo as ParameterInfo
from api.models import SoftSortRequest as SoftSortRequest
from api.models import TopKRequest as TopKRequest
from api.models import TopKResponse as TopKResponse
from api.models import TopKRow as TopKRow
from api.validation import validate_topk_request as validate_topk_request

__all__ = [
    "DERIVATIVE_FIELDS",
    "DenseResponse",
    "DenseRow",
    "ErrorBody",
    "FieldError",
    "IsotonicRequest",
    "Limits",
    "OperatorInfo",
    "OperatorsResponse",
    "ParameterInfo",
    "SoftSortRequest",
    "TopKRequest",
    "TopKResponse",
    "TopKRow",
    "validate_topk_request",
]
