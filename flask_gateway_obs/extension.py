"""GatewayObs, the extension, and the per-app state that runs the request hooks.

Per request the extension runs one before-request step and one after-request step
(with a teardown that only cleans up). Concerns such as metrics plug into those
steps as *observers* instead of registering hooks of their own.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from typing import Any, Protocol

from flask import Flask, Response, current_app, has_app_context, request

from . import errors
from .config import Settings, load_settings
from .errors import ErrorListener
from .logs import (
    ACCESS_LOGGER_NAME,
    RequestContext,
    configure_logging,
    current_request,
    emit,
)

__all__ = ["EXTENSION_KEY", "GatewayObs", "ObsState", "Recorder", "RequestObserver"]

EXTENSION_KEY = "gateway_obs"
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
        """Called in the before-request step, after the request ID is set."""

    def request_finished(self, ctx: RequestContext, status: int, duration: float) -> None:
        """Called once per request with the final status and duration in seconds."""


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
        self.quiet_paths: set[str] = set(settings.log_access_exclude_paths)
        self.header_name = settings.request_id_header
        self._environ_key = "HTTP_" + self.header_name.upper().replace("-", "_")
        self._access_logger = logging.getLogger(ACCESS_LOGGER_NAME)
        self._access_log = settings.log_access
        self._ua_max = settings.log_user_agent_max
        self._log = logging.getLogger(__name__)

    def add_internal_path(self, path: str) -> None:
        """Mark ``path`` as one of the extension's endpoints (left out of the access log)."""
        self.internal_paths.add(path)
        if not self.settings.log_access_internal:
            self.quiet_paths.add(path)

    # --- the hot path -------------------------------------------------------------

    def before_request(self) -> None:
        """Set the request ID and start the clock; runs first among before-request steps."""
        self._start()

    def _start(self) -> RequestContext:
        environ = request.environ
        request_id = environ.get(self._environ_key)
        if request_id is None or _VALID_REQUEST_ID(request_id) is None:
            request_id = str(uuid.uuid4())
        ctx = RequestContext(request_id, self.service, time.perf_counter())
        traceparent = environ.get("HTTP_TRACEPARENT")
        if traceparent is not None:
            parsed = parse_traceparent(traceparent)
            if parsed is not None:
                ctx.trace_id, ctx.trace_flags = parsed
        current_request.set(ctx)
        for observer in self.observers:
            try:
                observer.request_started(ctx)
            except Exception:  # instrumentation never breaks a request
                self._log.debug("request observer failed", exc_info=True)
        return ctx

    def current_context(self) -> RequestContext:
        """The request's context, started now if an earlier step failed before ours ran."""
        ctx = current_request.get()
        return ctx if ctx is not None else self._start()

    def after_request(self, response: Response) -> Response:
        """Echo the request ID, then record metrics and the access line."""
        ctx = current_request.get()
        if ctx is None:
            ctx = self._start()
        response.headers[self.header_name] = ctx.request_id
        self._finish(ctx, response.status_code, response)
        return response

    def teardown_request(self, exc: BaseException | None) -> None:
        """Account for a request whose after-request step never ran; clear the context."""
        ctx = current_request.get()
        if ctx is None:
            return
        if not ctx.finished:
            self._finish(ctx, 500, None)
        current_request.set(None)

    def _finish(self, ctx: RequestContext, status: int, response: Response | None) -> None:
        if ctx.finished:
            return
        ctx.finished = True
        duration = time.perf_counter() - ctx.start
        for observer in self.observers:
            try:
                observer.request_finished(ctx, status, duration)
            except Exception:
                self._log.debug("request observer failed", exc_info=True)
        if self._access_log:
            try:  # noqa: SIM105 - contextlib.suppress costs more on every request
                self._log_access(status, duration, response)
            except Exception:
                pass

    def _log_access(self, status: int, duration: float, response: Response | None) -> None:
        path = request.path
        if path in self.quiet_paths:
            return
        if len(path) > _MAX_LOGGED_PATH:
            path = path[:_MAX_LOGGED_PATH] + "..."
        environ = request.environ
        method = request.method
        rule = request.url_rule
        user_agent = environ.get("HTTP_USER_AGENT")
        if user_agent is not None and len(user_agent) > self._ua_max:
            user_agent = user_agent[: self._ua_max]
        emit(
            self._access_logger,
            logging.INFO,
            f"{method} {path} {status}",
            {
                "method": method,
                "path": path,
                "route": rule.rule if rule is not None else None,
                "status": status,
                "duration_ms": round(duration * 1000.0, 3),
                "remote_addr": environ.get("REMOTE_ADDR"),
                "user_agent": user_agent,
                "response_size": response.content_length if response is not None else None,
            },
        )


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
        self._states: list[ObsState] = []
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
            configure_logging(
                service=state.service,
                level=settings.log_level,
                console=console,
                redact_keys=settings.log_redact_keys,
                log_file=settings.log_file,
                max_bytes=settings.log_file_max_bytes,
                backup_count=settings.log_file_backup_count,
            )
            _route_app_logger(app)
        errors.register(app, state)
        # Each concern plugs in here with one call (observers, listeners, blueprints).
        # -- concerns --
        app.before_request_funcs.setdefault(None, []).insert(0, state.before_request)
        app.after_request(state.after_request)
        app.teardown_request(state.teardown_request)
        app.extensions[EXTENSION_KEY] = state
        self._states.append(state)

    def state(self) -> ObsState:
        """The state of the current app (or of the only app set up by this object)."""
        if has_app_context():
            found = current_app.extensions.get(EXTENSION_KEY)
            if isinstance(found, ObsState):
                return found
        if len(self._states) == 1:
            return self._states[0]
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


def _route_app_logger(app: Flask) -> None:
    # Flask gives app.logger a stderr handler of its own; let its records reach ours.
    from flask.logging import default_handler

    app.logger.removeHandler(default_handler)
    app.logger.propagate = True
