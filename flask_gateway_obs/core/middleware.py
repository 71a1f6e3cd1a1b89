"""The WSGI step around ``app.wsgi_app`` that runs the extension's hot path.

Per request: :func:`begin` sets the request ID and starts the clock before Flask
runs; the response is noted when it starts (status, size and the URL rule, while
Flask's request context is still there); :func:`finish` ends the request once, after
Flask's teardown (observers such as metrics, then the access line). No Flask hook
runs unless a concern needs one (the rate limiter's gate).

A streamed body (no ``Content-Length``) finishes when it is exhausted or closed,
whichever comes first, so its duration and the in-flight gauge cover the streaming
and logs written while it streams keep the request ID. A concern's
:class:`~.contracts.RequestScope` (the tracing span) is entered and exited with the
request context: around the app call, and around each chunk and the close.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import errors
from .._compat import flask as compat_flask
from ..logs import AccessEntry, mask_url_credentials
from .context import (
    RequestContext,
    current_request,
    new_request_id,
    parse_traceparent,
    valid_request_id,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from _typeshed.wsgi import WSGIApplication as WSGIApp

    from .state import ObsState

__all__ = ["ObsMiddleware", "begin", "capture", "finish"]

_MAX_LOGGED_PATH = 2048
#: Status lines and Content-Length values seen, and their numbers (int() of a text is
#: dear per request); bounded whatever upstreams send.
_STATUS_CODES: dict[str, int] = {}
_LENGTHS: dict[str, int] = {}
_MAX_CACHED = 1024


def _status_code(status: str) -> int:
    try:
        code = int(status[:3])
    except ValueError:
        return 500
    if len(_STATUS_CODES) < _MAX_CACHED:
        _STATUS_CODES[status] = code
    return code


def begin(state: ObsState, environ: dict[str, Any]) -> RequestContext:
    """Start a request: its ID, trace context and clock."""
    request_id = environ.get(state.environ_key)
    if request_id is None or valid_request_id(request_id) is None:
        request_id = new_request_id()
    ctx = RequestContext(request_id, state.service, time.perf_counter(), environ)
    traceparent = environ.get("HTTP_TRACEPARENT")
    if traceparent is not None:
        parsed = parse_traceparent(traceparent)
        if parsed is not None:
            ctx.trace_id, ctx.trace_flags = parsed
    for observer in state.observers:
        try:
            observer.request_started(ctx)
        except Exception:  # instrumentation never breaks a request
            state.log.debug("request observer failed", exc_info=True)
    return ctx


def capture(ctx: RequestContext, status: int, size: int | None) -> None:
    """Note what the response is, while Flask's request context (if any) is still there."""
    ctx.status = status
    ctx.response_size = size
    flask_ctx = compat_flask.request_ctx()
    if flask_ctx is not None:
        req = flask_ctx.request
        rule = req.url_rule
        ctx.method, ctx.path = req.method, req.path
        ctx.route = rule.rule if rule is not None else None
    else:  # the app failed before Flask could answer; only the environ is left
        environ = ctx.environ
        ctx.method = environ.get("REQUEST_METHOD", "GET")
        ctx.path = environ.get("PATH_INFO", "/")


def finish(state: ObsState, ctx: RequestContext) -> None:
    """End a request once: observers (metrics), then the access line."""
    if ctx.finished:
        return
    ctx.finished = True
    duration = time.perf_counter() - ctx.start
    method, path, route, status = ctx.method, ctx.path, ctx.route, ctx.status
    for observer in state.observers:
        try:
            observer.request_finished(ctx, method, route, status, duration)
        except Exception:
            state.log.debug("request observer failed", exc_info=True)
    if state.access_log_on and path not in state.quiet_paths:
        try:  # noqa: SIM105 - contextlib.suppress costs more on every request
            _log_access(state, ctx, duration)
        except Exception:
            pass


def _log_access(state: ObsState, ctx: RequestContext, duration: float) -> None:
    # The context is the line's fields: nothing is built per request.
    environ = ctx.environ
    user_agent = environ.get("HTTP_USER_AGENT")
    if user_agent is not None and len(user_agent) > state.ua_max:
        user_agent = user_agent[: state.ua_max]
    ctx.duration = duration
    ctx.remote_addr = environ.get("REMOTE_ADDR")
    ctx.user_agent = user_agent
    path = ctx.path
    if len(path) > _MAX_LOGGED_PATH or "@" in path:
        # A path too long, or one that may hold URL credentials (/fetch/https://u:pw@host).
        state.access_log.write(
            AccessEntry(
                ctx.method,
                _logged_path(path),
                ctx.route,
                ctx.status,
                duration,
                ctx.remote_addr,
                user_agent,
                ctx.response_size,
            )
        )
    else:
        state.access_log.write(ctx)


def _logged_path(path: str) -> str:
    """A path as the access line shows it: cut to its bound, URL credentials masked."""
    if len(path) > _MAX_LOGGED_PATH:
        path = path[:_MAX_LOGGED_PATH] + "..."
    return mask_url_credentials(path)


