"""Fixtures of the tracing tests: a real OTLP/HTTP receiver and traced apps.

Every tracing test runs twice: on the fast path over OpenTelemetry's context internals
(the versions verified in ``flask_gateway_obs._compat.opentelemetry``) and on its public
API, forced through the environment (so apps in subprocesses and servers take it too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import GatewayObs
from flask_gateway_obs.core.state import state_of
from flask_gateway_obs.testing import reset

from ..conftest import MakeApp, unavailable
from ..sentry_sink import SentrySink
from .receiver import OtlpReceiver

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
#: ``flask_gateway_obs._compat.opentelemetry.PUBLIC_PATH_ENV`` (that module needs OTel).
PUBLIC_PATH_ENV = "FGO_PUBLIC_PATH"


@pytest.fixture(autouse=True)
def _otel_installed() -> None:
    """The tracing tests need the [otel] extra (CI installs it with the test extra)."""
    try:
        import opentelemetry.proto
        import opentelemetry.sdk  # noqa: F401
    except ImportError as exc:
        unavailable(f"OpenTelemetry is not installed: {exc}")


@pytest.fixture(autouse=True, params=["fast", "public"])
def otel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``fast``: OpenTelemetry's context internals are used (verified versions);
    ``public``: its public API only."""
    if request.param == "public":
        monkeypatch.setenv(PUBLIC_PATH_ENV, "opentelemetry")
    else:
        monkeypatch.delenv(PUBLIC_PATH_ENV, raising=False)
    reset()  # the choice is made once per process: make it again
    return str(request.param)


@pytest.fixture(autouse=True)
def _fast_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Export batches every 50 ms instead of every 5 s, and give up on a dead endpoint
    after 2 s."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2")
    for name in (
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """A started OTLP/HTTP receiver on a free loopback port."""
    found = OtlpReceiver().start()
    yield found
    found.stop()


TracedApp = Callable[..., Flask]


@pytest.fixture
def traced_app(make_app: MakeApp, receiver: OtlpReceiver) -> TracedApp:
    """``traced_app(config={...}, **overrides)``: an app tracing to the receiver, with the
    routes the tests drive."""

    def factory(config: dict[str, Any] | None = None, **overrides: Any) -> Flask:
        base = {
            "GATEWAY_OBS_TRACING_ENABLED": True,
            "GATEWAY_OBS_TRACING_OTLP_ENDPOINT": receiver.endpoint,
            "GATEWAY_OBS_SERVICE_NAME": "gateway",
        }
        from flask_gateway_obs import GatewayObs

        app = make_app({**base, **(config or {})}, init=False)
        obs = GatewayObs(**overrides)
        _routes(app, obs)
        obs.init_app(app)
        return app

    return factory


def _routes(app: Flask, obs: GatewayObs) -> None:
    from flask import Response, stream_with_context
    from opentelemetry import trace

    from flask_gateway_obs import NotFoundError

    @app.get("/headers")
    def headers() -> dict[str, Any]:
        outside = obs.propagation_headers()
        with obs.state().tracer.client_span("upstream", "GET /x"):
            inside = obs.propagation_headers()
        return {"outside": outside, "inside": inside}

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        span = trace.get_current_span()
        span.set_attribute("app.item", item_id)
        context = span.get_span_context()
        return {
            "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
            "sampled": context.trace_flags.sampled,
        }

    @app.get("/missing")
    def missing() -> None:
        raise NotFoundError("no such thing")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(
            "lost postgresql://orders:s3cret@db.internal/orders (jwt=eyJhbGciOi.x1y2z3)"
        )

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            for _ in range(3):
                context = trace.get_current_span().get_span_context()
                yield f"{context.span_id:016x}\n"

        return Response(stream_with_context(chunks()), mimetype="text/plain")


def flush(app: Flask, seconds: float = 5.0) -> None:
    """Run the app's drain hooks: what is queued is exported."""
    state = state_of(app)
    assert state is not None
    for hook in state.drain_hooks:
        hook(seconds)


@pytest.fixture
def sink() -> Iterator[SentrySink]:
    """A running Sentry envelope sink."""
    server = SentrySink().start()
    yield server
    server.stop()
    from flask_gateway_obs import sentry

    sentry.shutdown(timeout=1)
