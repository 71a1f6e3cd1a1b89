"""The result model of the health checks: statuses, check results, reports, masking.

A check function returns ``None``/``True``, ``False``, a :class:`CheckResult` or raises;
the runner turns that into a :class:`CheckOutcome`, and a probe's outcomes into a
:class:`HealthReport` whose status is :func:`aggregate` of them. Everything a body may
show of a failure passes through :func:`mask_details` first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..logs import mask_url_credentials

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "LIVE",
    "MAX_ERROR_TEXT",
    "READY",
    "STATUSES",
    "TIMEOUT_REASON",
    "UNHEALTHY",
    "CheckFunc",
    "CheckOutcome",
    "CheckResult",
    "HealthCheck",
    "HealthReport",
    "UnknownGroupError",
    "aggregate",
    "mask_details",
    "mask_secrets",
]

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
STATUSES = (HEALTHY, DEGRADED, UNHEALTHY)

#: Group of the checks that gate traffic (``/health/ready``): the dependencies.
READY = "ready"
#: Group of the checks of the process alone (``/health/live``); empty unless you add some.
LIVE = "live"

TIMEOUT_REASON = "timeout"
MAX_ERROR_TEXT = 500
_MAX_DETAIL_DEPTH = 8
_KV_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]+)")

CheckFunc = TypeVar("CheckFunc", bound=Callable[[], Any])


def mask_secrets(text: str) -> str:
    """Mask passwords in URLs (``redis://:***@host``) and in libpq ``password=...`` pairs."""
    text = mask_url_credentials(text)
    if "assword" in text or "ASSWORD" in text:
        text = _KV_PASSWORD.sub(r"\g<1>***", text)
    return text


def mask_details(value: Any, _depth: int = 0) -> Any:
    """``value`` with :func:`mask_secrets` applied to every string in it, however nested.

    Mappings become dicts and lists, tuples and sets become lists; numbers, booleans
    and ``None`` stay; any other object becomes its masked ``str()`` (what the JSON
    body would print). Deeper than 8 levels the rest is cut to ``"..."``.
    """
    if isinstance(value, str):
        return mask_secrets(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if _depth >= _MAX_DETAIL_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        return {_mask_key(k): mask_details(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [mask_details(item, _depth + 1) for item in value]
    return mask_secrets(str(value))


def _mask_key(key: Any) -> Any:
    if key is None or isinstance(key, (bool, int, float)):
        return key
    return mask_secrets(key if isinstance(key, str) else str(key))


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """What a check may return to say more than healthy / unhealthy.

    A check function returns ``None`` or ``True`` (healthy), ``False`` (unhealthy), a
    ``CheckResult``, or raises (unhealthy). ``reason`` and ``details`` appear in bodies
    only when details are shown.

    .. code-block:: python

        @obs.health_check("queue", critical=False)
        def queue_depth():
            depth = queue.depth()
            if depth > 1000:
                return CheckResult.degraded("queue backlog", depth=depth)
    """

    status: str = HEALTHY
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {self.status!r}")

    @classmethod
    def healthy(cls, **details: Any) -> CheckResult:
        """A healthy result, with optional details."""
        return cls(HEALTHY, None, details)

    @classmethod
    def degraded(cls, reason: str, **details: Any) -> CheckResult:
        """Working, but not as it should: the whole report turns degraded (still 200)."""
        return cls(DEGRADED, reason, details)

    @classmethod
    def unhealthy(cls, reason: str, **details: Any) -> CheckResult:
        """Not working: the report turns unhealthy if the check is critical, else degraded."""
        return cls(UNHEALTHY, reason, details)


@dataclass(frozen=True)
class HealthCheck:
    """A registered check.

    :param name: unique per app; the ``check`` label of ``health_check_status``.
    :param func: called with no arguments on a pool thread (may be ``async def``).
    :param critical: whether its failure makes the whole report unhealthy (else degraded).
    :param timeout: seconds; ``None`` means ``GATEWAY_OBS_HEALTH_TIMEOUT``.
    :param groups: groups it belongs to besides "all" (``ready``, ``live`` or your own).
    :param target: what it talks to, shown with the details (secrets masked by the caller).
    """

    name: str
    func: Callable[[], Any]
    critical: bool = True
    timeout: float | None = None
    groups: frozenset[str] = frozenset({READY})
    target: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("a health check needs a non-empty name")
        if not callable(self.func):
            raise TypeError(f"health check {self.name!r} is not callable")
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not 0 < self.timeout < float("inf")
        ):
            raise ValueError(f"health check {self.name!r}: timeout must be seconds > 0")
        if any(not isinstance(g, str) or not g for g in self.groups):
            raise ValueError(f"health check {self.name!r}: groups must be non-empty strings")

    def same_definition(self, other: HealthCheck) -> bool:
        """Whether ``other`` is this check defined again (an app factory that runs again
        defines the same function again: not a clash of names)."""
        if self.func is other.func:
            return True
        mine, theirs = (
            (getattr(f, "__module__", None), getattr(f, "__qualname__", None))
            for f in (self.func, other.func)
        )
        return None not in mine and mine == theirs


@dataclass(frozen=True)
class CheckOutcome:
    """One check's result in a report."""

    name: str
    status: str
    response_time_ms: float
    critical: bool = True
    reason: str | None = None
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        """Status and response time; with ``details`` also reason, error and details."""
        body: dict[str, Any] = {"status": self.status, "response_time_ms": self.response_time_ms}
        if details:
            body["critical"] = self.critical
            if self.reason is not None:
                body["reason"] = self.reason
            if self.error is not None:
                body["error"] = self.error
            if self.details:
                body["details"] = dict(self.details)
        return body


@dataclass(frozen=True)
class HealthReport:
    """The result of one probe: ``status`` and ``checks`` (name -> :class:`CheckOutcome`).

    ``draining`` is true on the answer of a draining app, which runs no check.
    """

    status: str
    checks: Mapping[str, CheckOutcome]
    timestamp: str
    uptime_seconds: float
    version: str | None
    group: str | None = None
    draining: bool = False

    @property
    def ok(self) -> bool:
        """``True`` unless the report is unhealthy."""
        return self.status != UNHEALTHY

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        """The JSON body; ``details`` adds reasons, errors, hosts and figures."""
        body: dict[str, Any] = {
            "status": self.status,
            "checks": {name: o.to_dict(details) for name, o in self.checks.items()},
            "timestamp": self.timestamp,
            "uptime_seconds": self.uptime_seconds,
            "version": self.version,
        }
        if self.draining:
            body["draining"] = True
        return body


def aggregate(outcomes: Iterable[CheckOutcome]) -> str:
    """Critical unhealthy -> unhealthy; non-critical unhealthy or any degraded -> degraded."""
    status = HEALTHY
    for outcome in outcomes:
        if outcome.status == UNHEALTHY:
            if outcome.critical:
                return UNHEALTHY
            status = DEGRADED
        elif outcome.status == DEGRADED:
            status = DEGRADED
    return status


class UnknownGroupError(ValueError):
    """A probe asked for a group that no check belongs to."""
