"""One request, one trace ID: in its log lines, its Sentry event and its metrics exemplar."""

from __future__ import annotations

import re

import pytest

from flask_gateway_obs.testing import capture_logs

from ..sentry_sink import SentrySink
from .conftest import TracedApp, flush
from .receiver import OtlpReceiver


def test_logs_sentry_and_exemplar_share_the_trace_id(
    traced_app: TracedApp, receiver: OtlpReceiver, sink: SentrySink
) -> None:
    """A failing request's log lines, Sentry event (contexts.trace) and OpenMetrics
    exemplar carry the trace ID of its exported server span."""
    app = traced_app({"GATEWAY_OBS_METRICS_ENABLED": True, "GATEWAY_OBS_SENTRY_DSN": sink.dsn})
    app.testing = False
    with capture_logs() as logs:
        assert app.test_client().get("/boom").status_code == 500
    flush(app)
    [span] = receiver.wait_for(1)
    trace_id = span.trace_id

    lines = [r for r in logs.records if r.get("request_id") == span.attributes["request_id"]]
    assert lines
    assert {line.get("trace_id") for line in lines} == {trace_id}
    assert {line.get("span_id") for line in lines} == {span.span_id}

    [event] = sink.wait_for("event", 1)
    assert event["contexts"]["trace"]["trace_id"] == trace_id
    assert event["contexts"]["trace"]["span_id"] == span.span_id

    exposition = (
        app.test_client()
        .get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        .get_data(as_text=True)
    )
    exemplars = re.findall(
        r'^http_request_duration_seconds_bucket\{[^}]*route="/boom"[^}]*\} \S+ '
        r'# \{trace_id="([0-9a-f]{32})"\}',
        exposition,
        re.MULTILINE,
    )
    assert trace_id in exemplars


def test_a_line_written_in_a_span_outside_a_request_carries_its_ids(
    traced_app: TracedApp, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job outside any request, in a span of its own: its log lines carry that span's
    trace and span IDs (the stdout line and what capture_logs sees); a line outside any
    span carries none."""
    import json
    import logging

    from opentelemetry import trace

    traced_app()
    log = logging.getLogger("jobs")
    with capture_logs() as logs:
        with trace.get_tracer("jobs").start_as_current_span("nightly") as span:
            log.warning("inside the job")
        log.warning("after the job")
    ids = span.get_span_context()
    trace_id, span_id = format(ids.trace_id, "032x"), format(ids.span_id, "016x")
    inside, after = logs.find(logger="jobs")
    assert (inside["trace_id"], inside["span_id"]) == (trace_id, span_id)
    assert inside["request_id"] is None
    assert "trace_id" not in after and "span_id" not in after
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "job" in line]
    assert [(p.get("trace_id"), p.get("span_id")) for p in printed] == [
        (trace_id, span_id),
        (None, None),
    ]


def test_a_line_logged_during_a_tracked_call_carries_the_client_spans_id(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """Inside ``track_dependency`` a line carries the CLIENT span's ID (the span it is
    written in); before and after the call, and on the access line, the server span's."""
    import logging

    from flask_gateway_obs import GatewayObs

    app = traced_app()
    obs = GatewayObs()
    log = logging.getLogger("calls")

    @app.get("/call")
    def call() -> str:
        log.info("before")
        with obs.track_dependency("inventory", "GET /stock"):
            log.info("during")
        log.info("after")
        return "ok"

    with capture_logs() as logs:
        assert app.test_client().get("/call").status_code == 200
    flush(app)
    spans = {s.kind: s for s in receiver.wait_for(2)}
    server, client = spans["SERVER"], spans["CLIENT"]
    by_message = {r["message"]: r for r in logs.find(logger="calls")}
    assert by_message["during"]["span_id"] == client.span_id
    assert by_message["before"]["span_id"] == server.span_id
    assert by_message["after"]["span_id"] == server.span_id
    [access] = logs.find(logger="flask_gateway_obs.access")
    assert access["span_id"] == server.span_id
    assert {r["trace_id"] for r in (*by_message.values(), access)} == {server.trace_id}
