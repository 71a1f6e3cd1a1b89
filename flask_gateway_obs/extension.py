"""GatewayObs, the extension: validates the config and composes the concerns in ``init_app``.

The per-request work runs in one WSGI step (:mod:`flask_gateway_obs.core.middleware`);
concerns plug into it as observers instead of registering hooks of their own, and
report to each other only through :mod:`flask_gateway_obs.core.contracts`. A concern
that is off is not even imported.
"""

from __future__ import annotations

import logging
import os
import secrets
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask

from . import errors
from .config import (
    SENTRY_OFF,
    ConfigError,
    check_overrides,
    load_settings,
    unreceived_environment,
)
from .config.resilience import uses_breaker_redis
from .core import drain
from .core.context import current_request
from .core.middleware import ObsMiddleware
from .core.state import EXTENSION_KEY, ObsState, current_state
from .logs import (
    LOGGER_NAME,
    AccessLog,
    ConsoleFormatter,
    configure_logging,
    emit,
    quiet_server_access_lines,
)

if TYPE_CHECKING:
    from flask_limiter import Limiter

    from .health import CheckFunc, HealthReport, HealthSetup
    from .metrics import DependencyTracker
    from .ratelimit import DeferredLimiter
    from .resilience.bulkheads import Bulkhead
    from .resilience.circuit import CircuitBreaker
    from .resilience.policy import RetryPolicy

__all__ = ["GatewayObs"]

_F = TypeVar("_F", bound=Callable[..., Any])


class _ConsoleOnceDebug:
    """``GATEWAY_OBS_LOG_FORMAT = auto``, decided again at the app's first request:
    ``app.run(debug=True)`` and ``app.debug = True`` after ``init_app`` turn debug on
    only once the app is set up. Gone after that request (nothing per request)."""

    __slots__ = ("handler", "state")

    def __init__(self, state: ObsState, handler: logging.Handler) -> None:
        self.state = state
        self.handler = handler

    def request_started(self, ctx: object) -> None:
        state = self.state
        # A new list: the WSGI step may be iterating the one it holds.
        state.observers = [o for o in state.observers if o is not self]
        if state.app.debug:
            settings = state.settings
            self.handler.setFormatter(ConsoleFormatter(state.service, settings.log_redact_keys))

    def request_finished(self, *args: object) -> None:
        pass


