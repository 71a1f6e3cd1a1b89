"""A request body that cannot be read or parsed is the client's fault: a 400 problem, never
a 500, through the test client and through real servers (werkzeug's and gunicorn)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, request
from werkzeug.serving import make_server

from flask_gateway_obs import GatewayObs

from .conftest import MakeApp

APP = """
from flask import Flask, request
from flask_gateway_obs import GatewayObs

app = Flask("gw")
GatewayObs(app)


@app.post("/raw")
def raw():
    return {"size": len(request.get_data())}
"""
BROKEN_CHUNKS = (
    b"POST /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n"
)


def _problem(status: int, raw: bytes) -> dict[str, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), raw
    assert b"application/problem+json" in head, raw
    problem: dict[str, Any] = json.loads(body)
    return problem


def _send(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _app() -> Flask:
    app = Flask("bodies")
    GatewayObs(app)

    @app.post("/json")
    def parsed() -> dict[str, Any]:
        return {"parsed": request.get_json() is not None}

    @app.post("/raw")
    def raw() -> dict[str, Any]:
        return {"size": len(request.get_data())}

    @app.get("/recursion")
    def recursion() -> str:
        def deeper(n: int) -> int:
            return deeper(n + 1)

        return str(deeper(0))

    return app


def test_json_nested_too_deeply_is_a_400_problem(make_app: MakeApp) -> None:
    """JSON nested deeper than the parser recurses answers 400, as JSON that does not
    parse does; a RecursionError of the app's own code stays a 500."""
    client = _app().test_client()
    response = client.post("/json", data="[" * 5000 + "]" * 5000, content_type="application/json")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "bad_request"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "could not be read" in body["detail"]
    assert client.post("/json", json=[1, [2]]).get_json() == {"parsed": True}
    own = client.get("/recursion")
    assert own.status_code == 500
    assert own.get_json()["code"] == "internal_error"


@pytest.fixture
def werkzeug_server() -> Iterator[int]:
    server = make_server("127.0.0.1", 0, _app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_a_broken_chunked_body_is_a_400_under_werkzeugs_server(werkzeug_server: int) -> None:
    """werkzeug's server raises OSError while reading a chunk size that is not hex: the
    view that reads the body answers 400 problem+json."""
    problem = _problem(400, _send(werkzeug_server, BROKEN_CHUNKS))
    assert problem["code"] == "bad_request"
    good = _send(
        werkzeug_server,
        b"POST /raw HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close"
        b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    assert good.split(b"\r\n\r\n", 1)[1] == b'{"size":3}\n'


@pytest.mark.slow
def test_a_broken_chunked_body_is_a_400_under_gunicorn(tmp_path: Any) -> None:
    """gunicorn raises its InvalidChunkSize while the view reads the body: 400 problem+json,
    and the worker goes on serving."""
    from .gunicorn_server import Gunicorn

    (tmp_path / "gw_app.py").write_text(APP)
    server = Gunicorn(str(tmp_path), None, "--workers", "1")
    try:
        server.wait_ready()
        problem = _problem(400, _send(server.port, BROKEN_CHUNKS))
        assert problem["code"] == "bad_request"
        assert server.get("/health/live")
    finally:
        server.stop()
