"""Flask-Limiter internals read by the rate limiter's fast path; nowhere else.

Verified with Flask-Limiter 4.1.1 (the 4.1 series is let through). The fast path
resolves the limits of an endpoint once, from the limit manager's groups, and counts
them straight on the storage with Flask-Limiter's own keys; to do so it reads the
limiter's settings, intercepts its check (``_check_request_limit``, which the decorated
views call), fills its per-request state when a view asks for ``current_limit`` and
hears of every change of the limits. Outside the verified series :data:`VERIFIED` is
false and the rate-limit concern runs Flask-Limiter's own evaluation (its public path),
saying so once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from flask_limiter import ApplicationLimit, ExemptionScope, HeaderNames, Limit, Limiter
from flask_limiter import RequestLimit as RequestLimit
from flask_limiter._limits import RuntimeLimit as RuntimeLimit
from flask_limiter._manager import LimitManager
from limits import WindowStats

__all__ = [
    "OWN_STATE_ATTR",
    "VERIFIED",
    "CheckInterceptor",
    "RequestLimit",
    "RuntimeLimit",
    "Settings",
    "flask_limiters_context",
    "has_limits",
    "limit_groups",
    "middleware_has_limits",
    "settings_of",
    "storage_dead",
    "track_changes",
    "uses_own_state",
    "with_window",
]

#: Flask-Limiter series (major, minor) this module was checked against (4.1.1).
VERIFIED_SERIES = ((4, 1),)


def series(text: str) -> tuple[int, int]:
    """The (major, minor) of a version string; (0, 0) when it has none."""
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


#: Whether the installed Flask-Limiter is verified (tests may switch it off).
VERIFIED = series(version("flask-limiter")) in VERIFIED_SERIES

#: Where Flask-Limiter keeps its per-request state, on the request context (read inline by
#: the fast path: ``request_state.get(OWN_STATE_ATTR)``; see :func:`uses_own_state`).
OWN_STATE_ATTR = "_limiter_request_context"


class CheckInterceptor(Limiter):
    """A :class:`flask_limiter.Limiter` whose check (the before-request step, and the one
    every decorated view runs) goes through :meth:`fast_step` first."""

    def fast_step(self, callable_name: str | None, in_middleware: bool) -> None:
        """Run one step of the check; :meth:`own_step` is Flask-Limiter's."""
        self.own_step(callable_name, in_middleware)

    def own_step(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        """Flask-Limiter's own check of one step."""
        Limiter._check_request_limit(self, callable_name, in_middleware)

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        self.fast_step(callable_name, in_middleware)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the fast path needs of a set-up limiter (lists and sets are the live ones)."""

    headers_enabled: bool
    limit_header: str
    remaining_header: str
    reset_header: str
    key_prefix: str
    request_identifier: Callable[..., str] | None
    fail_on_first_breach: bool
    request_filters: list[Callable[[], bool]]
    marked_for_limiting: set[str]
    #: Something that only Flask-Limiter's own evaluation does is configured.
    own_evaluation: bool


def settings_of(limiter: Limiter) -> Settings:
    """The fast path's view of ``limiter``'s settings, read once after ``init_app``."""
    mapping = limiter._header_mapping
    return Settings(
        headers_enabled=bool(limiter._headers_enabled and mapping),
        limit_header=mapping[HeaderNames.LIMIT],
        remaining_header=mapping[HeaderNames.REMAINING],
        reset_header=mapping[HeaderNames.RESET],
        key_prefix=limiter._key_prefix,
        request_identifier=limiter._request_identifier,
        fail_on_first_breach=bool(limiter._fail_on_first_breach),
        request_filters=limiter._request_filters,
        marked_for_limiting=limiter._marked_for_limiting,
        own_evaluation=bool(
            limiter._in_memory_fallback_enabled
            or limiter._swallow_errors
            or limiter._meta_limits
            or limiter._on_breach
            or limiter._on_meta_breach
        ),
    )


def storage_dead(limiter: Limiter) -> bool:
    """Whether Flask-Limiter's own in-memory fallback is in use."""
    return bool(limiter._storage_dead)


def middleware_has_limits(limiter: Limiter) -> bool:
    """Whether the before-request step has anything to evaluate: application, default,
    meta or blueprint limits, or Flask-Limiter's fallback (decorated routes check in
    their wrapper)."""
    manager = limiter.limit_manager
    return bool(
        manager._application_limits
        or manager._default_limits
        or manager._blueprint_limits
        or limiter._meta_limits
        or limiter._in_memory_fallback
    )


def has_limits(limiter: Limiter) -> bool:
    """Whether any limit is declared: for the before-request step, or on a view or a block."""
    return middleware_has_limits(limiter) or bool(limiter.limit_manager._decorated_limits)


def limit_groups(limiter: Limiter, callable_name: str) -> list[Limit]:
    """Every limit group that may apply to the view ``callable_name``."""
    manager = limiter.limit_manager
    return [
        *manager._application_limits,
        *manager._default_limits,
        *manager._decorated_limits.get(callable_name, ()),
        *(group for groups in manager._blueprint_limits.values() for group in groups),
    ]


def uses_own_state(limiter: Limiter, request_state: dict[str, Any]) -> bool:
    """Whether Flask-Limiter's own per-request state holds ``limiter`` in this request."""
    contexts = request_state.get(OWN_STATE_ATTR)
    return contexts is not None and limiter in contexts


def flask_limiters_context(limiter: Limiter) -> Any:
    """Flask-Limiter's per-request state of ``limiter`` (its ``LimiterContext``)."""
    return Limiter.context.fget(limiter)  # type: ignore[attr-defined]


def with_window(limit: RequestLimit, reset: float, remaining: int) -> RequestLimit:
    """``limit`` with its window as a hit left it (what Flask-Limiter would read back)."""
    limit._window = WindowStats(reset, remaining)
    return limit


class _TrackedLimitManager(LimitManager):
    """Flask-Limiter's limit manager, telling the limiter whenever its limits change."""

    def __init__(self, source: LimitManager, changed: Callable[[], None]) -> None:
        super().__init__(
            application_limits=source._application_limits,
            default_limits=source._default_limits,
            decorated_limits=source._decorated_limits,
            blueprint_limits=source._blueprint_limits,
            route_exemptions=source._route_exemptions,
            blueprint_exemptions=source._blueprint_exemptions,
        )
        self._endpoint_hints = source._endpoint_hints
        self._changed = changed

    def set_application_limits(self, limits: list[ApplicationLimit]) -> None:
        super().set_application_limits(limits)
        self._changed()

    def set_default_limits(self, limits: list[Limit]) -> None:
        super().set_default_limits(limits)
        self._changed()

    def add_decorated_limit(self, route: str, limit: Limit | None, override: bool = False) -> None:
        current = self._decorated_limits.get(route)
        # limit(...) used as a context manager sets the same limit again on every call.
        same = limit is None or (
            current is not None and (list(current) == [limit] if override else limit in current)
        )
        super().add_decorated_limit(route, limit, override)
        if not same:
            self._changed()

    def add_blueprint_limit(self, blueprint: str, limit: Limit | None) -> None:
        current = self._blueprint_limits.get(blueprint)
        super().add_blueprint_limit(blueprint, limit)
        if limit is not None and (current is None or limit not in current):
            self._changed()

    def add_route_exemption(self, route: str, scope: ExemptionScope) -> None:
        changed = self._route_exemptions.get(route) != scope
        super().add_route_exemption(route, scope)
        if changed:
            self._changed()

    def add_blueprint_exemption(self, blueprint: str, scope: ExemptionScope) -> None:
        changed = self._blueprint_exemptions.get(blueprint) != scope
        super().add_blueprint_exemption(blueprint, scope)
        if changed:
            self._changed()

    def add_endpoint_hint(self, endpoint: str, callable: str) -> None:
        known = callable in self._endpoint_hints.get(endpoint, ())
        super().add_endpoint_hint(endpoint, callable)
        if not known:
            self._changed()


def track_changes(limiter: Limiter, changed: Callable[[], None]) -> None:
    """Call ``changed`` whenever a limit, an exemption or an endpoint hint is added."""
    limiter.limit_manager = _TrackedLimitManager(limiter.limit_manager, changed)