class GatewayObs:
    """Observability and resilience for a Flask API gateway.

    :param app: the app to set up now; or call :meth:`init_app` later.
    :param overrides: settings by name (``log_level="DEBUG"``) or by key
        (``GATEWAY_OBS_LOG_LEVEL="DEBUG"``); a value in ``app.config`` wins.

    .. code-block:: python

        obs = GatewayObs()

        def create_app():
            app = Flask(__name__)
            obs.init_app(app)
            return app
    """

    def __init__(self, app: Flask | None = None, **overrides: Any) -> None:
        check_overrides(overrides)  # a misspelt name fails here, not at init_app
        self._overrides = dict(overrides)
        # Weak: an app factory called many times must not keep every app alive.
        self._state_refs: weakref.WeakSet[ObsState] = weakref.WeakSet()
        self._health: HealthSetup | None = None
        self._limiter_facade: DeferredLimiter | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the config and install logging, error handling and the request hooks.

        :raises RuntimeError: if the extension is already registered on ``app``.
        :raises ConfigError: naming every bad ``GATEWAY_OBS_*`` value.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "flask-gateway-obs is already registered on this app. Call init_app(app) "
                "once per app (use one GatewayObs object per app factory); to change "
                "settings, set GATEWAY_OBS_* keys in app.config before init_app."
            )
        settings = load_settings(app.config, self._overrides)
        state = ObsState(app, settings)
        if settings.log_configure:
            console = settings.log_format == "console" or (
                settings.log_format == "auto" and app.debug
            )
            handlers = configure_logging(
                service=state.service,
                level=settings.log_level,
                console=console,
                redact_keys=settings.log_redact_keys,
                schema=settings.log_schema,
                log_file=settings.log_file,
                max_bytes=settings.log_file_max_bytes,
                backup_count=settings.log_file_backup_count,
            )
            state.access_log = AccessLog(handlers[0])
            if settings.log_format == "auto" and not console:
                state.observers.append(_ConsoleOnceDebug(state, handlers[0]))
            if settings.log_access:
                quiet_server_access_lines()
            _route_app_logger(app)
        _warn_unreceived_environment(app)
        errors.register(app, state)
        # Each concern plugs in here with one call (observers, listeners, blueprints);
        # one that is off is not imported.
        if settings.metrics_enabled:
            from . import metrics

            metrics.init_app(app, state)  # first: the others report through state.recorder
        from . import health

        health.init_app(app, state, self._health_setup())
        if uses_breaker_redis(settings):  # else made on first use (state.resilience)
            from . import resilience

            resilience.init_app(app, state)
        from . import ratelimit

        ratelimit.init_app(app, state, self)
        if settings.tracing_enabled:
            _require_otel()
            from . import tracing

            tracing.init_app(app, state)  # after metrics: drops count through state.recorder
        if _sentry_wanted(settings.sentry_dsn):
            from . import sentry

            sentry.init_app(app, state)
        from . import cli

        cli.register(app)
        if state.request_gates:
            # Appended, as Flask-Limiter does: a user's hooks registered before init_app
            # (one that sets g.user for a key function) run first.
            app.before_request(state.run_gates)
        if state.response_hooks:
            app.after_request(state.run_response_hooks)
        app.wsgi_app = ObsMiddleware(state, app.wsgi_app)  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = state
        self._state_refs.add(state)
        drain.track(state)

    @property
    def limiter(self) -> Limiter:
        """The current app's :class:`flask_limiter.Limiter`, for ``@obs.limiter.limit(...)``.

        Inside an app context it is that app's own limiter. Outside one (at import
        time, before any app exists) its ``limit``, ``shared_limit``, ``exempt`` and
        ``request_filter`` decorators apply to every app this object sets up.
        """
        from .ratelimit import limiter_for

        return limiter_for(self)

    @property
    def _states(self) -> list[ObsState]:
        """The states of the apps set up by this object that are still alive."""
        return list(self._state_refs)

    def state(self) -> ObsState:
        """The state of the current app (or of the only app set up by this object)."""
        found = current_state()
        if found is not None:
            return found
        states = self._states
        if len(states) == 1:
            return states[0]
        raise RuntimeError(
            "no flask-gateway-obs app here: call this inside an app context "
            "(with app.app_context():) of an app set up with init_app"
        )

    def propagation_headers(self) -> dict[str, str]:
        """Headers to send on outgoing calls so the upstream's logs join this request's.

        Carries the request ID and the trace context. With tracing on, the current span's
        context goes through OpenTelemetry's propagators (``traceparent``/``tracestate`` by
        default; B3 or others when configured): call it inside ``obs.track_dependency``
        and the upstream's span is a child of the client span. With tracing off, a
        ``traceparent`` that arrived is passed on with the same trace-id and a fresh
        parent-id. Empty outside a request.
        """
        ctx = current_request.get()
        if ctx is None:
            return {}
        state = self.state()
        headers = {state.header_name: ctx.request_id}
        if state.tracer.inject(headers):
            return headers
        if ctx.trace_id is not None:
            headers["traceparent"] = f"00-{ctx.trace_id}-{secrets.token_hex(8)}-{ctx.trace_flags}"
        return headers

    def begin_drain(self) -> None:
        """Take this process out of rotation before it stops, then flush what is pending.

        Every app of the process answers readiness (``/health/ready``, and ``/health``)
        with 503 from now on, at once and without running a check; every other request,
        in flight or new, is served as usual, and ``/health/live`` stays 200. Then the
        drain hooks (Sentry's flush, span exporters) run, within
        ``GATEWAY_OBS_DRAIN_FLUSH_TIMEOUT`` seconds in all; this call returns after them.
        Under gunicorn the hooks of :mod:`flask_gateway_obs.gunicorn` drain on SIGTERM.
        """
        count = drain.begin()
        emit(
            logging.getLogger(LOGGER_NAME),
            logging.INFO,
            "draining: readiness answers 503 from now on",
            {"apps": count},
        )
        drain.flush()

    # --- metrics (metrics/) ---

    def track_dependency(self, name: str, operation: str = "call") -> DependencyTracker:
        """Time calls to a dependency in ``dependency_latency_seconds{dependency,operation}``.

        A context manager and a decorator (sync or async); an exception counts in
        ``errors_total{source="dependency"}``. With tracing on, each call is also a
        CLIENT span under the request's span. Build ``operation`` from an outgoing
        URL with :func:`flask_gateway_obs.normalize_path`, never from the raw URL.

        .. code-block:: python

            with obs.track_dependency("payments", "POST /charges"):
                response = session.post(url, json=payload, timeout=2)
        """
        from .metrics import track_dependency

        return track_dependency(name, operation, obs=self)

    # --- health checks (health.py) ---

    def _health_setup(self) -> HealthSetup:
        if self._health is None:
            from .health import HealthSetup

            self._health = HealthSetup()
        return self._health

    def health_check(
        self,
        name: str,
        *,
        critical: bool = True,
        timeout: float | None = None,
        groups: Iterable[str] = ("ready",),
    ) -> Callable[[CheckFunc], CheckFunc]:
        """Register the decorated function as a health check.

        It returns ``None``/``True`` (healthy), ``False`` (unhealthy) or a
        :class:`~flask_gateway_obs.health.CheckResult`, or raises (unhealthy).
        Used before ``init_app`` it applies to every app set up later; after, to the
        current app inside an app context, else to every app of this object.

        :param name: unique per app, the ``check`` label of ``health_check_status``.
        :param critical: whether its failure makes the whole report unhealthy (else degraded).
        :param timeout: seconds (default ``GATEWAY_OBS_HEALTH_TIMEOUT``); over it is unhealthy.
        :param groups: ``("ready",)`` gates traffic (``/health/ready``); ``("live",)`` makes it
            part of liveness; ``()`` shows it on ``/health`` only.
        """
        from .health import HealthCheck

        if isinstance(groups, str):
            groups = (groups,)
        frozen_groups = frozenset(groups)

        def decorator(func: CheckFunc) -> CheckFunc:
            check = HealthCheck(name, func, critical, timeout, frozen_groups)
            self._health_setup().add_check(check, self._states)
            return func

        return decorator

    def set_redis_client(self, client: Any) -> None:
        """Check Redis through ``client`` (a ``redis.Redis``) instead of ``GATEWAY_OBS_REDIS_URL``;
        ``None`` goes back to the URL."""
        self._health_setup().set_redis_client(client, self._states)

    def set_postgres_pool(self, pool_or_dsn: Any) -> None:
        """Check PostgreSQL through a pool (``getconn``/``putconn``, e.g. psycopg2's
        ``ThreadedConnectionPool``) or a DSN instead of ``GATEWAY_OBS_DATABASE_URL``;
        ``None`` goes back to the URL."""
        self._health_setup().set_postgres(pool_or_dsn, self._states)

    def check_health(self, group: str | None = None, *, fresh: bool = False) -> HealthReport:
        """Run the health checks of ``group`` (default: all) and return the report.

        Works outside a request; cached results younger than ``GATEWAY_OBS_HEALTH_CACHE_TTL``
        are reused unless ``fresh``.

        :raises UnknownGroupError: if no check belongs to ``group``.
        """
        from .health import runner_of

        return runner_of(self.state()).run(group, fresh=fresh)

    def check_dependencies(self, *, fresh: bool = False) -> HealthReport:
        """Run the checks of the ``ready`` group: the dependencies (Redis, PostgreSQL, ...)."""
        return self.check_health("ready", fresh=fresh)

    # --- resilience (resilience/) ---

    def circuit_breaker(self, name: str, **options: Any) -> CircuitBreaker:
        """The current app's circuit breaker ``name``, created on first use.

        Use it as ``@cb``, ``@cb(fallback=f)``, ``cb.call(fn, ...)`` or ``with cb:``.
        For a decorator applied at import time use :func:`flask_gateway_obs.breaker`.

        :param options: ``fail_max``, ``reset_timeout``, ``success_threshold``,
            ``half_open_max_calls``, ``timeout``, ``storage``, ``exclude``, ``clock``,
            ``listeners``; they apply when the breaker is created.
        """
        from .resilience import of_state

        return of_state(self.state()).breakers.get(name, **options)

    def retry(self, name: str | None = None, **options: Any) -> RetryPolicy:
        """The current app's retry policy ``name`` (``GATEWAY_OBS_RETRY_POLICIES``), with
        ``options`` on top; use it as ``@policy`` or ``policy.call(fn, ...)``."""
        from .resilience import of_state

        return of_state(self.state()).retries.get(name, **options)

    def bulkhead(
        self, name: str, *, max_concurrent: int | None = None, max_wait: float | None = None
    ) -> Bulkhead:
        """The current app's bulkhead ``name``: at most ``max_concurrent`` calls at once,
        waiting up to ``max_wait`` seconds for room, else ``BulkheadFullError`` (503).

        Use it as ``@bh``, ``bh.call(fn, ...)``, ``with bh:`` or ``async with bh:``. For a
        decorator applied at import time use :func:`flask_gateway_obs.bulkhead`. The
        options apply when it is created (default ``GATEWAY_OBS_BULKHEAD_*`` and
        ``GATEWAY_OBS_BULKHEADS[name]``).
        """
        from .resilience import of_state

        options: dict[str, Any] = {}
        if max_concurrent is not None:
            options["max_concurrent"] = max_concurrent
        if max_wait is not None:
            options["max_wait"] = max_wait
        return of_state(self.state()).bulkheads.get(name, **options)

    def resilient(self, name: str, **kwargs: Any) -> Callable[[_F], _F]:
        """Decorator: retry (policy ``name``) around circuit breaker ``name``, resolved per
        call so it works at import time; see :func:`flask_gateway_obs.resilience.resilient`."""
        from .resilience.compose import resilient

        return resilient(name, obs=self, **kwargs)


