"""Tracing with OpenTelemetry: a SERVER span per request, client spans, propagation.

Imported by the extension only when ``GATEWAY_OBS_TRACING_ENABLED`` is on (it needs the
``[otel]`` extra). :func:`init_app` wires one app:

- a TracerProvider: the user's when one is set globally (the extension adds no
  exporter to it), else one of the extension's (parent-based ratio sampler, resource
  from the service name and ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``, a bounded
  export queue), made the global provider when none is set, so the user's own spans
  and OpenTelemetry's library instrumentations join the request's trace;
- :class:`~.server.ServerTracing` as the request scope and an error listener;
- :class:`~.tracer.OtelTracer` as ``state.tracer``; a drain hook and an exit flush, each
  within ``GATEWAY_OBS_DRAIN_FLUSH_TIMEOUT``.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .. import _version
from .._compat import opentelemetry as compat_otel
from .._compat import opentelemetry_flask
from ..core import process
from ..core.context import SPAN_IDS
from ..logs.secrets import BODY_LIMITS
from .adoption import Correlator
from .export import ExporterLogFilter, SpanQueue
from .propagation import Extractor
from .scrub import MessageScrubber
from .server import ServerTracing
from .tracer import OtelTracer

if TYPE_CHECKING:
    from flask import Flask

    from ..core.state import ObsState

__all__ = ["DEFAULT_ENDPOINT", "init_app", "otlp_endpoint"]

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
SCOPE_NAME = "flask_gateway_obs"
#: Loggers of the OTLP exporter whose lines on an export thread are folded (capped).
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk.trace.export",
)
#: OpenTelemetry's baggage propagator, which quotes a malformed incoming header whole.
_BAGGAGE_LOGGER = "opentelemetry.baggage.propagation"
_log = logging.getLogger("flask_gateway_obs.tracing")


class _HeaderNotQuoted(logging.Filter):
    """A line of OpenTelemetry's baggage propagator keeps its words and loses the header
    it quotes (a client's header, which the logs never carry)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple("[REDACTED]" for _ in record.args)
        return True


class _Stdout:
    """``sys.stdout`` as it is when a span is written (it may be replaced after start-up)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


class OwnTracerProvider(TracerProvider):
    """The extension's TracerProvider (told apart from one the user set globally)."""


def otlp_endpoint(configured: str | None) -> str:
    """The traces URL: the key, else ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``, else the local collector."""
    if configured:
        return configured
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if base:
        return base.rstrip("/") + "/v1/traces"
    return DEFAULT_ENDPOINT


def _resource(state: ObsState) -> Resource:
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES come in through Resource.create; an
    # explicit GATEWAY_OBS_SERVICE_NAME wins over them, the app's name comes last.
    explicit = state.settings.service_name
    resource = Resource.create({SERVICE_NAME: explicit} if explicit else {})
    name = resource.attributes.get(SERVICE_NAME)
    if not name or str(name).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: state.service}))
    return resource


def _exporter_factory(state: ObsState) -> Callable[[], SpanExporter] | None:
    settings = state.settings
    if settings.tracing_exporter == "none":
        return None
    if settings.tracing_exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return lambda: ConsoleSpanExporter(out=_Stdout())  # type: ignore[arg-type]
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = otlp_endpoint(settings.tracing_otlp_endpoint)
    return lambda: OTLPSpanExporter(endpoint=endpoint)


# --- process-wide: the live queues, their exit flush, the exporter's log filter ---------


