"""Helpers of the rate-limit tests: routes, requests, storage counts."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask import Flask
from flask_limiter import Limiter
from limits.storage import MemoryStorage, RedisStorage

from flask_gateway_obs.core.contracts import Recorder
from flask_gateway_obs.ratelimit import GatewayLimiter

ITEM_ROUTE = "/items/<int:item_id>"
CLIENT = {"REMOTE_ADDR": "192.0.2.7"}


class RecordingRecorder(Recorder):
    """Keeps what the limiter reports instead of counting it."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.breaches: list[str] = []

    def error(self, error_type: str, source: str) -> None:
        self.errors.append((error_type, source))

    def rate_limit_exceeded(self, route: str) -> None:
        self.breaches.append(route)


def limiter_of(app: Flask) -> GatewayLimiter:
    """The app's limiter (state.limiter)."""
    limiter = app.extensions["gateway_obs"].limiter
    assert isinstance(limiter, GatewayLimiter)
    return limiter


def add_routes(app: Flask, item_limit: str = "3/minute", **limit_options: Any) -> Flask:
    """``/items/<id>`` limited per route, ``/free`` under the defaults, ``/exempt`` never."""
    limiter = limiter_of(app)

    @app.get(ITEM_ROUTE)
    @limiter.limit(item_limit, **limit_options)
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    @app.get("/free")
    def free() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/exempt")
    @limiter.exempt
    def exempt() -> dict[str, Any]:
        return {"ok": True}

    return app


def statuses(client: Any, path: str, count: int, **kwargs: Any) -> list[int]:
    """The statuses of ``count`` GETs of ``path`` from :data:`CLIENT`."""
    return [client.get(path, environ_base=CLIENT, **kwargs).status_code for _ in range(count)]


def problem(response: Any) -> dict[str, Any]:
    """The problem+json body of ``response``, checked for the wire contract's members."""
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = json.loads(response.data)
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def count_commands(monkeypatch: pytest.MonkeyPatch, limiter: Limiter) -> list[str]:
    """Every command the limiter's Redis client sends from now on (each one a backend attempt)."""
    storage = limiter.storage
    assert isinstance(storage, RedisStorage)
    client = storage.storage
    sent: list[str] = []
    original = client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return original(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    return sent


def unique_service() -> str:
    """A service name (and so a key prefix) no other test uses."""
    return f"rl-test-{uuid.uuid4().hex[:12]}"


def memory_counts(limiter: Limiter) -> dict[str, int]:
    """The non-zero counts of an in-memory storage, by key."""
    storage = limiter.storage
    assert isinstance(storage, MemoryStorage)
    return {key: count for key, count in storage.storage.items() if count}


def redis_counts(url: str, prefix: str) -> dict[str, tuple[int, bool]]:
    """Count and whether it expires, of each limiter key of ``prefix``, with the prefix cut out."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        found = {}
        for key in client.scan_iter(match=f"LIMITS:LIMITER/{prefix}/*"):
            name = key.decode().replace(f"/{prefix}/", "/<prefix>/", 1)
            found[name] = (int(client.get(key) or 0), int(client.ttl(key)) > 0)
        return found
    finally:
        client.close()


def delete_keys(url: str, *prefixes: str) -> None:
    """Delete this test's limiter keys (only its own prefixes: db 15 is shared)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for prefix in prefixes:
            keys = list(client.scan_iter(match=f"LIMITS:LIMITER/{prefix}/*"))
            if keys:
                client.delete(*keys)
    finally:
        client.close()
