"""One app's reporter: which errors to report, the request's context on its events, the
per-request step, and the drain.

Errors reach Sentry through the extension's error handler (one listener in
``state.error_listeners``). The request's context (request ID tag, route as
transaction, user, trace, headers, query, body) is added by :meth:`SentryReporter.enrich`,
which runs only when an event is really being sent.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flask import Flask, current_app, has_app_context, has_request_context, request
from werkzeug.exceptions import HTTPException

from ..core.context import RequestContext, current_request
from ..core.contracts import ErrorInfo
from ..logs.redaction import REDACTED
from ..logs.secrets import BODY_LIMITS, FORM_TYPES, add_secret
from .capture import Held, capture_error, release
from .clients import flush_bindings
from .registry import EXTENSION_KEY, Binding, active_state, request_user
from .scrubber import SECRETS_HINT, Scrubber

if TYPE_CHECKING:
    from flask import Request

    from ..core.state import ObsState

__all__ = ["EVENT_ID_MEMBER", "SentryReporter", "current_reporter", "reporter_for", "reporter_of"]

#: The problem+json member that carries the id of the event reported for an error.
EVENT_ID_MEMBER = "sentry_event_id"
_MAX_CACHED = 2048

_log = logging.getLogger("flask_gateway_obs.sentry")


class SentryReporter:
    """Reports one app's errors; stored at ``app.extensions["gateway_obs_sentry"]``."""

    def __init__(self, state: ObsState, key: tuple[Any, ...], scrubber: Scrubber) -> None:
        settings = state.settings
        self.state = state
        self.key = key
        self.scrubber = scrubber
        self.send_default_pii = settings.sentry_send_default_pii
        self.report_4xx = settings.sentry_report_4xx
        self.report_operational_5xx = settings.sentry_report_operational_5xx
        self.repeat_interval = settings.sentry_repeat_interval
        self.event_id_in_body = settings.sentry_event_id_in_body
        self.body_limit = BODY_LIMITS[settings.sentry_max_request_body]
        self.tracing = settings.sentry_traces_sample_rate > 0
        #: The clock of the repeat interval (tests replace it).
        self.clock: Callable[[], float] = time.monotonic
        #: Log events held back per request (see :mod:`.capture`); empty almost always.
        self.held: Held = {}
        self._last_reported: dict[tuple[Any, ...], float] = {}
        self._repeats: dict[tuple[Any, ...], int] = {}

    @property
    def binding(self) -> Binding | None:
        """The client this app reports to (``None`` after a shutdown)."""
        state = active_state()
        return state.bindings.get(self.key) if state is not None else None

    @property
    def client(self) -> Any:
        """The ``sentry_sdk`` client this app reports to (``None`` after a shutdown)."""
        binding = self.binding
        return binding.client if binding is not None else None

    @property
    def sdk_fills_request(self) -> bool:
        """sentry-sdk's Flask integration adds the request itself (tracing on)."""
        binding = self.binding
        return self.tracing and binding is not None and binding.is_global

    def observer(self) -> RequestScope:
        """The per-request step this app needs (see :class:`RequestScope`)."""
        if self.sdk_fills_request:
            return TracedRequest(self.held, self.state.internal_paths)
        return RequestScope(self.held)

    def drain(self, seconds: float) -> None:
        """Drain hook: send this app's pending events, waiting at most ``seconds``."""
        state = active_state()
        binding = self.binding
        if state is not None and not state.forked() and binding is not None:
            flush_bindings([binding], max(seconds, 0.0))

    # error listener -------------------------------------------------------------------

    def should_report(self, info: ErrorInfo) -> bool:
        """Bugs always; operational 5xx and 4xx as configured."""
        if not info.operational:
            return True
        if info.status >= 500:
            return self.report_operational_5xx
        return self.report_4xx

    def on_error(self, info: ErrorInfo) -> None:
        """The error listener: report once, put the event id in the problem body."""
        if not self.should_report(info):
            return
        extra: dict[str, Any] | None = None
        if info.operational and info.status >= 500 and self.repeat_interval > 0:
            repeats = self._repeats_since_last(info)
            if repeats is None:
                return
            if repeats:
                extra = {"repeats_not_reported": repeats}
        error = info.error
        cause = (
            getattr(error, "original_exception", None) if isinstance(error, HTTPException) else None
        )
        bug = not info.operational
        event_id = self.capture_error(
            cause if isinstance(cause, BaseException) else error,
            handled=not bug,
            level="error" if bug or info.status >= 500 else "warning",
            tags={"status_code": str(info.status), "error_code": info.code},
            extra=extra,
        )
        if event_id is not None and self.event_id_in_body:
            info.extensions[EVENT_ID_MEMBER] = event_id

    def _repeats_since_last(self, info: ErrorInfo) -> int | None:
        """``None`` if the same operational error (route, code, status) was reported less
        than ``repeat_interval`` ago (it is counted); else how many were skipped."""
        rule = request.url_rule if has_request_context() else None
        key = (rule.rule if rule is not None else None, info.code, info.status)
        now = self.clock()
        last = self._last_reported.get(key)
        if last is not None and now - last < self.repeat_interval:
            self._repeats[key] = self._repeats.get(key, 0) + 1
            return None
        if len(self._last_reported) >= _MAX_CACHED:
            self._last_reported.clear()
        self._last_reported[key] = now
        return self._repeats.pop(key, 0)

    def capture_error(
        self,
        error: BaseException,
        *,
        handled: bool = True,
        level: str | None = None,
        tags: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Send ``error``; the event id, or ``None`` if nothing was sent."""
        return capture_error(
            self.binding,
            error,
            handled=handled,
            level=level,
            tags=tags,
            extra=extra,
            reporter=self,
            held=self.held,
        )

    # event processor (only when an event is sent) ------------------------------------

    def enrich(self, event: Any, hint: Any, req: Request | None, ctx: RequestContext | None) -> Any:
        """Add the request's context to an event captured during one of its requests.

        ``req`` is the request (``None`` if it is gone); without Flask's request context
        (an error that escaped Flask, a streamed body) the body is left out.
        """
        tags = event.get("tags")
        if not isinstance(tags, dict):
            tags = event["tags"] = {}
        if ctx is not None:
            tags.setdefault("request_id", ctx.request_id)
            if ctx.trace_id is not None:
                tags.setdefault("trace_id", ctx.trace_id)
        if event.get("type") == "transaction":
            return event
        rule = req.url_rule if req is not None else None
        route = rule.rule if rule is not None else (ctx.route if ctx is not None else None)
        if route is not None:
            event["transaction"] = route
            event["transaction_info"] = {"source": "route"}
        found = request_user.get()
        if found is not None and ctx is not None and found[0] is ctx:
            event["user"] = dict(found[1])
        attached = has_request_context()
        sdk_request = self.sdk_fills_request and attached
        if ctx is not None and (not sdk_request or ctx.span_id is not None):
            set_trace_context(event, ctx)
        secrets: set[str] = set()
        data: dict[str, Any] | None = None
        if req is not None:
            try:
                data = self.request_data(req, secrets, with_body=attached)
            except Exception:  # an unreadable body must not cost the tags and the filtering
                _log.debug("Sentry request context failed", exc_info=True)
                data = {"url": req.base_url, "method": req.method}
        elif ctx is not None:
            data = {"method": ctx.method}
        if data is not None and not sdk_request:
            event["request"] = data
        if self.send_default_pii and req is not None and req.remote_addr:
            user = event.get("user")
            if not isinstance(user, dict):
                user = event["user"] = {}
            user.setdefault("ip_address", req.remote_addr)
        if isinstance(hint, dict):
            hint[SECRETS_HINT] = secrets
        if ctx is not None:
            _drop_older_breadcrumbs(event, ctx)
        return event

    def request_data(
        self, req: Request, secrets: set[str], with_body: bool = True
    ) -> dict[str, Any]:
        """The request as Sentry's ``request`` interface, secrets already redacted.

        Every secret value met is added to ``secrets`` so that the scrubber removes it
        wherever else it appears in the event.
        """
        scrubber = self.scrubber
        data: dict[str, Any] = {"url": req.base_url, "method": req.method}
        headers: dict[str, str] = {}
        for name, value in req.headers.items():
            if scrubber.is_secret_key(name):
                headers[name] = REDACTED
                add_secret(secrets, value)
            else:
                headers[name] = value
        data["headers"] = headers
        for value in req.cookies.values():
            add_secret(secrets, value)
        if req.view_args:
            for name, value in req.view_args.items():
                if scrubber.is_secret_key(name):
                    add_secret(secrets, value)
        pairs = []
        for name, value in req.args.items(multi=True):
            if scrubber.is_secret_key(name):
                add_secret(secrets, value)
                pairs.append(f"{quote(name)}={REDACTED}")
            else:
                pairs.append(f"{quote(name)}={quote(value)}")
        if pairs:
            data["query_string"] = "&".join(pairs)
        body = self._body(req) if with_body else None
        if body is not None:
            data["data"] = scrubber.scrub_data(body, secrets)
        if self.send_default_pii and req.remote_addr:
            data["env"] = {"REMOTE_ADDR": req.remote_addr}
        return data

    def _body(self, req: Request) -> Any:
        limit = self.body_limit
        length = req.content_length
        if limit == 0 or not length or (limit is not None and length > limit):
            return None
        if req.is_json:
            return req.get_json(silent=True)
        if req.mimetype in FORM_TYPES:
            form: dict[str, Any] = {}
            for name in req.form:
                values = req.form.getlist(name)
                form[name] = values[0] if len(values) == 1 else values
            for name in req.files:
                form[name] = "[file]"
            return form
        return None


# --- the per-request step -------------------------------------------------------------------


class RequestScope:
    """Registered in ``state.observers``: each request starts with a clean sentry-sdk
    isolation scope, so tags, user, contexts and breadcrumbs set through ``sentry_sdk``
    in one request never show up on the next one served by the same thread.

    sentry-sdk's public ``Scope.clear()`` on the thread's isolation scope does it (about
    half a microsecond, no event processor and nothing per log line); at the end of the
    request, log events held back for the error handler are released if it did not
    claim them.
    """

    __slots__ = ("held", "isolation_scope")

    def __init__(self, held: Held) -> None:
        from sentry_sdk import Scope

        self.isolation_scope = Scope.get_isolation_scope
        self.held = held

    def request_started(self, ctx: RequestContext) -> None:
        self.isolation_scope().clear()

    def request_finished(
        self, ctx: RequestContext, method: str, route: str | None, status: int, duration: float
    ) -> None:
        if self.held:
            release(self.held, ctx)


class TracedRequest(RequestScope):
    """The per-request step with tracing on: sentry-sdk's WSGI middleware already gives
    each request its own isolation scope; this tags the transaction with the request ID
    and drops it for the app's own endpoints (health probes, metrics scrapes)."""

    __slots__ = ("internal_paths",)

    def __init__(self, held: Held, internal_paths: set[str]) -> None:
        super().__init__(held)
        self.internal_paths = internal_paths

    def request_started(self, ctx: RequestContext) -> None:
        from sentry_sdk import Scope

        transaction = Scope.get_current_scope().transaction
        if transaction is None:
            return
        transaction.set_tag("request_id", ctx.request_id)
        if ctx.environ.get("PATH_INFO") in self.internal_paths:
            transaction.sampled = False


def set_trace_context(event: Any, ctx: RequestContext) -> None:
    """The event's trace context from the request: its trace id (set by tracing, or from
    an incoming ``traceparent``; else its UUID request ID) and the span id of its server
    span when tracing made one. Without it, the isolation scope's trace id would tie
    every event of a thread into one trace."""
    trace_id = ctx.trace_id
    if trace_id is None:
        candidate = ctx.request_id.replace("-", "")
        trace_id = candidate if len(candidate) == 32 and _is_hex(candidate) else None
    if trace_id is None:
        trace_id = uuid.uuid4().hex
    contexts = event.get("contexts")
    if not isinstance(contexts, dict):
        contexts = event["contexts"] = {}
    trace = contexts.get("trace")
    if not isinstance(trace, dict) or trace.get("trace_id") != trace_id:
        trace = contexts["trace"] = {}
    trace["trace_id"] = trace_id
    if ctx.span_id is not None:
        trace["span_id"] = ctx.span_id
    else:
        trace.setdefault("span_id", uuid.uuid4().hex[16:])
    trace.pop("parent_span_id", None)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _drop_older_breadcrumbs(event: Any, ctx: RequestContext) -> None:
    # An app driven without the extension's request step keeps sentry_sdk's isolation
    # scope from one request to the next; keep only the breadcrumbs of this request.
    crumbs = event.get("breadcrumbs")
    values = crumbs.get("values") if isinstance(crumbs, dict) else None
    if not values:
        return
    since = time.time() - (time.perf_counter() - ctx.start)
    kept = []
    for crumb in values:
        stamp = crumb.get("timestamp") if isinstance(crumb, dict) else None
        seconds = stamp.timestamp() if isinstance(stamp, datetime) else None
        if seconds is None or seconds >= since:
            kept.append(crumb)
    crumbs["values"] = kept


# --- finding the reporter of an event ----------------------------------------------------------


def reporter_of(app: Flask) -> SentryReporter | None:
    """``app``'s reporter, or ``None`` when it does not report to Sentry."""
    reporter = app.extensions.get(EXTENSION_KEY)
    return reporter if isinstance(reporter, SentryReporter) else None


def reporter_for(environ: Mapping[str, Any]) -> SentryReporter | None:
    """The reporter of the app serving ``environ`` outside Flask's request context
    (found through the matched URL rule's map; the only app if there is one)."""
    state = active_state()
    live = list(state.reporters) if state is not None else []
    req = environ.get("werkzeug.request")
    rule = getattr(req, "url_rule", None)
    if rule is not None:
        for reporter in live:
            if reporter.state.app.url_map is rule.map:
                return reporter  # type: ignore[no-any-return]
    return live[0] if len(live) == 1 else None


def current_reporter() -> SentryReporter | None:
    """The reporter of the current app (or of the request being served)."""
    if has_app_context():
        return reporter_of(current_app)
    ctx = current_request.get()
    return reporter_for(ctx.environ) if ctx is not None else None
