"""The SERVER span of each request, inside the extension's WSGI step.

:class:`ServerTracing` is the request scope of the WSGI step: the span starts at its
first ``enter``, before Flask runs; its context is current while the app and each chunk
of a streamed body run (so ``trace.get_current_span()`` and child spans see it); it ends
at the first ``exit`` after the request ended (after the last chunk of a streamed
body). It is also an error listener: a 5xx error becomes an ``exception`` event with
its message scrubbed. It sets ``ctx.trace_id``, ``ctx.span_id`` and ``ctx.trace_flags``, which the
log formatters, Sentry and the metrics exemplars read.

Spans of its own are :class:`~.spans.ServerSpan`; with a TracerProvider of the user's
the span comes from the user's tracer; with a server span already current (an outer
WSGI instrumentation) or opentelemetry-instrumentation-flask on the app, that span is
adopted: no second one is made, and the request's log lines carry its IDs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.trace.status import Status, StatusCode

from ..core.context import RequestContext, current_request
from ..core.contracts import ErrorInfo
from ..labels import STANDARD_METHODS
from .adoption import Adopted, note_ids, span_of
from .export import SpanQueue
from .propagation import Extractor
from .scrub import error_type_of
from .spans import ServerSpan

__all__ = ["ServerTracing"]

_MASK64 = (1 << 64) - 1
_MAX_PATH = 2048
_MAX_CACHED = 1024
_getrandbits = random.getrandbits
_time_ns = time.time_ns
_perf_counter = time.perf_counter
_get_current = otel_context.get_current
_attach = otel_context.attach
_detach = otel_context.detach
_set_span = trace.set_span_in_context
_get_textmap = propagate.get_global_textmap
_EMPTY_CONTEXT = Context()
_ERROR = Status(StatusCode.ERROR)


class ServerTracing:
    """Request scope and error listener of the server spans; see the module's docstring.

    :param excluded: paths never traced (the extension's own endpoints; a live set).
    :param extractor: reads the incoming trace context through the global propagator.
    :param sample_bound: a new trace is sampled when its ID's low 64 bits are below it
        (the rule of the SDK's ``TraceIdRatioBased``).
    :param queue: where finished spans of ours go (``None``: exporter ``none``).
    :param foreign: the user's tracer, when the app runs on the user's TracerProvider.
    :param instrumented: whether opentelemetry-instrumentation-flask traces an app.
    :param scrub: masks an exception's message for its event.
    """

    def __init__(
        self,
        app: Any,
        excluded: set[str],
        extractor: Extractor,
        sample_bound: int,
        queue: SpanQueue | None,
        foreign: trace.Tracer | None,
        instrumented: Callable[[Any], bool],
        ua_max: int,
        scrub: Callable[[str], str],
    ) -> None:
        self.app = app
        self.excluded = excluded
        self.extractor = extractor
        self._instrumented: bool | None = None
        #: Whether the first request found a current context (None: not asked yet).
        self._outer: bool | None = None
        self.sample_bound = sample_bound
        self.queue = queue
        self.foreign = foreign
        self.instrumented = instrumented
        self.ua_max = ua_max
        self.scrub = scrub
        self._names: dict[tuple[str, str | None], str] = {}
        self._hosts: dict[tuple[str | None, str, str], tuple[str, int | None]] = {}
        self._protocols: dict[str, str] = {}

    # --- scope: the span starts at the first enter, ends at the exit after the end -----

    def enter(self, ctx: RequestContext) -> Any:
        span = ctx.span
        if span is not None:  # a streamed body's next chunk, or its close
            if type(span) is ServerSpan:
                return _attach(_set_span(span, span.parent_context)), ctx
            if isinstance(span, Adopted):
                return None
            return _attach(_set_span(span)), ctx
        environ = ctx.environ
        if ctx.finished or environ.get("PATH_INFO") in self.excluded:
            return None
        # Something current already (an outer WSGI instrumentation's span, an outer
        # middleware's baggage)? Asked on every request once the first one found some.
        current = None
        if self._outer is not False:
            current = _get_current()
            self._outer = bool(current) or bool(self._outer)
            if current and self._adopt_outer(ctx, current):
                return None
        instrumented = self._instrumented
        if instrumented is None:  # the app is instrumented before it serves, or never
            instrumented = self._instrumented = self.instrumented(self.app)
        if instrumented:
            ctx.span = Adopted()  # the Flask instrumentation's span comes (Correlator)
            return None
        # The incoming context, through the global propagator (see propagation.py).
        propagator = _get_textmap()
        extractor = self.extractor
        if propagator is not extractor.propagator:
            extractor.learn(propagator)
        parent_context = None
        keys = extractor.keys
        if keys is None:
            parent_context = propagator.extract(environ, getter=extractor.getter)
        else:
            for key in keys:
                if key in environ:
                    parent_context = propagator.extract(environ, getter=extractor.getter)
                    break
        base = parent_context or current or _EMPTY_CONTEXT
        if self.foreign is not None:
            span = self._start_foreign(ctx, parent_context)
            return _attach(_set_span(span, base)), ctx
        parent = None
        if parent_context is not None:
            found = trace.get_current_span(parent_context).get_span_context()
            if found.is_valid:
                parent = found
        if parent is None:
            bits = _getrandbits(192)  # a new trace: its ID and the span's in one draw
            if not bits >> 64 or not bits & _MASK64:  # an all-zero ID is invalid
                bits |= (1 << 64) | 1
            trace_id = bits >> 64
            span_id = bits & _MASK64
            ids = bits.to_bytes(24, "big").hex()  # cheaper than two format specs
            ctx.trace_id = ids[:32]
            ctx.span_id = ids[32:]
            sampled = (trace_id & _MASK64) < self.sample_bound
        else:
            trace_id = parent.trace_id
            sampled = parent.trace_flags.sampled
            span_id = _getrandbits(64) or 1
            ctx.trace_id = trace_id.to_bytes(16, "big").hex()
            ctx.span_id = span_id.to_bytes(8, "big").hex()
        if sampled:
            ctx.trace_flags = "01"
            span = ServerSpan(
                trace_id, span_id, base, parent, self._request_attributes(ctx), _time_ns()
            )
        else:
            ctx.trace_flags = "00"
            span = ServerSpan(trace_id, span_id, base, parent)
        ctx.span = span
        return _attach(_set_span(span, base)), ctx

    def exit(self, token: Any) -> None:
        if token is None:
            return
        otel_token, ctx = token
        _detach(otel_token)
        if not ctx.finished:
            return  # a streamed body: the span ends with its last chunk or its close
        span = ctx.span
        if type(span) is ServerSpan:
            if span.sampled and not span.ended:
                self._end(ctx, span)
        elif span.is_recording():
            self._end_foreign(ctx, span)

    def _adopt_outer(self, ctx: RequestContext, current: Context) -> bool:
        outer = trace.get_current_span(current)
        outer_context = outer.get_span_context()
        if not outer_context.is_valid:
            return False
        ctx.span = Adopted(outer)
        note_ids(
            ctx, outer_context.trace_id, outer_context.span_id, outer_context.trace_flags.sampled
        )
        return True

    def _start_foreign(self, ctx: RequestContext, parent_context: Any) -> Any:
        method = ctx.environ.get("REQUEST_METHOD", "GET")
        assert self.foreign is not None
        span = self.foreign.start_span(
            method if method in STANDARD_METHODS else "HTTP",
            context=parent_context,
            kind=SpanKind.SERVER,
            attributes=self._request_attributes(ctx),
        )
        span_context = span.get_span_context()
        note_ids(ctx, span_context.trace_id, span_context.span_id, span_context.trace_flags.sampled)
        ctx.span = span
        return span

    def _end(self, ctx: RequestContext, span: ServerSpan) -> None:
        route, status = ctx.route, ctx.status
        attributes = span.attributes
        if route is not None:
            attributes["http.route"] = route
        attributes["http.response.status_code"] = status
        if status >= 500:
            attributes.setdefault("error.type", str(status))
            if span.status is None:
                span.status = _ERROR
        duration = _perf_counter() - ctx.start
        span.finish(self._name(ctx.method, route), span.start_ns + int(duration * 1e9))
        if self.queue is not None:
            self.queue.put(span)

    def _end_foreign(self, ctx: RequestContext, span: Any) -> None:
        """End a span of the user's TracerProvider."""
        route, status = ctx.route, ctx.status
        if route is not None:
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            if "error.type" not in (getattr(span, "attributes", None) or {}):
                span.set_attribute("error.type", str(status))
            span.set_status(_ERROR)
        span.update_name(self._name(ctx.method, route))
        span.end()

    def _name(self, method: str, route: str | None) -> str:
        key = (method, route)
        name = self._names.get(key)
        if name is None:
            verb = method if method in STANDARD_METHODS else "HTTP"
            name = verb if route is None else f"{verb} {route}"
            if len(self._names) < _MAX_CACHED:
                self._names[key] = name
        return name

    def _request_attributes(self, ctx: RequestContext) -> dict[str, Any]:
        environ = ctx.environ
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        if len(path) > _MAX_PATH:
            path = path[:_MAX_PATH]
        scheme = environ.get("wsgi.url_scheme", "http")
        attributes: dict[str, Any] = {
            "http.request.method": method if method in STANDARD_METHODS else "_OTHER",
            "url.path": path,
            "url.scheme": scheme,
            "request_id": ctx.request_id,
        }
        if method not in STANDARD_METHODS:
            attributes["http.request.method_original"] = method[:64]
        address, port = self._server(environ.get("HTTP_HOST"), environ, scheme)
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
        client = environ.get("REMOTE_ADDR")
        if client:
            attributes["client.address"] = client
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            attributes["user_agent.original"] = agent[: self.ua_max]
        protocol = environ.get("SERVER_PROTOCOL")
        if protocol:
            version = self._protocols.get(protocol)
            if version is None:
                version = protocol.rpartition("/")[2][:16]
                if len(self._protocols) < 16:
                    self._protocols[protocol] = version
            attributes["network.protocol.version"] = version
        return attributes

    def _server(self, host: str | None, environ: Any, scheme: str) -> tuple[str, int | None]:
        key = (host, environ.get("SERVER_NAME", ""), environ.get("SERVER_PORT", ""))
        found = self._hosts.get(key)
        if found is not None:
            return found
        address: str = key[1]
        port_text: str = key[2]
        if host:
            host = host[:256]
            if host.startswith("["):  # [::1]:8080
                address, _, rest = host[1:].partition("]")
                port_text = rest[1:] if rest.startswith(":") else ""
            elif host.count(":") == 1:
                address, _, port_text = host.partition(":")
            else:
                address, port_text = host, ""
            if not port_text:
                port_text = "443" if scheme == "https" else "80"
        port = int(port_text) if port_text.isdigit() and int(port_text) < 65536 else None
        found = (address, port)
        if len(self._hosts) < _MAX_CACHED:
            self._hosts[key] = found
        return found

    # --- error listener ---------------------------------------------------------------

    def on_error(self, info: ErrorInfo) -> None:
        if info.status < 500:
            return
        span = span_of(current_request.get())
        if span is None or not span.is_recording():
            return
        error = info.error
        kind = error_type_of(error)
        try:
            message = self.scrub(str(error))
        except Exception:
            message = ""
        span.add_event("exception", {"exception.type": kind, "exception.message": message})
        span.set_attribute("error.type", kind)
        span.set_status(_ERROR)
