"""state.tracer, the contract breakers, retries and dependency tracking report through."""

from __future__ import annotations

import contextlib

from flask import Flask

from flask_gateway_obs import CircuitOpenError
from flask_gateway_obs.core.contracts import Tracer
from flask_gateway_obs.core.state import state_of

from .conftest import TracedApp, flush
from .receiver import OtlpReceiver, ReceivedSpan


def _tracer(app: Flask) -> Tracer:
    state = state_of(app)
    assert state is not None
    return state.tracer


def test_events_land_on_the_current_span(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """An event outside a client span is on the server span; inside one, on the client span."""
    app = traced_app()

    @app.get("/events")
    def events() -> str:
        tracer = _tracer(app)
        tracer.event("retry.attempt", {"retry.operation": "quotes", "retry.attempt": 1})
        with tracer.client_span("quotes", "GET /q"):
            tracer.event("circuit_breaker.state_change", {"circuit_breaker.state": "open"})
        return "ok"

    app.test_client().get("/events")
    flush(app)
    spans = receiver.wait_for(2)
    server = next(s for s in spans if s.kind == "SERVER")
    client = next(s for s in spans if s.kind == "CLIENT")
    assert server.event("retry.attempt") == {"retry.operation": "quotes", "retry.attempt": 1}
    assert client.event("circuit_breaker.state_change") == {"circuit_breaker.state": "open"}
    assert client.status == "UNSET"


def test_breaker_rejection_marks_the_client_span(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """A rejection reported inside a client span, or CircuitOpenError leaving it, marks that
    span rejected with status ERROR; outside one it is an event on the server span."""
    app = traced_app()

    @app.get("/rejected")
    def rejected() -> str:
        tracer = _tracer(app)
        with tracer.client_span("payments", "POST /charges"):
            tracer.rejected("payments")
        try:
            with tracer.client_span("ledger", "POST /entries"):
                raise CircuitOpenError("ledger", retry_after=5)
        except CircuitOpenError:
            pass
        tracer.rejected("audit")
        return "ok"

    app.test_client().get("/rejected")
    flush(app)
    spans = receiver.wait_for(3)
    by_name = {s.name: s for s in spans}
    for name, breaker in (
        ("payments POST /charges", "payments"),
        ("ledger POST /entries", "ledger"),
    ):
        span = by_name[name]
        assert span.status == "ERROR"
        assert span.attributes["circuit_breaker.rejected"] is True
        assert span.attributes["circuit_breaker.name"] == breaker
    server = by_name["GET /rejected"]
    assert server.event("circuit_breaker.rejected") == {"circuit_breaker.name": "audit"}
    assert server.status == "UNSET"


def test_failed_call_is_an_error_with_a_scrubbed_event(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """An exception leaving a client span: ERROR, error.type, a scrubbed exception event."""
    app = traced_app()

    @app.get("/failed")
    def failed() -> str:
        try:
            with _tracer(app).client_span("db", "SELECT"):
                raise ConnectionError("no route to postgresql://app:hunter2@db:5432/app")
        except ConnectionError:
            pass
        return "ok"

    client = _client_span_of(app, receiver, "/failed")
    assert client.status == "ERROR"
    assert client.attributes["error.type"] == "ConnectionError"
    assert "hunter2" not in client.event("exception")["exception.message"]


def test_tracing_off_tracer_is_a_no_op(make_app) -> None:  # type: ignore[no-untyped-def]
    """With tracing off, the contract's calls do nothing and inject nothing."""
    app = make_app()
    tracer = _tracer(app)
    with tracer.client_span("x", "y"):
        tracer.event("e", {})
        tracer.rejected("x")
    headers: dict[str, str] = {}
    assert tracer.inject(headers) is False
    assert headers == {}


def test_breakers_and_retries_report_span_events(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """A retry is an event on the current span; a breaker opening is an event; a call the
    open breaker refuses marks its client span rejected."""
    from flask_gateway_obs import GatewayObs

    app = traced_app(
        {
            "GATEWAY_OBS_BREAKERS": {"pay": {"fail_max": 1, "reset_timeout": 60}},
            "GATEWAY_OBS_RETRY_POLICIES": {"q": {"max_attempts": 2, "base_delay": 0.001}},
        }
    )
    obs = GatewayObs()  # a handle: it finds the current app's state

    def fail() -> None:
        raise ConnectionError("upstream down")

    @app.get("/retried")
    def retried() -> str:
        with contextlib.suppress(ConnectionError):
            obs.retry("q").call(fail)
        return "ok"

    @app.get("/broken")
    def broken() -> str:
        for _ in range(2):  # the first call fails and opens it, the second is refused
            try:
                with obs.track_dependency("pay", "POST /charge"):
                    obs.circuit_breaker("pay").call(fail)
            except (ConnectionError, CircuitOpenError):
                pass
        return "ok"

    client = app.test_client()
    client.get("/retried")
    client.get("/broken")
    flush(app)
    spans = receiver.wait_for(4)
    retried_span = next(s for s in spans if s.name == "GET /retried")
    attempt = retried_span.event("retry.attempt")
    assert attempt["retry.operation"] == "q"
    assert attempt["retry.attempt"] == 1
    assert attempt["error.type"] == "ConnectionError"
    calls = [s for s in spans if s.kind == "CLIENT"]
    assert len(calls) == 2
    opened, refused = calls
    change = opened.event("circuit_breaker.state_change")
    assert change["circuit_breaker.name"] == "pay"
    assert change["circuit_breaker.to_state"] == "open"
    assert opened.attributes["error.type"] == "ConnectionError"
    assert refused.attributes["circuit_breaker.rejected"] is True
    assert refused.status == "ERROR"


def test_call_marked_failed_is_an_error(traced_app: TracedApp, receiver: OtlpReceiver) -> None:
    """``mark_failed(type)`` inside ``track_dependency`` (nothing raised: an upstream 5xx)
    sets the CLIENT span's status ERROR and ``error.type``, with no exception event."""
    from flask_gateway_obs import GatewayObs

    app = traced_app()
    obs = GatewayObs()  # a handle: it finds the current app's state

    @app.get("/marked")
    def marked() -> str:
        with obs.track_dependency("upstream", "GET /quotes") as call:
            call.mark_failed("upstream_503")
        return "ok"

    client = _client_span_of(app, receiver, "/marked")
    assert client.status == "ERROR"
    assert client.attributes["error.type"] == "upstream_503"
    assert client.events == []


def _client_span_of(app: Flask, receiver: OtlpReceiver, path: str) -> ReceivedSpan:
    """The CLIENT span of one request to ``path`` (beside its server span)."""
    app.test_client().get(path)
    flush(app)
    return next(s for s in receiver.wait_for(2) if s.kind == "CLIENT")