class _Exports:
    """This process's live queues, their exit flush and the exporter's log filter."""

    def __init__(self) -> None:
        self.queues: weakref.WeakSet[SpanQueue] = weakref.WeakSet()
        self.log_filter = ExporterLogFilter()
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).addFilter(self.log_filter)
        self.baggage_filter = _HeaderNotQuoted()
        logging.getLogger(_BAGGAGE_LOGGER).addFilter(self.baggage_filter)
        atexit.register(self.flush_at_exit)

    def flush_at_exit(self) -> None:
        queues = list(self.queues)
        for queue in queues:
            try:
                queue.shutdown(queue.exit_timeout / len(queues))
            except Exception:
                _log.debug("span flush at exit failed", exc_info=True)

    def close(self) -> None:
        atexit.unregister(self.flush_at_exit)
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).removeFilter(self.log_filter)
        logging.getLogger(_BAGGAGE_LOGGER).removeFilter(self.baggage_filter)
        for queue in list(self.queues):
            queue.shutdown(0.0)


def _exports() -> _Exports:
    exports = process.registry("tracing.exports", _Exports)
    process.on_reset("tracing", exports.close)
    return exports


def _correlate(provider: Any) -> None:
    """Put the correlator on ``provider`` once (it only notes IDs; it exports nothing)."""
    done: weakref.WeakSet[Any] = process.registry("tracing.correlated", weakref.WeakSet)
    if provider in done or not hasattr(provider, "add_span_processor"):
        return
    provider.add_span_processor(Correlator())
    done.add(provider)


def current_span_ids() -> tuple[str, str] | None:
    """The current OpenTelemetry span's ``(trace_id, span_id)`` in hex, or ``None``: what a
    log line written outside a request (a job in a span of its own) is correlated with."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def init_app(app: Flask, state: ObsState) -> ServerTracing:
    """Trace ``app``; see the module's docstring."""
    settings = state.settings
    process.registry(SPAN_IDS, lambda: current_span_ids)
    exports = _exports()  # the log filters, whatever the exporter
    rate = settings.tracing_sample_rate
    current = trace.get_tracer_provider()
    foreign: trace.Tracer | None = None
    queue: SpanQueue | None = None
    if not isinstance(current, (trace.ProxyTracerProvider, OwnTracerProvider)):
        # The user set OpenTelemetry up: their provider, sampler and exporters.
        _log.info("tracing through the app's own TracerProvider; no exporter added")
        _correlate(current)
        foreign = current.get_tracer(SCOPE_NAME, _version.__version__)
        client_tracer = foreign
    else:
        resource = _resource(state)
        make_exporter = _exporter_factory(state)
        if make_exporter is not None:
            recorder = state.recorder
            queue = SpanQueue(
                make_exporter,
                settings.tracing_queue_size,
                lambda count, reason: recorder.spans_dropped(count, reason),
                resource,
                InstrumentationScope(SCOPE_NAME, _version.__version__),
            )
            queue.exit_timeout = settings.drain_flush_timeout
            exports.queues.add(queue)
        provider = OwnTracerProvider(
            sampler=ParentBased(TraceIdRatioBased(rate)),
            resource=resource,
            shutdown_on_exit=False,  # the exit flush below is ours, within its bound
        )
        provider.add_span_processor(Correlator())
        if queue is not None:
            provider.add_span_processor(queue)
        if isinstance(current, trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)  # the first app of the process
        client_tracer = provider.get_tracer(SCOPE_NAME, _version.__version__)
    scrub = MessageScrubber(
        (*settings.log_redact_keys, *settings.sentry_denylist),
        send_default_pii=settings.sentry_send_default_pii,
        include_locals=settings.sentry_include_locals,
        body_limit=BODY_LIMITS.get(settings.sentry_max_request_body, 0),
    )
    path = compat_otel.context_path()
    server = ServerTracing(
        app,
        state.internal_paths,
        Extractor(path.w3c_traceparent),
        TraceIdRatioBased(rate).bound,
        queue,
        foreign,
        opentelemetry_flask.detector(),
        state.ua_max,
        scrub,
        path,
    )
    state.request_scope = server
    state.error_listeners.append(server.on_error)
    state.tracer = OtelTracer(client_tracer, scrub)
    if queue is not None:
        flush = queue.flush

        def drain(seconds: float) -> None:
            flush(seconds)

        state.drain_hooks.append(drain)
    return server
