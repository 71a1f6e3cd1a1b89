"""GatewayObs, the extension, and the per-app state that runs the per-request step.

Per request the extension runs one WSGI step around ``app.wsgi_app``: it sets the
request ID and starts the clock before Flask runs, and finishes (metrics, access
line) when the response is done. Concerns such as metrics plug into that step as
*observers* instead of registering hooks of their own; Flask hooks are registered
only for the rate limiter, whose check needs Flask's URL matching.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from flask import Flask, Response, current_app, has_app_context, has_request_context, request

from . import errors
from .config import Settings, load_settings
from .errors import ErrorListener
from .logs import (
    AccessEntry,
    AccessLog,
    RequestContext,
    configure_logging,
    current_request,
    quiet_server_access_lines,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from _typeshed.wsgi import WSGIApplication as WSGIApp
    from flask_limiter import Limiter

    from .health import CheckFunc, HealthReport, HealthRunner, HealthSetup
    from .metrics import DependencyTracker
    from .ratelimit import DeferredLimiter
    from .resilience import Resilience
    from .resilience.breaker import CircuitBreaker
    from .resilience.retry import RetryPolicy

__all__ = [
    "EXTENSION_KEY",
    "GatewayObs",
    "ObsMiddleware",
    "ObsState",
    "Recorder",
    "RequestObserver",
    "new_request_id",
]

EXTENSION_KEY = "gateway_obs"
_F = TypeVar("_F", bound=Callable[..., Any])
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}").fullmatch
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})").fullmatch
_MAX_LOGGED_PATH = 2048


class Recorder:
    """Where concerns report what the metrics count; a no-op until metrics are on.

    Breakers, retries, rate limits and health checks call these methods on
    ``state.recorder`` and never import the metrics module themselves.
    """

    def error(self, error_type: str, source: str) -> None:
        """Count one error in ``errors_total{type,source}``."""

    def dependency(self, dependency: str, operation: str, seconds: float, failed: bool) -> None:
        """Observe one call in ``dependency_latency_seconds``; count it in
        ``errors_total{source="dependency"}`` when it failed."""

    def breaker_state(self, breaker: str, state: int) -> None:
        """Set ``circuit_breaker_state{breaker}``: 0 closed, 1 open, 2 half-open."""

    def retry_attempt(self, operation: str, outcome: str) -> None:
        """Count ``retry_attempts_total{operation,outcome}``."""

    def rate_limit_exceeded(self, route: str) -> None:
        """Count ``rate_limit_exceeded_total{route}``."""

    def health_check(self, check: str, status: str) -> None:
        """Set ``health_check_status{check}`` from healthy / degraded / unhealthy."""


class RequestObserver(Protocol):
    """A concern that wants to know when each request starts and ends."""

    def request_started(self, ctx: RequestContext) -> None:
        """Called when a request arrives, before Flask routes it (no ``flask.request`` yet)."""

    def request_finished(
        self, ctx: RequestContext, method: str, route: str | None, status: int, duration: float
    ) -> None:
        """Called once per request with the URL rule (``None`` when nothing matched), the
        final status and the duration in seconds."""


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, flags)`` of a valid W3C ``traceparent``, else ``None``."""
    if not value or len(value) > 256:
        return None
    match = _TRACEPARENT(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, flags


class ObsState:
    """Everything the extension keeps for one app, at ``app.extensions["gateway_obs"]``."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.service = settings.service_name or app.import_name
        self.error_listeners: list[ErrorListener] = []
        self.observers: list[RequestObserver] = []
        #: Replaced by the metrics module's recorder when metrics are enabled.
        self.recorder: Recorder = Recorder()
        #: Paths of the extension's own endpoints (health, metrics).
        self.internal_paths: set[str] = set()
        #: Before-request steps that may end the request by raising (the rate limiter).
        self.request_gates: list[Callable[[], None]] = []
        #: After-request steps that may change the response (rate-limit headers).
        self.response_hooks: list[Callable[[Response], Response]] = []
        #: The health-check runner (health.py).
        self.health: HealthRunner | None = None
        #: Breakers and retry policies (resilience/).
        self.resilience: Resilience | None = None
        #: The app's rate limiter, a flask_limiter.Limiter (ratelimit.py).
        self.limiter: Limiter | None = None
        self.quiet_paths: set[str] = set(settings.log_access_exclude_paths)
        self.header_name = settings.request_id_header
        self.header_name_lower = self.header_name.lower()
        self._environ_key = "HTTP_" + self.header_name.upper().replace("-", "_")
        self.access_log = AccessLog()
        self._access_log_on = settings.log_access
        self._ua_max = settings.log_user_agent_max
        self._log = logging.getLogger(__name__)

    def add_internal_path(self, path: str) -> None:
        """Mark ``path`` as one of the extension's endpoints (left out of the access log)."""
        self.internal_paths.add(path)
        if not self.settings.log_access_internal:
            self.quiet_paths.add(path)

    # --- the hot path -------------------------------------------------------------
    #
    # One step wraps the app's WSGI callable: it sets the request ID and starts the
    # clock before Flask runs, and finishes (header, metrics, access line) when the
    # response starts, while Flask's request context is still there to read the URL
    # rule. No Flask hook runs unless a concern needs one (the rate limiter's gate).

    def begin(self, environ: dict[str, Any]) -> RequestContext:
        """Start a request: its ID, trace context and clock."""
        ctx = RequestContext(self._request_id(environ), self.service, time.perf_counter(), environ)
        traceparent = environ.get("HTTP_TRACEPARENT")
        if traceparent is not None:
            parsed = parse_traceparent(traceparent)
            if parsed is not None:
                ctx.trace_id, ctx.trace_flags = parsed
        for observer in self.observers:
            try:
                observer.request_started(ctx)
            except Exception:  # instrumentation never breaks a request
                self._log.debug("request observer failed", exc_info=True)
        return ctx

    def current_context(self) -> RequestContext:
        """The request's context. When the app is driven without our WSGI step (e.g.
        ``app.test_request_context()`` in a user's test) a detached one is made: it
        is neither stored nor counted."""
        ctx = current_request.get()
        if ctx is not None:
            return ctx
        environ = request.environ
        return RequestContext(self._request_id(environ), self.service, time.perf_counter(), environ)

    def _request_id(self, environ: dict[str, Any]) -> str:
        """The incoming request ID when valid, else a fresh UUID4."""
        request_id = environ.get(self._environ_key)
        if request_id is None or _VALID_REQUEST_ID(request_id) is None:
            return new_request_id()
        return str(request_id)

    def run_gates(self) -> None:
        """Before-request hook: the steps that may refuse a request (the rate limiter)."""
        for gate in self.request_gates:
            gate()

    def run_response_hooks(self, response: Response) -> Response:
        """After-request hook: the steps that change the response (rate-limit headers)."""
        for hook in self.response_hooks:
            response = hook(response)
        return response

    def capture(self, ctx: RequestContext, status: int, size: int | None) -> None:
        """Note what the response is, while Flask's request context (if any) is still there."""
        ctx.status = status
        ctx.response_size = size
        if has_request_context():
            req = request._get_current_object()  # type: ignore[attr-defined]
            rule = req.url_rule
            ctx.method, ctx.path = req.method, req.path
            ctx.route = rule.rule if rule is not None else None
        else:  # the app failed before Flask could answer; only the environ is left
            environ = ctx.environ
            ctx.method = environ.get("REQUEST_METHOD", "GET")
            ctx.path = environ.get("PATH_INFO", "/")

    def finish(self, ctx: RequestContext) -> None:
        """End a request once: observers (metrics), then the access line."""
        if ctx.finished:
            return
        ctx.finished = True
        duration = time.perf_counter() - ctx.start
        method, path, route, status = ctx.method, ctx.path, ctx.route, ctx.status
        for observer in self.observers:
            try:
                observer.request_finished(ctx, method, route, status, duration)
            except Exception:
                self._log.debug("request observer failed", exc_info=True)
        if self._access_log_on and path not in self.quiet_paths:
            try:  # noqa: SIM105 - contextlib.suppress costs more on every request
                self._log_access(ctx, duration)
            except Exception:
                pass

    def escaped_error(self, ctx: RequestContext, start_response: StartResponse) -> Iterable[bytes]:
        """An exception escaped the app (a failing teardown hook, or a testing app that
        propagates errors): end the request as a 500 and answer problem+json if the
        response has not started; a testing app gets the exception re-raised."""
        error = sys.exc_info()[1]
        self.capture(ctx, 500, None)
        self.finish(ctx)
        if error is not None:
            errors.report_escaped(self, error)
        propagate = self.app.config.get("PROPAGATE_EXCEPTIONS")
        if propagate or (propagate is None and (self.app.testing or self.app.debug)):
            raise  # the exception being handled, as Flask itself would
        body = errors.escaped_problem(ctx.request_id, ctx.path).encode()
        headers = [
            ("Content-Type", errors.PROBLEM_JSON),
            ("Content-Length", str(len(body))),
            (self.header_name, ctx.request_id),
        ]
        start_response("500 INTERNAL SERVER ERROR", headers, sys.exc_info())
        return [body]

    def _log_access(self, ctx: RequestContext, duration: float) -> None:
        path = ctx.path
        if len(path) > _MAX_LOGGED_PATH:
            path = path[:_MAX_LOGGED_PATH] + "..."
        environ = ctx.environ
        user_agent = environ.get("HTTP_USER_AGENT")
        if user_agent is not None and len(user_agent) > self._ua_max:
            user_agent = user_agent[: self._ua_max]
        self.access_log.write(
            AccessEntry(
                ctx.method,
                path,
                ctx.route,
                ctx.status,
                round(duration * 1000.0, 3),
                environ.get("REMOTE_ADDR"),
                user_agent,
                ctx.response_size,
            )
        )


class ObsMiddleware:
    """The WSGI step around ``app.wsgi_app`` that runs the extension's hot path.

    The response is noted when it starts (status, size and the URL rule, while
    Flask's request context is still there) and the request is finished when the
    app returns, after Flask's teardown. A streamed body (no ``Content-Length``)
    finishes when the server closes it, so its duration and the in-flight gauge
    cover the streaming, and logs written while it streams keep the request ID.
    """

    __slots__ = ("state", "wsgi_app")

    def __init__(self, state: ObsState, wsgi_app: WSGIApp) -> None:
        self.state = state
        self.wsgi_app = wsgi_app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        state = self.state
        ctx = state.begin(environ)
        token = current_request.set(ctx)
        try:
            try:
                app_iter = self.wsgi_app(environ, _StartResponse(state, ctx, start_response))
            except Exception:
                # Past Flask's own handlers: a failing teardown hook, or a testing app
                # that propagates. Answer (or re-raise) and still end the request once.
                return state.escaped_error(ctx, start_response)
            if ctx.response_size is not None or ctx.status in (204, 304):
                state.finish(ctx)
                return app_iter
            return _ClosingBody(app_iter, state, ctx)
        finally:
            current_request.reset(token)


class _StartResponse:
    """Puts the request ID header on the response and notes what the response is."""

    __slots__ = ("ctx", "start_response", "state")

    def __init__(self, state: ObsState, ctx: RequestContext, start_response: StartResponse) -> None:
        self.state = state
        self.ctx = ctx
        self.start_response = start_response

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        state = self.state
        ours = state.header_name_lower
        size = None
        for index in range(len(headers) - 1, -1, -1):
            name = headers[index][0].lower()
            if name == "content-length":
                value = headers[index][1]
                size = int(value) if value.isdigit() else None
            elif name == ours:  # ours wins over one a view or an upstream set
                del headers[index]
        headers.append((state.header_name, self.ctx.request_id))
        try:
            code = int(status[:3])
        except ValueError:
            code = 500
        state.capture(self.ctx, code, size)
        return self.start_response(status, headers, exc_info)


class _ClosingBody:
    """A streamed body: iterated in the request's log context, finished when closed."""

    __slots__ = ("app_iter", "ctx", "state")

    def __init__(self, app_iter: Iterable[bytes], state: ObsState, ctx: RequestContext) -> None:
        self.app_iter = app_iter
        self.state = state
        self.ctx = ctx

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self.app_iter)
        while True:
            token = current_request.set(self.ctx)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except Exception as error:
                # The status is sent already; the error still reaches the log, the
                # metrics and Sentry, once, with the request's ID.
                errors.report_escaped(self.state, error)
                raise
            finally:
                current_request.reset(token)
            yield chunk

    def close(self) -> None:
        token = current_request.set(self.ctx)
        try:
            close = getattr(self.app_iter, "close", None)
            if close is not None:
                close()
        finally:
            ctx = self.ctx
            if ctx.status == 0:  # never started: the client went away first
                self.state.capture(ctx, 499, None)
            try:
                self.state.finish(ctx)
            finally:
                current_request.reset(token)


