"""What the fast path saves: storage round trips, sweeper threads, cached plans (fast path only)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from limits.storage import MemoryStorage, RedisStorage

from flask_gateway_obs._compat import limits as compat_limits
from flask_gateway_obs.config import Keys

from ..conftest import ManualClock
from .helpers import (
    CLIENT,
    add_routes,
    limiter_of,
    statuses,
    unique_service,
    written_commands,
)


@pytest.mark.redis
@pytest.mark.slow
def test_fixed_window_headers_come_from_the_hit_when_redis_dies_in_the_view(
    make_app, redis_server
) -> None:
    """Fixed window: headers come from the hit, not Redis after the view; then it fails open."""
    app = make_app({Keys.REDIS_URL: redis_server.url})
    limiter = limiter_of(app)
    limiter.clock = ManualClock()

    @app.get("/kill")
    @limiter.limit("10/minute")
    def kill() -> dict[str, Any]:
        redis_server.stop()
        return {"killed": True}

    client = app.test_client()
    response = client.get("/kill", environ_base=CLIENT)
    assert response.status_code == 200 and response.get_json() == {"killed": True}
    assert response.headers["X-RateLimit-Remaining"] == "9"
    assert not limiter.storage_down  # nothing was asked of Redis after the view
    again = client.get("/kill", environ_base=CLIENT)
    assert again.status_code == 200 and limiter.storage_down


def test_methods_clients_make_up_are_counted_and_do_not_grow_the_cache(make_app) -> None:
    """A route taking any method: 50 invented methods each count, and the plans stay bounded."""
    from werkzeug.routing import Rule

    from flask_gateway_obs.ratelimit.fastpath import MAX_METHODS, FastLimiter

    app = make_app({"RATELIMIT_DEFAULT": "1000/minute"})
    app.url_map.add(Rule("/any", endpoint="any"))  # no methods: werkzeug matches every one
    app.view_functions["any"] = lambda: "any"
    client = app.test_client()
    responses = [client.open("/any", method=f"X{i}", environ_base=CLIENT) for i in range(50)]
    assert {r.status_code for r in responses} == {200}
    remaining = [int(r.headers["X-RateLimit-Remaining"]) for r in responses]
    assert remaining == list(range(999, 949, -1))  # one count per request, past the bound too
    limiter = limiter_of(app)
    assert isinstance(limiter, FastLimiter) and limiter.cached_plans <= MAX_METHODS


def test_the_memory_sweeper_thread_starts_at_most_once_a_second(make_app, monkeypatch) -> None:
    """Hits more than its 10 ms apart do not each start a thread to sweep expired windows."""
    started: list[float] = []

    class CountingTimer(threading.Timer):
        def start(self) -> None:
            started.append(time.monotonic())
            super().start()

    app = add_routes(make_app({"RATELIMIT_DEFAULT": "1000/minute"}))
    monkeypatch.setattr(threading, "Timer", CountingTimer)
    client = app.test_client()
    for _ in range(5):
        assert statuses(client, "/free", 1) == [200]
        time.sleep(0.015)  # limits' one-shot sweeper (10 ms) has finished by the next hit
    assert len(started) <= 1


def test_expired_memory_windows_are_still_swept(make_app, monkeypatch) -> None:
    """A window that expired is removed from memory even if its client never comes back."""
    monkeypatch.setattr(compat_limits, "SWEEP_INTERVAL", 0.0)
    app = add_routes(make_app({"RATELIMIT_DEFAULT": "1000/minute"}))
    storage = limiter_of(app).storage
    assert isinstance(storage, MemoryStorage)
    client = app.test_client()
    assert statuses(client, "/free", 1) == [200]
    (gone,) = storage.expirations
    storage.expirations[gone] = time.time() - 1  # as if its minute were over
    deadline = time.monotonic() + 5
    while gone in storage.storage and time.monotonic() < deadline:
        time.sleep(0.02)
        client.get("/free", environ_base={"REMOTE_ADDR": "192.0.2.99"})
    assert gone not in storage.storage


@pytest.mark.redis
def test_a_changed_redis_script_in_limits_keeps_counting_through_the_strategy(
    make_app, redis_url, monkeypatch
) -> None:
    """If limits ships another fixed-window script, the hit goes through its strategy instead."""
    monkeypatch.setattr(compat_limits, "INCR_EXPIRE", b"-- the script as an older limits had it")
    app = add_routes(make_app({Keys.REDIS_URL: redis_url, Keys.SERVICE_NAME: unique_service()}))
    client = app.test_client()
    assert statuses(client, "/items/1", 1) == [200]  # loads limits' own script
    storage = limiter_of(app).storage
    assert isinstance(storage, RedisStorage)
    scripts: list[str] = []
    original = storage.storage.execute_command

    def recording(*args: Any, **options: Any) -> Any:
        if args[0] == "EVALSHA":
            scripts.append(str(args[1]))
        return original(*args, **options)

    monkeypatch.setattr(storage.storage, "execute_command", recording)
    responses = [client.get("/items/1", environ_base=CLIENT) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["1", "0", "0"]
    assert scripts == [storage.lua_incr_expire.sha] * 3  # limits' own hit, every time


@pytest.mark.redis
def test_a_limited_request_costs_one_redis_round_trip(make_app, redis_url, monkeypatch) -> None:
    """Fixed window on Redis with headers on: the hit and the window in one command."""
    app = add_routes(
        make_app(
            {
                Keys.REDIS_URL: redis_url,
                Keys.SERVICE_NAME: unique_service(),
                "RATELIMIT_DEFAULT": "100/minute",
            }
        )
    )
    client = app.test_client()
    assert statuses(client, "/free", 1) == [200]  # loads the script
    sent = written_commands(monkeypatch, limiter_of(app))
    responses = [client.get("/free", environ_base=CLIENT) for _ in range(3)]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["98", "97", "96"]
    assert all(0 < int(r.headers["X-RateLimit-Reset"]) - time.time() <= 61 for r in responses)
    assert sent == ["EVALSHA"] * 3


def test_without_a_limit_no_flask_hook_runs_per_request(make_app) -> None:
    """Rate limiting on and no limit declared: the app has the hooks of rate limiting off."""
    hooks = []
    for enabled in (True, False):
        app = make_app({Keys.RATELIMIT_ENABLED: enabled})
        app.add_url_rule("/free", "free", lambda: "free")
        assert statuses(app.test_client(), "/free", 3) == [200] * 3
        registered = (
            app.before_request_funcs,
            app.after_request_funcs,
            app.teardown_request_funcs,
        )
        hooks.append([dict(funcs) for funcs in registered])  # not even an empty list left
    assert hooks[0] == hooks[1] == [{}, {}, {}]