def _route_app_logger(app: Flask) -> None:
    # Flask gives app.logger a stderr handler of its own; let its records reach ours.
    from flask.logging import default_handler

    app.logger.removeHandler(default_handler)
    app.logger.propagate = True


def _require_otel() -> None:
    import importlib.util

    for module in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ConfigError(
                [
                    (
                        "GATEWAY_OBS_TRACING_ENABLED",
                        True,
                        "False unless OpenTelemetry is installed: pip install "
                        "'flask-gateway-obs[otel]'",
                    )
                ]
            )


def _sentry_wanted(dsn: str | None) -> bool:
    """Whether a DSN is configured (here, or in ``SENTRY_DSN`` when the key is unset)."""
    if dsn is None:
        return bool(os.environ.get("SENTRY_DSN", "").strip())
    return dsn != SENTRY_OFF


def _warn_unreceived_environment(app: Flask) -> None:
    # Names only: a value may be a secret.
    names = unreceived_environment(app.config)
    if names:
        emit(
            logging.getLogger(LOGGER_NAME),
            logging.WARNING,
            f"environment variables that app.config never received have no effect: "
            f"{', '.join(names)}. Name them FLASK_GATEWAY_OBS_* and call "
            "app.config.from_prefixed_env() before init_app",
            {"variables": names},
        )