def new_request_id() -> str:
    """A random UUID4 as text (what ``str(uuid.uuid4())`` gives, at half the cost)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
                log_file=settings.log_file,
                max_bytes=settings.log_file_max_bytes,
                backup_count=settings.log_file_backup_count,
            )
            state.access_log = AccessLog(handlers[0])
            if settings.log_access:
                quiet_server_access_lines()
            _route_app_logger(app)
        errors.register(app, state)
        # Each concern plugs in here with one call (observers, listeners, blueprints).
        # -- concerns --
        from . import health, metrics, resilience

        metrics.init_app(app, state)  # first: the others report through state.recorder

        health.init_app(app, state, self._health_setup())
        resilience.init_app(app, state)
        from . import ratelimit

        ratelimit.init_app(app, state, self)
        from . import sentry

        sentry.init_app(app, state)
        if state.request_gates:
            # Appended, as Flask-Limiter does: a user's hooks registered before init_app
            # (one that sets g.user for a key function) run first.
            app.before_request(state.run_gates)
        if state.response_hooks:
            app.after_request(state.run_response_hooks)
        app.wsgi_app = ObsMiddleware(state, app.wsgi_app)  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = state
        self._state_refs.add(state)

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
        if has_app_context():
            found = current_app.extensions.get(EXTENSION_KEY)
            if isinstance(found, ObsState):
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

        Carries the request ID and, when a ``traceparent`` arrived, a ``traceparent``
        with the same trace-id and a fresh parent-id. Empty outside a request.
        """
        ctx = current_request.get()
        if ctx is None:
            return {}
        headers = {self.state().header_name: ctx.request_id}
        if ctx.trace_id is not None:
            headers["traceparent"] = f"00-{ctx.trace_id}-{secrets.token_hex(8)}-{ctx.trace_flags}"
        return headers

    # --- metrics (metrics.py) ---

    def track_dependency(self, name: str, operation: str = "call") -> DependencyTracker:
        """Time calls to a dependency in ``dependency_latency_seconds{dependency,operation}``.

        A context manager and a decorator (sync or async); an exception counts in
        ``errors_total{source="dependency"}``. Build ``operation`` from an outgoing
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

    def resilient(self, name: str, **kwargs: Any) -> Callable[[_F], _F]:
        """Decorator: retry (policy ``name``) around circuit breaker ``name``, resolved per
        call so it works at import time; see :func:`flask_gateway_obs.resilience.resilient`."""
        from .resilience import resilient

        return resilient(name, obs=self, **kwargs)


def _route_app_logger(app: Flask) -> None:
    # Flask gives app.logger a stderr handler of its own; let its records reach ours.
    from flask.logging import default_handler

    app.logger.removeHandler(default_handler)
    app.logger.propagate = True
