"""The per-app state, ``ObsState``, stored at ``app.extensions["gateway_obs"]``.

Every concern finds an app's state through :func:`state_of` / :func:`current_state`,
never through the extension object: there is one lookup, and nothing is kept on
``GatewayObs.app``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from flask import Flask, Response, current_app, has_app_context, request

from ..logs import AccessLog
from .context import RequestContext, current_request, new_request_id, valid_request_id
from .contracts import ErrorListener, Recorder, RequestObserver, RequestScope, Tracer

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["EXTENSION_KEY", "Extension", "ObsState", "current_state", "state_of"]

EXTENSION_KEY = "gateway_obs"


class ObsState:
    """Everything the extension keeps for one app, at ``app.extensions["gateway_obs"]``.

    The concerns' own objects hang off it (``health``, ``resilience``, ``limiter``, ...);
    each concern reads its own through its own accessor.
    """

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.service = settings.service_name or app.import_name
        self.error_listeners: list[ErrorListener] = []
        self.observers: list[RequestObserver] = []
        #: Replaced by the metrics concern's recorder when metrics are enabled.
        self.recorder: Recorder = Recorder()
        #: Replaced by the tracing concern's tracer when tracing is enabled.
        self.tracer: Tracer = Tracer()
        #: Entered around the app and each chunk of a streamed body (tracing); None when off.
        self.request_scope: RequestScope | None = None
        #: Paths of the extension's own endpoints (health, metrics).
        self.internal_paths: set[str] = set()
        #: Before-request steps that may end the request by raising (the rate limiter).
        self.request_gates: list[Callable[[], None]] = []
        #: After-request steps that may change the response (rate-limit headers).
        self.response_hooks: list[Callable[[Response], Response]] = []
        #: Steps run when the app is asked to stop (flush Sentry, spans, ...), each with
        #: the seconds it may take.
        self.drain_hooks: list[Callable[[float], None]] = []
        #: True once the app was asked to stop: readiness answers 503 from then on.
        self.draining = False
        #: The health-check runner (health concern).
        self.health: Any = None
        #: Breakers, retries and bulkheads (resilience concern).
        self.resilience: Any = None
        #: The app's ``flask_limiter.Limiter`` (rate-limit concern).
        self.limiter: Any = None
        self.quiet_paths: set[str] = set(settings.log_access_exclude_paths)
        self.header_name = settings.request_id_header
        self.header_name_lower = self.header_name.lower()
        self.environ_key = "HTTP_" + self.header_name.upper().replace("-", "_")
        self.access_log = AccessLog()
        self.access_log_on = settings.log_access
        self.ua_max = settings.log_user_agent_max
        self.log = logging.getLogger("flask_gateway_obs")

    def add_internal_path(self, path: str) -> None:
        """Mark ``path`` as one of the extension's endpoints (left out of the access log)."""
        self.internal_paths.add(path)
        if not self.settings.log_access_internal:
            self.quiet_paths.add(path)

    def request_id(self, environ: dict[str, Any]) -> str:
        """The incoming request ID when valid, else a fresh UUID4."""
        request_id = environ.get(self.environ_key)
        if request_id is None or valid_request_id(request_id) is None:
            return new_request_id()
        return str(request_id)

    def current_context(self) -> RequestContext:
        """The request's context. When the app is driven without our WSGI step (e.g.
        ``app.test_request_context()`` in a user's test) a detached one is made: it
        is neither stored nor counted."""
        ctx = current_request.get()
        if ctx is not None:
            return ctx
        environ = request.environ
        return RequestContext(self.request_id(environ), self.service, time.perf_counter(), environ)

    def run_gates(self) -> None:
        """Before-request hook: the steps that may refuse a request (the rate limiter)."""
        for gate in self.request_gates:
            gate()

    def run_response_hooks(self, response: Response) -> Response:
        """After-request hook: the steps that change the response (rate-limit headers)."""
        for hook in self.response_hooks:
            response = hook(response)
        return response


class Extension(Protocol):
    """The ``GatewayObs`` object as concerns see it (they never import the extension)."""

    #: The rate-limit concern's stand-in for ``obs.limiter`` outside an app context.
    _limiter_facade: Any

    def state(self) -> ObsState:
        """The state of the current app (or of the only app set up by this object)."""
        ...

    @property
    def _states(self) -> list[ObsState]:
        """The states of the apps set up by this object that are still alive."""
        ...


def state_of(app: Flask) -> ObsState | None:
    """The extension's state of ``app``, or ``None`` if it was not set up."""
    found = app.extensions.get(EXTENSION_KEY)
    return found if isinstance(found, ObsState) else None


def current_state() -> ObsState | None:
    """The state of the current app, or ``None`` outside an app context or without it."""
    if not has_app_context():
        return None
    found = current_app.extensions.get(EXTENSION_KEY)
    return found if isinstance(found, ObsState) else None
