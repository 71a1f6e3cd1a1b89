"""The request's OpenTelemetry context: what runs inside sees it, and it is undone after."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from flask_gateway_obs import GatewayObs
from flask_gateway_obs.testing import capture_logs

from ..conftest import MakeApp
from .conftest import PARENT_SPAN, PARENT_TRACE, flush
from .receiver import OtlpReceiver

UNSAMPLED_PARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-00"


def _app(make_app: MakeApp, receiver: OtlpReceiver, rate: float) -> Flask:
    app = make_app(
        {
            "GATEWAY_OBS_TRACING_ENABLED": True,
            "GATEWAY_OBS_TRACING_OTLP_ENDPOINT": receiver.endpoint,
            "GATEWAY_OBS_TRACING_SAMPLE_RATE": rate,
        },
        init=False,
    )
    obs = GatewayObs()

    @app.get("/children")
    def children() -> dict[str, Any]:
        server = trace.get_current_span().get_span_context()
        with trace.get_tracer("user").start_as_current_span("work") as work:
            mine = work.get_span_context()
        with obs.track_dependency("upstream", "GET /x"):
            client = trace.get_current_span().get_span_context()
            headers = obs.propagation_headers()
        return {
            "server": [f"{server.trace_id:032x}", f"{server.span_id:016x}"],
            "sampled": [c.trace_flags.sampled for c in (server, mine, client)],
            "traces": [f"{c.trace_id:032x}" for c in (mine, client)],
            "client_span": f"{client.span_id:016x}",
            "traceparent": headers.get("traceparent"),
            "outside": obs.propagation_headers().get("traceparent"),
        }

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            for _ in range(3):
                yield f"{trace.get_current_span().get_span_context().span_id:016x}\n"

        return Response(chunks(), mimetype="text/plain")

    @app.get("/baggage")
    def read_baggage() -> dict[str, Any]:
        span = trace.get_current_span().get_span_context()
        return {"tenant": baggage.get_baggage("tenant"), "trace_id": f"{span.trace_id:032x}"}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    obs.init_app(app)
    return app


@pytest.mark.parametrize("headers", [{}, {"traceparent": UNSAMPLED_PARENT}])
def test_unsampled_children_stay_in_the_request_trace(
    make_app: MakeApp, receiver: OtlpReceiver, headers: dict[str, str]
) -> None:
    """Under an unsampled request (a new trace at rate 0, or an unsampled parent at rate
    1) a user's span and a tracked call are unsampled and in its trace, and outgoing
    headers carry that trace with flags 00; nothing is exported."""
    app = _app(make_app, receiver, 0.0 if not headers else 1.0)
    with capture_logs() as logs:
        body = app.test_client().get("/children", headers=headers).json
    assert body is not None
    trace_id, span_id = body["server"]
    if headers:
        assert trace_id == PARENT_TRACE and span_id != PARENT_SPAN
    assert body["sampled"] == [False, False, False]
    assert body["traces"] == [trace_id, trace_id]
    assert body["traceparent"] == f"00-{trace_id}-{body['client_span']}-00"
    assert body["outside"] == f"00-{trace_id}-{span_id}-00"
    access = logs.find(logger="flask_gateway_obs.access")[0]
    assert (access["trace_id"], access["span_id"]) == (trace_id, span_id)
    flush(app)
    assert receiver.requests == 0


@pytest.mark.parametrize("rate", [0.0, 1.0])
@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/children", {}),
        ("/children", {"traceparent": UNSAMPLED_PARENT}),
        ("/children", {"traceparent": UNSAMPLED_PARENT, "tracestate": "vendor=abc"}),
        ("/boom", {}),
        ("/nowhere", {}),
        ("/health/live", {}),
    ],
)
def test_context_is_restored_after_each_request(
    make_app: MakeApp,
    receiver: OtlpReceiver,
    rate: float,
    path: str,
    headers: dict[str, str],
) -> None:
    """After a request (sampled or not, failed, unmatched, not traced) the current
    context is the one before it."""
    app = _app(make_app, receiver, rate)
    app.testing = False
    before = context.get_current()
    app.test_client().get(path, headers=headers)
    assert context.get_current() is before
    assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_streamed_body_restores_the_context_around_each_chunk(
    make_app: MakeApp, receiver: OtlpReceiver, rate: float
) -> None:
    """Each chunk of a streamed body runs inside the request's span; between chunks and
    after the body the caller's context is current again."""
    app = _app(make_app, receiver, rate)
    before = context.get_current()
    with capture_logs() as logs:
        response = app.test_client().get("/stream", buffered=False)
        seen = []
        for chunk in response.response:
            assert context.get_current() is before
            seen.append(chunk.decode().strip())
        response.close()
    assert context.get_current() is before
    span_id = logs.find(logger="flask_gateway_obs.access")[0]["span_id"]
    assert seen == [span_id] * 3


