"""The SERVER span of each request, as a real OTLP receiver decodes it."""

from __future__ import annotations

import json
import logging

from flask_gateway_obs.testing import capture_logs

from .conftest import PARENT_SPAN, PARENT_TRACE, TRACEPARENT, TracedApp, flush
from .receiver import OtlpReceiver


def test_span_has_the_stable_http_attributes(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """A matched request is one SERVER span named by route with the stable HTTP semconv."""
    app = traced_app()
    response = app.test_client().get(
        "/items/7", headers={"User-Agent": "probe/1.0", "X-Request-ID": "req-7"}
    )
    assert response.status_code == 200
    flush(app)
    [span] = receiver.wait_for(1)
    assert span.name == "GET /items/<int:item_id>"
    assert span.kind == "SERVER"
    assert span.status == "UNSET"
    assert span.scope == "flask_gateway_obs"
    assert span.resource["service.name"] == "gateway"
    attributes = span.attributes
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == "/items/<int:item_id>"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/items/7"
    assert attributes["url.scheme"] == "http"
    assert attributes["server.address"] == "localhost"
    assert attributes["server.port"] == 80
    assert attributes["client.address"] == "127.0.0.1"
    assert attributes["user_agent.original"] == "probe/1.0"
    assert attributes["network.protocol.version"] == "1.1"
    assert attributes["request_id"] == "req-7"
    assert attributes["app.item"] == 7  # set by the view on the current span
    assert "error.type" not in attributes
    assert span.end_ns > span.start_ns
    assert response.json == {"trace_id": span.trace_id, "span_id": span.span_id, "sampled": True}


def test_unmatched_request_is_named_by_method(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """A 404 with no matching rule is named ``GET`` alone, without http.route, status unset."""
    app = traced_app()
    assert app.test_client().get("/nowhere/123").status_code == 404
    flush(app)
    [span] = receiver.wait_for(1)
    assert span.name == "GET"
    assert "http.route" not in span.attributes
    assert span.attributes["http.response.status_code"] == 404
    assert span.status == "UNSET"


def test_client_error_leaves_status_unset(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """A 4xx raised by the view leaves the status unset and records no exception event."""
    app = traced_app()
    assert app.test_client().get("/missing").status_code == 404
    flush(app)
    [span] = receiver.wait_for(1)
    assert span.name == "GET /missing"
    assert span.status == "UNSET"
    assert span.events == []
    assert "error.type" not in span.attributes


def test_server_error_sets_error_and_a_scrubbed_exception_event(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """A 5xx sets status ERROR and error.type; the exception event's message is scrubbed."""
    app = traced_app()
    app.testing = False
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    flush(app)
    [span] = receiver.wait_for(1)
    assert span.status == "ERROR"
    assert span.attributes["error.type"] == "RuntimeError"
    event = span.event("exception")
    assert event["exception.type"] == "RuntimeError"
    message = event["exception.message"]
    assert "s3cret" not in message
    assert "eyJhbGciOi" not in message  # "jwt" is a fragment Sentry scrubs too
    assert "postgresql://orders:***@db.internal/orders" in message
    assert "jwt=[REDACTED]" in message


def test_own_endpoints_are_not_traced(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """/health*, /metrics (even with a wrong method) make no span; other requests do."""
    app = traced_app({"GATEWAY_OBS_METRICS_ENABLED": True})
    client = app.test_client()
    for path in ("/health", "/health/live", "/health/ready", "/metrics"):
        client.get(path)
    client.post("/metrics")
    client.get("/items/1")
    flush(app)
    spans = receiver.wait_for(1)
    assert [span.name for span in spans] == ["GET /items/<int:item_id>"]


def test_log_lines_carry_the_span_ids(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """Every log line inside the request, the access line included, has the span's IDs."""
    app = traced_app()

    @app.get("/logged")
    def logged() -> str:
        logging.getLogger("app").warning("inside")
        return "ok"

    with capture_logs() as logs:
        app.test_client().get("/logged", headers={"traceparent": TRACEPARENT})
    flush(app)
    [span] = receiver.wait_for(1)
    assert span.trace_id == PARENT_TRACE
    inside = logs.find(message="inside")[0]
    access = logs.find(logger="flask_gateway_obs.access")[0]
    for line in (inside, access):
        assert line["trace_id"] == span.trace_id
        assert line["span_id"] == span.span_id
    assert span.span_id != PARENT_SPAN


def test_streamed_body_runs_inside_the_span(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """Each chunk of a streamed body sees the request's span as current; the span ends
    when the body is done and nothing leaks into the caller's context afterwards."""
    from opentelemetry import trace

    app = traced_app()
    response = app.test_client().get("/stream")
    chunks = response.get_data(as_text=True).split()
    flush(app)
    [span] = receiver.wait_for(1)
    assert chunks == [span.span_id] * 3
    assert span.name == "GET /stream"
    assert not trace.get_current_span().get_span_context().is_valid


def test_console_exporter_writes_spans(make_app, capfd) -> None:  # type: ignore[no-untyped-def]
    """``GATEWAY_OBS_TRACING_EXPORTER=console`` writes each span as JSON to stdout."""
    app = make_app({"GATEWAY_OBS_TRACING_ENABLED": True, "GATEWAY_OBS_TRACING_EXPORTER": "console"})
    app.test_client().get("/nothing-here")
    flush(app)
    out = capfd.readouterr().out
    start = out.index("{\n")
    span = json.loads(out[start : out.index("\n}", start) + 2])
    assert span["name"] == "GET"
    assert span["kind"] == "SpanKind.SERVER"


def test_exporter_none_still_correlates(make_app) -> None:  # type: ignore[no-untyped-def]
    """With exporter ``none`` nothing is sent, yet log lines still get trace and span IDs."""
    app = make_app({"GATEWAY_OBS_TRACING_ENABLED": True, "GATEWAY_OBS_TRACING_EXPORTER": "none"})
    with capture_logs() as logs:
        app.test_client().get("/nothing-here")
    access = logs.find(logger="flask_gateway_obs.access")[0]
    assert len(access["trace_id"]) == 32
    assert len(access["span_id"]) == 16
