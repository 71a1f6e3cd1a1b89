"""Health checks: the result model, a concurrent runner with timeouts and a cache, the
endpoints, and the built-in checks (Redis, PostgreSQL, memory, disk).

The built-in checks (:mod:`.checks`) and the libraries they use (redis, psycopg2) are
imported only when a check of theirs is configured.
"""

from .model import (
    DEGRADED,
    HEALTHY,
    LIVE,
    READY,
    UNHEALTHY,
    CheckFunc,
    CheckOutcome,
    CheckResult,
    HealthCheck,
    HealthReport,
    UnknownGroupError,
    aggregate,
    mask_details,
    mask_secrets,
)
from .runner import HealthRunner, runner_of
from .setup import HealthSetup, init_app, unchecked_builtins

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "LIVE",
    "READY",
    "UNHEALTHY",
    "CheckFunc",
    "CheckOutcome",
    "CheckResult",
    "HealthCheck",
    "HealthReport",
    "HealthRunner",
    "HealthSetup",
    "UnknownGroupError",
    "aggregate",
    "init_app",
    "mask_details",
    "mask_secrets",
    "runner_of",
    "unchecked_builtins",
]
