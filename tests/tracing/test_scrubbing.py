"""Secrets on spans: exception messages scrubbed as Sentry scrubs them, URL credentials
in ``url.path`` masked."""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from flask_gateway_obs.core.state import state_of

from ..sentry_sink import SentrySink
from .conftest import TracedApp, flush
from .receiver import OtlpReceiver, ReceivedSpan

API_KEY = "hk_9f8e7d6c5b4a"
QUERY_TOKEN = "qtok9876543210"
SESSION = "sessv4l9e8d7c6"


def _failing_routes(app: Flask) -> None:
    @app.get("/keyed")
    def keyed() -> None:
        raise RuntimeError("upstream rejected " + request.headers["X-Api-Key"])

    @app.get("/queried")
    def queried() -> None:
        raise ValueError("bad value " + request.args["access_token"])

    @app.get("/cloned")
    def cloned() -> None:
        raise RuntimeError("clone of https://deploy@git.internal/repo failed")

    @app.get("/cookied")
    def cookied() -> None:
        raise RuntimeError("stale session " + request.cookies["sid"])

    @app.get("/local")
    def local() -> None:
        upstream_password = "pw-" + "localhunter42"
        raise RuntimeError(f"login refused with {upstream_password}")

    @app.get("/called")
    def called() -> None:
        state = state_of(app)
        assert state is not None
        with state.tracer.client_span("billing", "POST /charge"):
            raise ConnectionError("billing refused key " + request.headers["X-Api-Key"])


def _requests(app: Flask) -> None:
    client = app.test_client()
    client.set_cookie("sid", SESSION)
    client.get("/keyed", headers={"X-Api-Key": API_KEY})
    client.get(f"/queried?access_token={QUERY_TOKEN}")
    client.get("/cloned")
    client.get("/cookied")
    client.get("/local")
    client.get("/called", headers={"X-Api-Key": API_KEY})


def _sentry_values(sink: SentrySink, count: int) -> dict[str, str]:
    """The scrubbed exception value of each Sentry event, by the event's route."""
    events = sink.wait_for("event", count)
    return {event["transaction"]: event["exception"]["values"][-1]["value"] for event in events}


def _message(span: ReceivedSpan) -> str:
    return str(span.event("exception")["exception.message"])


def test_exception_messages_are_scrubbed_as_sentry_scrubs_them(
    traced_app: TracedApp, receiver: OtlpReceiver, sink: SentrySink
) -> None:
    """The exception event of a server span and of a client span carries exactly the text
    Sentry sends for the same exception of the same request: secret headers, secret query
    parameters, cookies and secret local variables swept, any user name in a URL masked."""
    app = traced_app({"GATEWAY_OBS_SENTRY_DSN": sink.dsn})
    _failing_routes(app)
    app.testing = False
    _requests(app)
    flush(app)
    from flask_gateway_obs import sentry

    sentry.flush(timeout=5)
    spans = receiver.wait_for(7)
    sentry_values = _sentry_values(sink, 6)
    servers = {s.attributes["http.route"]: s for s in spans if s.kind == "SERVER"}
    [client] = [s for s in spans if s.kind == "CLIENT"]

    expected = {
        "/keyed": "upstream rejected [REDACTED]",
        "/queried": "bad value [REDACTED]",
        "/cloned": "clone of https://***@git.internal/repo failed",
        "/cookied": "stale session [REDACTED]",
        "/local": "login refused with [REDACTED]",
        "/called": "billing refused key [REDACTED]",
    }
    assert sentry_values == expected  # what Sentry itself sends
    for route, text in expected.items():
        assert _message(servers[route]) == text, route
    assert _message(client) == sentry_values["/called"]
    for secret in (API_KEY, QUERY_TOKEN, SESSION, "localhunter42", "deploy@"):
        assert all(secret not in _message(span) for span in servers.values())


def test_exception_messages_are_scrubbed_with_sentry_off(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """Without a Sentry DSN the span's exception message is scrubbed the same way."""
    app = traced_app()
    _failing_routes(app)
    app.testing = False
    _requests(app)
    flush(app)
    spans = receiver.wait_for(7)
    by_route = {s.attributes["http.route"]: s for s in spans if s.kind == "SERVER"}
    assert _message(by_route["/keyed"]) == "upstream rejected [REDACTED]"
    assert _message(by_route["/queried"]) == "bad value [REDACTED]"
    assert _message(by_route["/cloned"]) == "clone of https://***@git.internal/repo failed"
    [client] = [s for s in spans if s.kind == "CLIENT"]
    assert _message(client) == "billing refused key [REDACTED]"


def test_url_credentials_in_the_path_are_masked(
    traced_app: TracedApp, receiver: OtlpReceiver
) -> None:
    """A path holding a URL with credentials has them masked in ``url.path``, as the
    access log masks them."""
    app = traced_app()

    @app.get("/fetch/<path:target>")
    def fetch(target: str) -> dict[str, Any]:
        return {"ok": True}

    app.test_client().get("/fetch/https://admin:s3cretpw@internal/x")
    flush(app)
    [span] = receiver.wait_for(1)
    assert span.attributes["url.path"] == "/fetch/https://admin:***@internal/x"