@pytest.mark.parametrize("headers", [{}, {"traceparent": UNSAMPLED_PARENT}])
def test_outer_baggage_is_kept(
    make_app: MakeApp, receiver: OtlpReceiver, headers: dict[str, str]
) -> None:
    """Baggage an outer WSGI layer made current is still there inside the request, with
    the request's own span (continuing an incoming trace)."""
    app = _app(make_app, receiver, 0.0)
    inner = app.wsgi_app

    def outer_layer(environ: Any, start_response: Any) -> Any:
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            return inner(environ, start_response)
        finally:
            context.detach(token)

    app.wsgi_app = outer_layer  # type: ignore[method-assign]
    for _ in range(2):  # the first request, and one after it
        body = app.test_client().get("/baggage", headers=headers).json
        assert body is not None and body["tenant"] == "acme"
        if headers:
            assert body["trace_id"] == PARENT_TRACE


def test_incoming_baggage_is_read(make_app: MakeApp, receiver: OtlpReceiver) -> None:
    """A baggage header beside a traceparent reaches the app through the propagator."""
    app = _app(make_app, receiver, 0.0)
    body = (
        app.test_client()
        .get("/baggage", headers={"traceparent": UNSAMPLED_PARENT, "baggage": "tenant=globex"})
        .json
    )
    assert body == {"tenant": "globex", "trace_id": PARENT_TRACE}


def test_a_malformed_baggage_header_is_not_quoted_in_the_logs(
    make_app: MakeApp, receiver: OtlpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenTelemetry warns about a malformed baggage header by quoting it: the line keeps
    its words and loses the client's header."""
    app = _app(make_app, receiver, 0.0)
    headers = {"traceparent": UNSAMPLED_PARENT, "baggage": "no-equals-sign-secret-4242"}
    assert app.test_client().get("/baggage", headers=headers).status_code == 200
    out = capsys.readouterr().out
    assert "no-equals-sign-secret-4242" not in out
    assert "doesn't match the format" in out


@pytest.fixture
def textmap() -> Iterator[Any]:
    """Replace the global propagator for one test: ``textmap(propagator)``."""
    previous = propagate.get_global_textmap()
    yield propagate.set_global_textmap
    propagate.set_global_textmap(previous)


@pytest.mark.parametrize(
    ("propagator", "continues"),
    [
        (TraceContextTextMapPropagator(), True),
        (CompositePropagator([W3CBaggagePropagator(), TraceContextTextMapPropagator()]), True),
        (W3CBaggagePropagator(), False),
    ],
)
def test_traceparent_is_read_only_by_a_propagator_that_reads_it(
    make_app: MakeApp, receiver: OtlpReceiver, textmap: Any, propagator: Any, continues: bool
) -> None:
    """A lone traceparent continues its trace when the global propagator reads W3C trace
    context (alone or with baggage, in any order); a baggage-only one ignores it."""
    app = _app(make_app, receiver, 0.0)
    app.test_client().get("/baggage")  # the propagator may change after requests
    textmap(propagator)
    body = app.test_client().get("/baggage", headers={"traceparent": UNSAMPLED_PARENT}).json
    assert body is not None
    assert (body["trace_id"] == PARENT_TRACE) is continues


@pytest.mark.parametrize(
    "value",
    [
        UNSAMPLED_PARENT,
        f"00-{PARENT_TRACE}-{PARENT_SPAN}-01",
        f"00-{PARENT_TRACE}-{PARENT_SPAN}-03",
        f"00-{PARENT_TRACE}-{PARENT_SPAN}-fe",
        f"00-{PARENT_TRACE}-{PARENT_SPAN}-0g",
        f"00-{PARENT_TRACE}-{PARENT_SPAN[:-1]}--00",
        f"00-{PARENT_TRACE}-{PARENT_SPAN}-00 ",
        f" \t00-{PARENT_TRACE}-{PARENT_SPAN}-00\t ",
        f"01-{PARENT_TRACE}-{PARENT_SPAN}-00-future-field",
        f"00-{PARENT_TRACE}-{PARENT_SPAN}-00-extra",
        f"ff-{PARENT_TRACE}-{PARENT_SPAN}-00",
        f"00-{'0' * 32}-{PARENT_SPAN}-00",
        f"00-{PARENT_TRACE}-{'0' * 16}-00",
        f"00-{PARENT_TRACE.upper()}-{PARENT_SPAN}-00",
        f"00-{PARENT_TRACE}-{PARENT_SPAN}",
        f"00-{PARENT_TRACE}-{PARENT_SPAN}-0",
        f"0-{PARENT_TRACE}-{PARENT_SPAN}-00",
        "",
        "garbage",
    ],
)
def test_traceparent_is_read_as_the_w3c_propagator_reads_it(
    make_app: MakeApp, receiver: OtlpReceiver, value: str
) -> None:
    """Valid or not, a lone traceparent gives the request the trace ID and decision that
    OpenTelemetry's W3C propagator reads from it (a new unsampled trace when invalid)."""
    app = _app(make_app, receiver, 0.0)
    expected = trace.get_current_span(
        TraceContextTextMapPropagator().extract({"traceparent": value})
    ).get_span_context()
    body = app.test_client().get("/children", headers={"traceparent": value}).json
    assert body is not None
    trace_id, _ = body["server"]
    if expected.is_valid:
        assert trace_id == f"{expected.trace_id:032x}"
        assert body["sampled"][0] is expected.trace_flags.sampled
    else:
        assert trace_id != PARENT_TRACE
        assert body["sampled"][0] is False
