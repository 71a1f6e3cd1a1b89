"""The WSGI step: a streamed request ends when its body is exhausted or closed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Flask, Response

from flask_gateway_obs.testing import metric_value


def streaming_app(make_app: Any) -> Flask:
    """An app with a streamed route."""
    app: Flask = make_app()

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            yield "a"
            yield "b"

        return Response(chunks())

    return app


def test_a_stream_read_to_the_end_ends_the_request_without_a_close(make_app: Any) -> None:
    """Reading a streamed body to its end finishes the request: in-flight back to 0, counted."""
    app = streaming_app(make_app)
    response = app.test_client().get("/stream")
    assert response.get_data() == b"ab"
    assert metric_value(app, "active_connections") == 0
    count = metric_value(app, "http_requests_total", method="GET", route="/stream", status="200")
    assert count == 1
    response.close()  # closing later does not end it a second time
    assert (
        metric_value(app, "http_requests_total", method="GET", route="/stream", status="200") == 1
    )


def test_a_stream_closed_early_ends_the_request_once(make_app: Any) -> None:
    """A body closed before its end finishes the request once, at the close."""
    app = streaming_app(make_app)
    response = app.test_client().get("/stream", buffered=False)
    assert metric_value(app, "active_connections") == 1
    response.close()
    assert metric_value(app, "active_connections") == 0
    assert (
        metric_value(app, "http_requests_total", method="GET", route="/stream", status="200") == 1
    )


def test_headers_a_concern_puts_on_the_request_reach_the_response(make_app: Any) -> None:
    """Headers noted on the request's context are added when the response starts."""
    from flask_gateway_obs.core.context import current_request

    app: Flask = make_app()

    @app.get("/noted")
    def noted() -> str:
        ctx = current_request.get()
        assert ctx is not None
        ctx.headers = [("X-Noted", "1"), ("X-Also", "two")]
        return "ok"

    response = app.test_client().get("/noted", headers={"X-Request-ID": "noted-1"})
    assert response.headers["X-Noted"] == "1"
    assert response.headers["X-Also"] == "two"
    assert response.headers["X-Request-ID"] == "noted-1"
    plain = app.test_client().get("/missing")
    assert "X-Noted" not in plain.headers
