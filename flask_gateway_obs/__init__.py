"""Production observability and resilience for Flask API gateways, in one extension.

Importing the package loads the extension and the error types only; everything else
(health, Sentry, resilience) is imported when first used.
"""

from typing import TYPE_CHECKING

from ._version import __version__
from .config import ConfigError
from .core.context import bind_context, get_request_id
from .core.lazy import lazy_getattr
from .errors import (
    AppError,
    BadRequestError,
    BulkheadFullError,
    CircuitOpenError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
)
from .extension import GatewayObs
from .labels import normalize_path
from .logs import get_logger

__all__ = [
    "AppError",
    "BadRequestError",
    "BulkheadFullError",
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
    "bind_context",
    "breaker",
    "bulkhead",
    "capture_exception",
    "capture_message",
    "get_logger",
    "get_request_id",
    "normalize_path",
    "retry",
    "set_user",
]

if TYPE_CHECKING:
    from .health import CheckResult, HealthReport
    from .resilience.breaker import breaker
    from .resilience.bulkhead import bulkhead
    from .resilience.retry import retry
    from .sentry.helpers import capture_exception, capture_message, set_user

#: Public names whose modules are imported on first use: name -> module.
_LAZY = {
    "CheckResult": "health",
    "HealthReport": "health",
    "breaker": "resilience.breaker",
    "bulkhead": "resilience.bulkhead",
    "retry": "resilience.retry",
    "capture_exception": "sentry.helpers",
    "capture_message": "sentry.helpers",
    "set_user": "sentry.helpers",
}


# breaker/retry bring in pybreaker and tenacity (~40 ms), the Sentry helpers the Sentry
# adapter's registry (not sentry-sdk): only when used.
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
