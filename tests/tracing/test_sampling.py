"""Sampling: a parent-based ratio; unsampled requests still carry trace IDs on logs."""

from __future__ import annotations

from flask_gateway_obs.testing import capture_logs

from .conftest import PARENT_TRACE, TracedApp, flush
from .receiver import OtlpReceiver

UNSAMPLED_PARENT = f"00-{PARENT_TRACE}-b7ad6b7169203331-00"
SAMPLED_PARENT = f"00-{PARENT_TRACE}-b7ad6b7169203331-01"


def test_rate_zero_exports_nothing_but_logs_keep_ids(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """At rate 0 no span leaves the process; log lines still carry trace and span IDs."""
    app = traced_app({"GATEWAY_OBS_TRACING_SAMPLE_RATE": 0})
    with capture_logs() as logs:
        for _ in range(20):
            body = app.test_client().get("/items/1").json
            assert body is not None and body["sampled"] is False
    flush(app)
    assert receiver.requests == 0
    access = logs.find(logger="flask_gateway_obs.access")
    assert len(access) == 20
    assert all(len(line["trace_id"]) == 32 and len(line["span_id"]) == 16 for line in access)


def test_rate_one_exports_every_request(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """At rate 1 every request is one exported span, each with its own trace."""
    app = traced_app({"GATEWAY_OBS_TRACING_SAMPLE_RATE": 1})
    for _ in range(20):
        app.test_client().get("/items/1")
    flush(app)
    spans = receiver.wait_for(20)
    assert len(spans) == 20
    assert len({span.trace_id for span in spans}) == 20


def test_sampled_parent_wins_over_rate_zero(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """A parent that sampled its trace makes the request sampled even at rate 0."""
    app = traced_app({"GATEWAY_OBS_TRACING_SAMPLE_RATE": 0})
    app.test_client().get("/items/1", headers={"traceparent": SAMPLED_PARENT})
    flush(app)
    [span] = receiver.wait_for(1)
    assert span.trace_id == PARENT_TRACE


def test_unsampled_parent_wins_over_rate_one(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """A parent that did not sample makes the request unsampled even at rate 1; its log
    lines carry the parent's trace ID."""
    app = traced_app({"GATEWAY_OBS_TRACING_SAMPLE_RATE": 1})
    with capture_logs() as logs:
        body = app.test_client().get("/items/1", headers={"traceparent": UNSAMPLED_PARENT}).json
    flush(app)
    assert receiver.requests == 0
    assert body is not None and body["sampled"] is False and body["trace_id"] == PARENT_TRACE
    assert logs.find(logger="flask_gateway_obs.access")[0]["trace_id"] == PARENT_TRACE


def test_ratio_samples_about_that_share(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """At rate 0.5 about half of 400 new traces are sampled (8 standard deviations of slack)."""
    app = traced_app({"GATEWAY_OBS_TRACING_SAMPLE_RATE": 0.5})
    client = app.test_client()
    sampled = sum(1 for _ in range(400) if (client.get("/items/1").json or {})["sampled"])
    flush(app)
    assert 120 <= sampled <= 280
    assert len(receiver.wait_for(sampled)) == sampled


def test_child_spans_follow_the_request_decision(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """A client span under an unsampled request is not sampled either (parent-based)."""
    app = traced_app({"GATEWAY_OBS_TRACING_SAMPLE_RATE": 1})
    app.test_client().get("/headers", headers={"traceparent": UNSAMPLED_PARENT})
    flush(app)
    assert receiver.requests == 0
