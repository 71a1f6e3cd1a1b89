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

Per request, once the first has shown nothing else is current, ``enter`` stays on one
flat path: no incoming W3C header is a new trace, its IDs taken from a batch
(:mod:`.ids`), an unsampled span made without ``__init__``; a lone ``traceparent`` is
read as the W3C propagator reads it (through the WSGI step's own reading when the value
is a plain version-00 one); any other header, or another propagator, goes through the
propagator's ``extract``. The context is built and attached as
:mod:`flask_gateway_obs._compat.opentelemetry` allows (directly where verified, else
through OpenTelemetry's public API).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from .._compat.opentelemetry import ContextPath
from ..core.context import RequestContext, current_request
from ..core.contracts import ErrorInfo
from ..labels import STANDARD_METHODS
from ..logs import mask_url_credentials
from .adoption import Adopted, follow_flask_instrumentation, note_ids, span_of
from .export import SpanQueue
from .ids import POOL, new_ids
from .propagation import BAGGAGE_KEY, TRACEPARENT_KEY, TRACESTATE_KEY, Extractor
from .scrub import error_type_of
from .spans import ServerSpan

__all__ = ["ServerTracing"]

_MASK64 = (1 << 64) - 1
_MAX_PATH = 2048
_MAX_CACHED = 1024
_time_ns = time.time_ns
_perf_counter = time.perf_counter
_set_span = trace.set_span_in_context
_get_textmap = propagate.get_global_textmap
_W3C_KEYS = (TRACEPARENT_KEY, TRACESTATE_KEY, BAGGAGE_KEY)
_PARENT_HEX = slice(36, 52)  # of a version-00 traceparent
_LOW_HEX = slice(16, None)  # a trace ID's low 64 bits, which the ratio sampler reads
_pop_ids = POOL.pop
_new_span = object.__new__
_EMPTY_CONTEXT = Context()
_ERROR = Status(StatusCode.ERROR)
_log = logging.getLogger("flask_gateway_obs.tracing")


class ServerTracing:
    """Request scope and error listener of the server spans; see the module's docstring.

    :param excluded: paths never traced (the extension's own endpoints; a live set).
    :param extractor: reads the incoming trace context through the global propagator.
    :param sample_bound: a new trace is sampled when its ID's low 64 bits are below it
        (the rule of the SDK's ``TraceIdRatioBased``).
    :param queue: where finished spans of ours go (``None``: exporter ``none``).
    :param foreign: the user's tracer, when the app runs on the user's TracerProvider.
    :param instrumented: whether opentelemetry-instrumentation-flask traces an app.
    :param scrub: ``(message, exception)`` -> the message as its event carries it
        (scrubbed as Sentry scrubs it).
    :param path: how OpenTelemetry's context is reached (fast or public path).
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
        scrub: Callable[[str, BaseException | None], str],
        path: ContextPath,
    ) -> None:
        self.app = app
        self.excluded = excluded
        self.extractor = extractor
        self._instrumented: bool | None = None
        #: Whether the first request found a current context (None: not asked yet).
        self._outer: bool | None = None
        #: Whether requests take the common path: no outer context, no other
        #: instrumentation, the extension's own provider (known after the first).
        self._plain = False
        self.sample_bound = sample_bound
        self.queue = queue
        self.foreign = foreign
        self.instrumented = instrumented
        self.ua_max = ua_max
        self.scrub = scrub
        self._names: dict[tuple[str, str | None], str] = {}
        self._hosts: dict[tuple[str | None, str, str], tuple[str, int | None]] = {}
        self._protocols: dict[str, str] = {}
        self._attach = path.attach
        self._detach = path.detach
        self._get_current = path.get_current
        self._span_key = path.span_key
        self._parse_traceparent = path.parse_traceparent

    # --- scope: the span starts at the first enter, ends at the exit after the end -----

    def enter(self, ctx: RequestContext) -> Any:
        if ctx.span is not None:  # a streamed body's next chunk, or its close
            return self._reenter(ctx)
        environ = ctx.environ
        if ctx.finished or environ.get("PATH_INFO") in self.excluded:
            return None
        if not self._plain:
            return self._enter_first(ctx, environ)
        # The common case, kept flat: no outer context, the extension's own provider.
        propagator = _get_textmap()
        extractor = self.extractor
        if propagator is not extractor.propagator:
            extractor.learn(propagator)
        traceparent = environ.get("HTTP_TRACEPARENT")
        if (
            not extractor.w3c
            or "HTTP_TRACESTATE" in environ
            or "HTTP_BAGGAGE" in environ
            or (
                traceparent is not None
                and not (extractor.reads_traceparent and type(traceparent) is str)
            )
        ):
            span = self._start_incoming(ctx, environ, propagator, None)
            ctx.span = span
            return self._attach(self._with_span(span, span.parent_context)), ctx
        if traceparent is not None:  # alone: parsed here as the W3C propagator would
            span = self._start_remote(ctx, _EMPTY_CONTEXT, traceparent)
            ctx.span = span
            key = self._span_key
            if key is None:
                return self._attach(_set_span(span, _EMPTY_CONTEXT)), ctx
            return self._attach(Context({key: span})), ctx
        # No incoming context: a new trace.
        try:
            trace_hex, span_hex = _pop_ids()
        except IndexError:
            trace_hex, span_hex = new_ids()
        ctx.trace_id = trace_hex
        ctx.span_id = span_hex
        bound = self.sample_bound
        if bound and (bound > _MASK64 or int(trace_hex[_LOW_HEX], 16) < bound):
            ctx.trace_flags = "01"
            attributes = self._request_attributes(ctx)
            span = ServerSpan(trace_hex, span_hex, _EMPTY_CONTEXT, None, attributes, _time_ns())
        else:
            ctx.trace_flags = "00"
            span = _new_span(ServerSpan)  # unsampled: no __init__ frame (see ServerSpan)
            span.trace_hex = trace_hex
            span.span_hex = span_hex
            span.parent_context = _EMPTY_CONTEXT
        ctx.span = span
        key = self._span_key
        if key is None:
            return self._attach(_set_span(span, _EMPTY_CONTEXT)), ctx
        return self._attach(Context({key: span})), ctx

    def _reenter(self, ctx: RequestContext) -> Any:
        span = ctx.span
        if type(span) is ServerSpan:
            return self._attach(self._with_span(span, span.parent_context)), ctx
        if isinstance(span, Adopted):
            return None
        return self._attach(self._with_span(span, self._get_current())), ctx

    def _enter_first(self, ctx: RequestContext, environ: Any) -> Any:
        """``enter`` while something may be current already (the first request, an outer
        WSGI instrumentation or middleware), or with another instrumentation's span or the
        user's TracerProvider."""
        current = None
        if self._outer is not False:  # asked on every request once one found a context
            current = self._get_current()
            self._outer = bool(current) or bool(self._outer)
            if current and self._adopt_outer(ctx, current):
                return None
        instrumented = self._instrumented
        if instrumented is None:  # the app is instrumented before it serves, or never
            instrumented = self._instrumented = self.instrumented(self.app)
            if instrumented:  # its span may be unsampled: no span processor sees it
                try:
                    follow_flask_instrumentation(self.app)
                except Exception:  # instrumentation never breaks a request
                    _log.debug("could not follow the Flask instrumentation", exc_info=True)
        self._plain = self._outer is False and not instrumented and self.foreign is None
        if instrumented:
            ctx.span = Adopted()  # the Flask instrumentation's span comes (Correlator)
            return None
        propagator = _get_textmap()
        extractor = self.extractor
        if propagator is not extractor.propagator:
            extractor.learn(propagator)
        if self.foreign is not None:
            parent_context = None
            if not extractor.w3c or any(key in environ for key in _W3C_KEYS):
                parent_context = extractor.extract(propagator, environ, current)
            span = self._start_foreign(ctx, parent_context)
            base = parent_context or current or _EMPTY_CONTEXT
            return self._attach(self._with_span(span, base)), ctx
        if extractor.w3c and not any(key in environ for key in _W3C_KEYS):
            span = self._start_new(ctx, current or _EMPTY_CONTEXT)
        else:
            span = self._start_incoming(ctx, environ, propagator, current)
        ctx.span = span
        return self._attach(self._with_span(span, span.parent_context)), ctx

    def exit(self, token: Any) -> None:
        if token is None:
            return
        otel_token, ctx = token
        try:
            self._detach(otel_token)
        except Exception:  # as the public detach: logged, never raised into the request
            _log.warning("could not restore the OpenTelemetry context", exc_info=True)
        if not ctx.finished:
            return  # a streamed body: the span ends with its last chunk or its close
        span = ctx.span
        if type(span) is ServerSpan:
            if span.sampled and not span.ended:
                self._end(ctx, span)
        elif span.is_recording():
            self._end_foreign(ctx, span)

    def _with_span(self, span: Any, base: Context) -> Context:
        """``trace.set_span_in_context(span, base)``."""
        key = self._span_key
        if key is None:
            return _set_span(span, base)
        return Context({**base, key: span} if base else {key: span})

    # --- the request's own span: a new trace, a parsed traceparent, an extracted context

    def _start_incoming(
        self, ctx: RequestContext, environ: Any, propagator: Any, current: Context | None
    ) -> ServerSpan:
        """Under what the request carries (W3C headers, or any other propagator's)."""
        extractor = self.extractor
        base = current or _EMPTY_CONTEXT
        if extractor.w3c and TRACESTATE_KEY not in environ and BAGGAGE_KEY not in environ:
            traceparent = environ.get(TRACEPARENT_KEY)
            if traceparent is None:
                return self._start_new(ctx, base)
            if extractor.reads_traceparent and type(traceparent) is str:
                return self._start_remote(ctx, base, traceparent)
        return self._start_extracted(ctx, extractor.extract(propagator, environ, current))

    def _start_new(self, ctx: RequestContext, base: Context) -> ServerSpan:
        trace_hex, span_hex = new_ids()
        ctx.trace_id = trace_hex
        ctx.span_id = span_hex
        bound = self.sample_bound
        if bound and (bound > _MASK64 or int(trace_hex[_LOW_HEX], 16) < bound):
            ctx.trace_flags = "01"
            attributes = self._request_attributes(ctx)
            return ServerSpan(trace_hex, span_hex, base, None, attributes, _time_ns())
        ctx.trace_flags = "00"
        return ServerSpan(trace_hex, span_hex, base)

    def _start_remote(self, ctx: RequestContext, base: Context, traceparent: str) -> ServerSpan:
        """Under a lone ``traceparent``, read as the W3C propagator reads it."""
        trace_hex = ctx.trace_id
        if trace_hex is not None and len(traceparent) == 55 and traceparent.startswith("00-"):
            # The WSGI step read this header already (ctx.trace_id, ctx.trace_flags); on a
            # plain version-00 value its rules and the propagator's accept the same.
            parent_hex = None  # read below if sampled
            flags = 0 if ctx.trace_flags == "00" else int(ctx.trace_flags, 16)
        else:
            parse = self._parse_traceparent
            assert parse is not None
            parsed = parse(traceparent)
            if parsed is None:  # malformed: a new trace, as the propagator would start
                return self._start_new(ctx, base)
            trace_hex, parent_hex, flags = parsed
        try:
            span_hex = _pop_ids()[1]
        except IndexError:
            span_hex = new_ids()[1]
        ctx.trace_id = trace_hex
        ctx.span_id = span_hex
        if flags & 1:
            ctx.trace_flags = "01"
            if parent_hex is None:
                parent_hex = traceparent[_PARENT_HEX]
            parent = SpanContext(
                int(trace_hex, 16),
                int(parent_hex, 16),
                is_remote=True,
                trace_flags=TraceFlags(flags),
            )
            attributes = self._request_attributes(ctx)
            return ServerSpan(trace_hex, span_hex, base, parent, attributes, _time_ns())
        # Unsampled: the parent's trace state (none without tracestate) is all it gives.
        ctx.trace_flags = "00"
        span = _new_span(ServerSpan)  # no __init__ frame (see ServerSpan)
        span.trace_hex = trace_hex
        span.span_hex = span_hex
        span.parent_context = base
        return span

    def _start_extracted(self, ctx: RequestContext, parent_context: Context) -> ServerSpan:
        """Under the context the propagator extracted (empty: a new trace)."""
        base = parent_context or _EMPTY_CONTEXT
        found = trace.get_current_span(parent_context).get_span_context()
        if not found.is_valid:
            return self._start_new(ctx, base)
        trace_hex = found.trace_id.to_bytes(16, "big").hex()
        span_hex = new_ids()[1]
        ctx.trace_id = trace_hex
        ctx.span_id = span_hex
        if found.trace_flags.sampled:
            ctx.trace_flags = "01"
            attributes = self._request_attributes(ctx)
            return ServerSpan(trace_hex, span_hex, base, found, attributes, _time_ns())
        ctx.trace_flags = "00"
        return ServerSpan(trace_hex, span_hex, base, found)

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
        if "@" in path:  # may hold URL credentials (/fetch/https://user:pw@host)
            path = mask_url_credentials(path)
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
            message = self.scrub(str(error), error)
        except Exception:
            message = ""
        span.add_event("exception", {"exception.type": kind, "exception.message": message})
        span.set_attribute("error.type", kind)
        span.set_status(_ERROR)
