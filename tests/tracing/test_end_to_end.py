"""A gateway calling an upstream, both traced, over real HTTP: one trace of three spans."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from example_app import create_app, create_upstream

from .conftest import PARENT_TRACE, TRACEPARENT
from .receiver import OtlpReceiver

Serve = Callable[[Flask], str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(app)``: the app on a threaded werkzeug server on 127.0.0.1; its base URL."""
    servers: list[BaseWSGIServer] = []

    def start(app: Flask) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _tracing(receiver: OtlpReceiver, **extra: Any) -> dict[str, Any]:
    return {
        "GATEWAY_OBS_TRACING_ENABLED": True,
        "GATEWAY_OBS_TRACING_OTLP_ENDPOINT": receiver.endpoint,
        "GATEWAY_OBS_HEALTH_CHECK_DISK": False,
        "GATEWAY_OBS_HEALTH_CHECK_MEMORY": False,
        **extra,
    }


def test_gateway_and_upstream_make_one_trace(serve: Serve, receiver: OtlpReceiver) -> None:
    """server (gateway) -> client (its upstream call) -> server (upstream), one trace,
    continuing the caller's traceparent, each service naming itself in its resource."""
    upstream_url = serve(create_upstream(_tracing(receiver)))
    gateway_url = serve(create_app(_tracing(receiver, QUOTES_UPSTREAM_URL=upstream_url)))
    response = requests.get(
        f"{gateway_url}/quotes/ACME", headers={"traceparent": TRACEPARENT}, timeout=5
    )
    assert response.status_code == 200
    assert response.json() == {"symbol": "ACME", "price": 42.0}
    spans = receiver.wait_for(3, timeout=15)
    by_kind = {(s.resource["service.name"], s.kind): s for s in spans}
    gateway = by_kind["example-gateway", "SERVER"]
    client = by_kind["example-gateway", "CLIENT"]
    upstream = by_kind["quotes-upstream", "SERVER"]
    assert {s.trace_id for s in spans} == {PARENT_TRACE}
    assert client.parent_span_id == gateway.span_id
    assert upstream.parent_span_id == client.span_id
    assert gateway.name == "GET /quotes/<symbol>"
    assert client.name == "quotes GET /quotes/<symbol>"
    assert upstream.name == "GET /quotes/<symbol>"
    # the request ID crossed over too
    assert upstream.attributes["request_id"] == gateway.attributes["request_id"]


def test_failing_upstream_marks_the_client_span(serve: Serve, receiver: OtlpReceiver) -> None:
    """An upstream that is down: the client span carries status ERROR and the error type."""
    from ..conftest import free_port

    gateway_url = serve(
        create_app(_tracing(receiver, QUOTES_UPSTREAM_URL=f"http://127.0.0.1:{free_port()}"))
    )
    response = requests.get(f"{gateway_url}/quotes/ACME", timeout=10)
    assert response.status_code == 502
    spans = receiver.wait_for(2, timeout=15)  # retried once: two client spans, one server
    clients = [s for s in spans if s.kind == "CLIENT"]
    assert clients
    assert all(s.status == "ERROR" for s in clients)
    assert clients[0].attributes["error.type"] == "flask_gateway_obs.errors.AppError"
