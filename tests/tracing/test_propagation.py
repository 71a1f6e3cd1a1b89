"""Trace context in and out: traceparent continuity, propagators, propagation_headers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from .conftest import PARENT_SPAN, PARENT_TRACE, TRACEPARENT, TracedApp, flush
from .receiver import OtlpReceiver


def test_incoming_traceparent_continues_the_trace(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """A valid traceparent makes the server span a child of the remote parent, same trace."""
    app = traced_app()
    body = (
        app.test_client()
        .get("/items/1", headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"})
        .json
    )
    flush(app)
    [span] = receiver.wait_for(1)
    assert span.trace_id == PARENT_TRACE
    assert span.parent_span_id == PARENT_SPAN
    assert span.trace_state == "vendor=abc"
    assert body is not None and body["trace_id"] == PARENT_TRACE


def test_malformed_traceparent_starts_a_new_trace(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """A bad traceparent is ignored: a new root span, never an error."""
    app = traced_app()
    response = app.test_client().get("/items/1", headers={"traceparent": "00-zz-nope-01"})
    assert response.status_code == 200
    flush(app)
    [span] = receiver.wait_for(1)
    assert span.parent_span_id == ""
    assert span.trace_id != PARENT_TRACE


def test_propagation_headers_inject_the_current_span(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """propagation_headers() carries the request ID and the current span's traceparent:
    the server span outside a client span, the client span inside it."""
    app = traced_app()
    body = (
        app.test_client()
        .get("/headers", headers={"traceparent": TRACEPARENT, "X-Request-ID": "abc-1"})
        .json
    )
    flush(app)
    spans = receiver.wait_for(2)
    server = next(s for s in spans if s.kind == "SERVER")
    client = next(s for s in spans if s.kind == "CLIENT")
    assert body is not None
    assert body["outside"] == {
        "X-Request-ID": "abc-1",
        "traceparent": f"00-{PARENT_TRACE}-{server.span_id}-01",
    }
    assert body["inside"]["traceparent"] == f"00-{PARENT_TRACE}-{client.span_id}-01"
    assert client.parent_span_id == server.span_id
    assert client.name == "upstream GET /x"
    assert client.attributes["peer.service"] == "upstream"
    assert client.attributes["dependency.operation"] == "GET /x"


def test_unsampled_request_propagates_its_decision(traced_app: TracedApp) -> None:
    """An unsampled request still sends a traceparent (flags 00) so upstreams agree."""
    app = traced_app({"GATEWAY_OBS_TRACING_SAMPLE_RATE": 0})
    body = app.test_client().get("/headers").json
    assert body is not None
    version, trace_id, span_id, flags = body["outside"]["traceparent"].split("-")
    assert (version, flags) == ("00", "00")
    assert len(trace_id) == 32 and len(span_id) == 16


class _SingleHeader(TextMapPropagator):
    """A made-up propagator: ``x-trace: <trace-id hex>:<span-id hex>``, always sampled."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        found = getter.get(carrier, "x-trace")
        if not found:
            return context or Context()
        trace_hex, _, span_hex = found[0].partition(":")
        parent = SpanContext(
            int(trace_hex, 16), int(span_hex, 16), is_remote=True, trace_flags=TraceFlags(1)
        )
        return trace.set_span_in_context(NonRecordingSpan(parent), context)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            setter.set(
                carrier, "x-trace", f"{span_context.trace_id:032x}:{span_context.span_id:016x}"
            )

    @property
    def fields(self) -> set[str]:
        return {"x-trace"}


@pytest.fixture
def custom_propagator() -> Iterator[None]:
    """The global propagator replaced by :class:`_SingleHeader` for one test."""
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(_SingleHeader())
    yield
    propagate.set_global_textmap(previous)


@pytest.mark.usefixtures("custom_propagator")
def test_configured_propagator_is_honoured(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """A propagator the user set globally reads the incoming context and writes the outgoing."""
    app = traced_app()
    body = (
        app.test_client().get("/headers", headers={"x-trace": f"{PARENT_TRACE}:{PARENT_SPAN}"}).json
    )
    flush(app)
    spans = receiver.wait_for(2)
    server = next(s for s in spans if s.kind == "SERVER")
    assert server.trace_id == PARENT_TRACE
    assert server.parent_span_id == PARENT_SPAN
    assert body is not None
    assert body["outside"]["x-trace"] == f"{PARENT_TRACE}:{server.span_id}"
    assert "traceparent" not in body["outside"]
