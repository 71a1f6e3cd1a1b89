"""Production observability and resilience for Flask API gateways, in one extension."""

from typing import TYPE_CHECKING, Any

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
from .health import CheckResult, HealthReport
from .labels import normalize_path
from .logs import get_logger, get_request_id
from .sentry import capture_exception, capture_message, set_user

__all__ = [
    "AppError",
    "BadRequestError",
    "CheckResult",
    "CircuitOpenError",
    "ConfigError",
    "ConflictError",
    "ForbiddenError",
    "GatewayObs",
    "HealthReport",
    "NotFoundError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "ValidationError",
    "__version__",
    "breaker",
    "capture_exception",
    "capture_message",
    "get_logger",
    "get_request_id",
    "normalize_path",
    "retry",
    "set_user",
]

if TYPE_CHECKING:
    from .resilience.breaker import breaker
    from .resilience.retry import retry


def __getattr__(name: str) -> Any:
    # ``breaker`` and ``retry`` bring in pybreaker and tenacity (~40 ms): only when used.
    if name == "breaker":
        from .resilience.breaker import breaker

        return breaker
    if name == "retry":
        from .resilience.retry import retry

        return retry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
