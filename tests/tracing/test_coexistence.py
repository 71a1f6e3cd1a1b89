"""The user's own OpenTelemetry set-up is kept: no second provider, no second server span.

Each case runs in a fresh interpreter: OpenTelemetry's global provider can be set once
per process, and these tests set it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import flask_gateway_obs

from .conftest import PARENT_TRACE, TRACEPARENT
from .receiver import OtlpReceiver

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(flask_gateway_obs.__file__)))

PRELUDE = textwrap.dedent(
    """
    import json, logging, sys
    from flask import Flask
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from flask_gateway_obs import GatewayObs
    from flask_gateway_obs._compat import opentelemetry_flask
    from flask_gateway_obs.testing import capture_logs

    if sys.argv[2] == "public":
        opentelemetry_flask.force_public_path()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Flask("coexist")
    app.config.update(
        GATEWAY_OBS_TRACING_ENABLED=True,
        GATEWAY_OBS_TRACING_OTLP_ENDPOINT=sys.argv[1],
    )

    @app.get("/items/<int:item_id>")
    def item(item_id):
        logging.getLogger("app").warning("inside")
        return {"ok": True}

    def report(state):
        from flask_gateway_obs.core.state import state_of
        for hook in state_of(app).drain_hooks:
            hook(5.0)
        spans = [
            {
                "name": s.name,
                "kind": s.kind.name,
                "trace_id": f"{s.context.trace_id:032x}",
                "span_id": f"{s.context.span_id:016x}",
                "parent": f"{s.parent.span_id:016x}" if s.parent else None,
                "scope": s.instrumentation_scope.name,
            }
            for s in exporter.get_finished_spans()
        ]
        print(json.dumps({"spans": spans, **state}))
    """
)


def _run(script: str, receiver: OtlpReceiver, path: str = "private") -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script), receiver.endpoint, path],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_global_provider_of_the_user_is_used(receiver: OtlpReceiver) -> None:
    """A TracerProvider set globally before init_app gets the server span; the extension
    adds no exporter (nothing reaches the extension's endpoint); logs still correlate."""
    result = _run(
        """
        trace.set_tracer_provider(provider)
        GatewayObs(app)
        with capture_logs() as logs:
            app.test_client().get("/items/1", headers={"traceparent": sys.argv[3]})
        inside = logs.find(message="inside")[0]
        report({"log": [inside.get("trace_id"), inside.get("span_id")]})
        """.replace("sys.argv[3]", repr(TRACEPARENT)),
        receiver,
    )
    [span] = result["spans"]
    assert span["kind"] == "SERVER"
    assert span["name"] == "GET /items/<int:item_id>"
    assert span["trace_id"] == PARENT_TRACE
    assert span["scope"] == "flask_gateway_obs"
    assert result["log"] == [span["trace_id"], span["span_id"]]
    assert receiver.requests == 0


@pytest.mark.parametrize("path", ["private", "public"])
def test_flask_instrumentation_server_span_is_adopted(receiver: OtlpReceiver, path: str) -> None:
    """With opentelemetry-instrumentation-flask on the app (FlaskInstrumentor().instrument(),
    seen on both paths) there is one SERVER span, the instrumentation's, and the log lines
    inside the request carry its IDs."""
    result = _run(
        """
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        trace.set_tracer_provider(provider)
        FlaskInstrumentor().instrument()
        import flask

        app = flask.Flask("coexist")  # made after instrument(): the instrumented class
        app.config.update(GATEWAY_OBS_TRACING_ENABLED=True)

        @app.get("/items/<int:item_id>")
        def item(item_id):
            logging.getLogger("app").warning("inside")
            return {"ok": True}

        GatewayObs(app)
        with capture_logs() as logs:
            app.test_client().get("/items/1")
        inside = logs.find(message="inside")[0]
        access = logs.find(logger="flask_gateway_obs.access")[0]
        assert type(app).__name__ == "_InstrumentedFlask"
        report({"log": [inside.get("trace_id"), inside.get("span_id")],
                "access": [access.get("trace_id"), access.get("span_id")]})
        """,
        receiver,
        path,
    )
    servers = [s for s in result["spans"] if s["kind"] == "SERVER"]
    assert len(servers) == 1, result
    [span] = servers
    assert len(result["spans"]) == 1
    assert span["scope"] == "opentelemetry.instrumentation.flask"
    assert result["log"] == [span["trace_id"], span["span_id"]]
    assert result["access"] == [span["trace_id"], span["span_id"]]


def test_app_instrumented_on_its_own_is_adopted(receiver: OtlpReceiver) -> None:
    """instrument_app(app) after init_app, on the private path: still one SERVER span."""
    result = _run(
        """
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        trace.set_tracer_provider(provider)
        GatewayObs(app)
        FlaskInstrumentor().instrument_app(app)
        with capture_logs() as logs:
            app.test_client().get("/items/1")
        inside = logs.find(message="inside")[0]
        report({"log": [inside.get("trace_id"), inside.get("span_id")]})
        """,
        receiver,
    )
    [span] = result["spans"]
    assert span["kind"] == "SERVER"
    assert span["scope"] == "opentelemetry.instrumentation.flask"
    assert result["log"] == [span["trace_id"], span["span_id"]]


def test_instrumented_on_its_own_on_the_public_path(receiver: OtlpReceiver) -> None:
    """On the public path instrument_app(app) is not seen: one SERVER span (ours) with the
    instrumentation's as an INTERNAL child, logs on ours."""
    result = _run(
        """
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        trace.set_tracer_provider(provider)
        GatewayObs(app)
        FlaskInstrumentor().instrument_app(app)
        with capture_logs() as logs:
            app.test_client().get("/items/1")
        access = logs.find(logger="flask_gateway_obs.access")[0]
        report({"access": [access.get("trace_id"), access.get("span_id")]})
        """,
        receiver,
        "public",
    )
    kinds = sorted(s["kind"] for s in result["spans"])
    assert kinds == ["INTERNAL", "SERVER"]
    server = next(s for s in result["spans"] if s["kind"] == "SERVER")
    internal = next(s for s in result["spans"] if s["kind"] == "INTERNAL")
    assert internal["parent"] == server["span_id"]
    assert result["access"] == [server["trace_id"], server["span_id"]]


def test_no_global_provider_makes_ours_global(receiver: OtlpReceiver) -> None:
    """Without a provider of the user's, the extension's becomes the global one, so the
    user's own spans join the request's trace and leave through its exporter."""
    result = _run(
        """
        GatewayObs(app)

        @app.get("/manual")
        def manual():
            with trace.get_tracer("user").start_as_current_span("work"):
                pass
            return "ok"

        app.test_client().get("/manual")
        report({"provider": type(trace.get_tracer_provider()).__name__})
        """,
        receiver,
    )
    assert result["provider"] == "OwnTracerProvider"
    spans = receiver.wait_for(2)
    work = next(s for s in spans if s.name == "work")
    server = next(s for s in spans if s.kind == "SERVER")
    assert work.parent_span_id == server.span_id
    assert work.trace_id == server.trace_id


def test_outer_wsgi_span_is_adopted(make_app: Any, receiver: OtlpReceiver) -> None:
    """A span made current by a WSGI layer outside the extension's step (an outer
    instrumentation) is the request's: no span of ours, log lines carry its IDs."""
    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from flask_gateway_obs.testing import capture_logs

    app = make_app(
        {
            "GATEWAY_OBS_TRACING_ENABLED": True,
            "GATEWAY_OBS_TRACING_OTLP_ENDPOINT": receiver.endpoint,
        }
    )
    outer = SpanContext(
        int(PARENT_TRACE, 16), 0x1111222233334444, is_remote=False, trace_flags=TraceFlags(1)
    )
    inner = app.wsgi_app

    def outer_layer(environ: Any, start_response: Any) -> Any:
        token = context.attach(trace.set_span_in_context(NonRecordingSpan(outer)))
        try:
            return inner(environ, start_response)
        finally:
            context.detach(token)

    app.wsgi_app = outer_layer  # type: ignore[method-assign]
    with capture_logs() as logs:
        app.test_client().get("/nowhere")
    from .conftest import flush

    flush(app)
    access = logs.find(logger="flask_gateway_obs.access")[0]
    assert (access["trace_id"], access["span_id"]) == (PARENT_TRACE, "1111222233334444")
    assert receiver.requests == 0


UNSAMPLED = """
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    trace.set_tracer_provider(TracerProvider(sampler=ALWAYS_OFF))
    seen = {}

    @app.get("/seen")
    def seen_ids():
        context = trace.get_current_span().get_span_context()
        seen["ids"] = [f"{context.trace_id:032x}", f"{context.span_id:016x}"]
        logging.getLogger("app").warning("inside")
        return {"ok": True}

    FIRST
    with capture_logs() as logs:
        app.test_client().get("/seen")
    inside = logs.find(message="inside")[0]
    access = logs.find(logger="flask_gateway_obs.access")[0]
    report({"seen": seen["ids"],
            "log": [inside.get("trace_id"), inside.get("span_id")],
            "access": [access.get("trace_id"), access.get("span_id")]})
"""


@pytest.mark.parametrize(
    "order",
    [
        "FlaskInstrumentor().instrument_app(app); GatewayObs(app)",
        "GatewayObs(app); FlaskInstrumentor().instrument_app(app)",
    ],
)
def test_unsampled_flask_instrumentation_span_ids_reach_the_logs(
    receiver: OtlpReceiver, order: str
) -> None:
    """With opentelemetry-instrumentation-flask and an unsampled span (a sampler of the
    user's), the view's log lines and the access line still carry that span's IDs."""
    result = _run(UNSAMPLED.replace("FIRST", order), receiver)
    trace_id, span_id = result["seen"]
    assert int(trace_id, 16) and int(span_id, 16)  # a valid, unsampled span
    assert result["log"] == [trace_id, span_id]
    assert result["access"] == [trace_id, span_id]
