"""The rate-limit headers and Flask-Limiter's header step: on every response that needs them,
never twice, and no Flask hook left behind once the requests that needed one are served."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask import Flask, Response
from limits.storage import MemoryStorage

from flask_gateway_obs import GatewayObs

from .helpers import CLIENT, limiter_of, memory_counts

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def after_hooks(app: Flask) -> list[Any]:
    """Every after-request hook of the app (Flask runs each on every request)."""
    return [hook for hooks in app.after_request_funcs.values() for hook in hooks]


def rate_headers(response: Any) -> list[tuple[str, str]]:
    """The X-RateLimit headers of a response, as many times as they were sent."""
    return [(name, value) for name, value in response.headers if name in RATE_HEADERS]


@pytest.mark.usefixtures("limiter_path")
def test_each_response_carries_the_headers_once(make_app) -> None:
    """Let through or refused, a response has each X-RateLimit header exactly once."""
    app = make_app({"RATELIMIT_DEFAULT": "2/minute"})
    app.add_url_rule("/free", "free", lambda: "free")
    client = app.test_client()
    responses = [client.get("/free", environ_base=CLIENT) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    for response in responses:
        assert [name for name, _ in rate_headers(response)] == list(RATE_HEADERS)
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["1", "0", "0"]
    assert "Retry-After" not in responses[0].headers
    assert 1 <= int(responses[2].headers["Retry-After"]) <= 60


def test_no_hook_stays_registered_after_requests_let_through_or_refused(make_app) -> None:
    """Fast path: after a 200 or a 429 has been served, no after-request hook is left."""
    app = make_app({"RATELIMIT_DEFAULT": "1/minute"})
    app.add_url_rule("/free", "free", lambda: "free")
    client = app.test_client()
    assert client.get("/free", environ_base=CLIENT).status_code == 200
    assert after_hooks(app) == []
    refused = client.get("/free", environ_base=CLIENT)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert after_hooks(app) == []
    assert client.get("/free", environ_base=CLIENT).status_code == 429
    assert after_hooks(app) == []


def test_concurrent_requests_all_get_their_headers_and_leave_no_hook(make_app) -> None:
    """Threads refused and let through at once: every response complete, no hook left."""
    app = make_app({"RATELIMIT_DEFAULT": "10/minute"})
    app.add_url_rule("/free", "free", lambda: "free")
    start = threading.Barrier(8)
    responses: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        client = app.test_client()
        start.wait()
        for _ in range(3):
            response = client.get("/free", environ_base=CLIENT)
            with lock:
                responses.append(response)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(served) == 10 and len(refused) == 14
    assert sorted(int(r.headers["X-RateLimit-Remaining"]) for r in served) == list(range(10))
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert all(len(rate_headers(r)) == 3 for r in responses)
    assert after_hooks(app) == []


def test_an_after_request_hook_sees_no_headers_of_a_request_let_through(make_app) -> None:
    """Fast path: the headers are added when the response starts, after every hook."""
    app = make_app(init=False)
    app.config["RATELIMIT_DEFAULT"] = "5/minute"
    seen: list[str | None] = []

    @app.after_request
    def look(response: Response) -> Response:  # registered before init_app: runs last
        seen.append(response.headers.get("X-RateLimit-Remaining"))
        return response

    GatewayObs(app)
    app.add_url_rule("/free", "free", lambda: "free")
    response = app.test_client().get("/free", environ_base=CLIENT)
    assert seen == [None]
    assert response.headers["X-RateLimit-Remaining"] == "4"


@pytest.mark.usefixtures("limiter_path")
def test_current_limit_read_in_an_after_request_hook_describes_the_request(make_app) -> None:
    """A hook reading limiter.current_limit gets this request's hit; headers stay once."""
    app = make_app({"RATELIMIT_DEFAULT": "5/minute"})
    limiter = limiter_of(app)
    remaining: list[int] = []

    @app.after_request
    def quota(response: Response) -> Response:
        current = limiter.current_limit
        assert current is not None
        remaining.append(current.remaining)
        return response

    app.add_url_rule("/free", "free", lambda: "free")
    client = app.test_client()
    responses = [client.get("/free", environ_base=CLIENT) for _ in range(2)]
    assert remaining == [4, 3]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["4", "3"]
    assert all(len(rate_headers(r)) == 3 for r in responses)


@pytest.mark.usefixtures("limiter_path")
def test_an_app_driven_without_the_wsgi_step_still_gets_the_headers(make_app) -> None:
    """full_dispatch_request in a test request context: the headers come from Flask's side."""
    app = make_app({"RATELIMIT_DEFAULT": "5/minute"})
    app.add_url_rule("/free", "free", lambda: "free")
    with app.test_request_context("/free", environ_base=CLIENT):
        response = app.full_dispatch_request()
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "4"
    assert len(rate_headers(response)) == 3


@pytest.mark.usefixtures("limiter_path")
def test_a_429_the_view_makes_itself_keeps_its_own_retry_after(make_app) -> None:
    """Only a limit's breach gets the limiter's Retry-After; the app's own 429 keeps its own."""
    app = make_app({"RATELIMIT_DEFAULT": "5/minute"})

    @app.get("/busy")
    def busy() -> tuple[str, int, dict[str, str]]:
        return "busy", 429, {"Retry-After": "7"}

    @app.get("/plain-busy")
    def plain_busy() -> tuple[str, int]:
        return "busy", 429

    client = app.test_client()
    busy_response = client.get("/busy", environ_base=CLIENT)
    assert busy_response.headers["Retry-After"] == "7"
    assert busy_response.headers["X-RateLimit-Remaining"] == "4"
    plain = client.get("/plain-busy", environ_base=CLIENT)
    assert plain.status_code == 429 and "Retry-After" not in plain.headers


@pytest.mark.usefixtures("limiter_path")
def test_a_memory_window_that_expired_starts_again_from_zero(make_app) -> None:
    """Once a window is over, the next hit counts one, under the same key."""
    app = make_app({"RATELIMIT_DEFAULT": "2/minute"})
    app.add_url_rule("/free", "free", lambda: "free")
    limiter = limiter_of(app)
    client = app.test_client()
    assert [client.get("/free", environ_base=CLIENT).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    storage = limiter.storage
    assert isinstance(storage, MemoryStorage)
    (key,) = memory_counts(limiter)
    storage.expirations[key] = time.time() - 1  # as if its minute were over
    again = client.get("/free", environ_base=CLIENT)
    assert again.status_code == 200 and again.headers["X-RateLimit-Remaining"] == "1"
    assert memory_counts(limiter) == {key: 1}
    assert int(again.headers["X-RateLimit-Reset"]) > time.time()
