"""One request, one trace ID: in its log lines, its Sentry event and its metrics exemplar."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from flask_gateway_obs.testing import capture_logs

from ..sentry_sink import SentrySink
from .conftest import TracedApp, flush
from .receiver import OtlpReceiver


@pytest.fixture
def sink() -> Iterator[SentrySink]:
    """A running Sentry envelope sink."""
    server = SentrySink().start()
    yield server
    server.stop()
    from flask_gateway_obs import sentry

    sentry.shutdown(timeout=1)


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