def escaped_error(
    state: ObsState, ctx: RequestContext, start_response: StartResponse
) -> Iterable[bytes]:
    """An exception escaped the app (a failing teardown hook, or a testing app that
    propagates errors): end the request as a 500 and answer problem+json if the
    response has not started; a testing app gets the exception re-raised."""
    error = sys.exc_info()[1]
    capture(ctx, 500, None)
    finish(state, ctx)
    if error is not None:
        errors.report_escaped(state, error)
    app = state.app
    propagate = app.config.get("PROPAGATE_EXCEPTIONS")
    if propagate or (propagate is None and (app.testing or app.debug)):
        raise  # the exception being handled, as Flask itself would
    body = errors.escaped_problem(ctx.request_id, ctx.path).encode()
    headers = [
        ("Content-Type", errors.PROBLEM_JSON),
        ("Content-Length", str(len(body))),
        (state.header_name, ctx.request_id),
    ]
    start_response("500 INTERNAL SERVER ERROR", headers, sys.exc_info())
    return [body]


class ObsMiddleware:
    """The WSGI step around ``app.wsgi_app``; see the module's docstring."""

    __slots__ = ("state", "wsgi_app")

    def __init__(self, state: ObsState, wsgi_app: WSGIApp) -> None:
        self.state = state
        self.wsgi_app = wsgi_app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        state = self.state
        ctx = begin(state, environ)
        token = current_request.set(ctx)
        scope = state.request_scope
        entered = scope.enter(ctx) if scope is not None else None
        try:
            try:
                respond = partial(_start_response, state, ctx, start_response)
                app_iter = self.wsgi_app(environ, respond)
            except Exception:
                # Past Flask's own handlers: a failing teardown hook, or a testing app
                # that propagates. Answer (or re-raise) and still end the request once.
                return escaped_error(state, ctx, start_response)
            if ctx.response_size is not None or ctx.status in (204, 304):
                finish(state, ctx)
                return app_iter
            return _ClosingBody(app_iter, state, ctx)
        finally:
            if scope is not None:
                scope.exit(entered)
            current_request.reset(token)


def _start_response(
    state: ObsState,
    ctx: RequestContext,
    start_response: StartResponse,
    status: str,
    headers: list[tuple[str, str]],
    exc_info: Any = None,
) -> Callable[[bytes], object]:
    """The app's ``start_response`` (bound per request with ``functools.partial``, which
    costs less than an object with ``__call__``): puts the request ID header on the
    response and notes what the response is."""
    ours = state.header_name_lower
    ours_length = len(ours)
    size = None
    theirs = False
    for name, value in headers:
        length = len(name)  # cheaper than lower() on every name
        if length == 14 and name.lower() == "content-length":
            size = _LENGTHS.get(value)
            if size is None and value.isdigit():
                size = int(value)
                if len(_LENGTHS) < _MAX_CACHED:
                    _LENGTHS[value] = size
        elif length == ours_length and name.lower() == ours:
            theirs = True
    if theirs:  # ours wins over one a view or an upstream set
        headers[:] = [header for header in headers if header[0].lower() != ours]
    headers.append((state.header_name, ctx.request_id))
    if ctx.headers:
        headers.extend(ctx.headers)
    code = _STATUS_CODES.get(status)
    if code is None:
        code = _status_code(status)
    capture(ctx, code, size)
    return start_response(status, headers, exc_info)


class _ClosingBody:
    """A streamed body: iterated in the request's log context, finished when exhausted
    or closed, whichever comes first."""

    __slots__ = ("app_iter", "ctx", "state")

    def __init__(self, app_iter: Iterable[bytes], state: ObsState, ctx: RequestContext) -> None:
        self.app_iter = app_iter
        self.state = state
        self.ctx = ctx

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self.app_iter)
        scope = self.state.request_scope
        while True:
            token = current_request.set(self.ctx)
            entered = scope.enter(self.ctx) if scope is not None else None
            try:
                chunk = next(chunks)
            except StopIteration:
                finish(self.state, self.ctx)
                return
            except Exception as error:
                # The status is sent already; the error still reaches the log, the
                # metrics and Sentry, once, with the request's ID.
                errors.report_escaped(self.state, error)
                raise
            finally:
                if scope is not None:
                    scope.exit(entered)
                current_request.reset(token)
            yield chunk

    def close(self) -> None:
        token = current_request.set(self.ctx)
        scope = self.state.request_scope
        entered = scope.enter(self.ctx) if scope is not None else None
        try:
            close = getattr(self.app_iter, "close", None)
            if close is not None:
                close()
        finally:
            ctx = self.ctx
            if ctx.status == 0:  # never started: the client went away first
                capture(ctx, 499, None)
            try:
                finish(self.state, ctx)
            finally:
                if scope is not None:
                    scope.exit(entered)
                current_request.reset(token)
