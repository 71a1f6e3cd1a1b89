"""Production observability and resilience for Flask API gateways, in one extension."""

from ._version import __version__
from .config import ConfigError
from .errors import (
    AppError,
    BadRequestError,
    CircuitOpenError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
)
from .extension import GatewayObs
from .logs import get_logger, get_request_id

__all__ = [
    "AppError",
    "BadRequestError",
    "CircuitOpenError",
    "ConfigError",
    "ConflictError",
    "ForbiddenError",
    "GatewayObs",
    "NotFoundError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "ValidationError",
    "__version__",
    "get_logger",
    "get_request_id",
]
