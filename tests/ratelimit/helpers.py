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


#: What a connection sends to set itself up, not what the limiter asks of Redis.
_HANDSHAKE = frozenset({"AUTH", "HELLO", "SELECT", "CLIENT", "READONLY"})


def _command_name(packed: Any) -> str:
    """The command in RESP ``packed`` (bytes, or a sequence of chunks)."""
    if isinstance(packed, str):
        packed = packed.encode()
    data = packed if isinstance(packed, bytes) else b"".join(bytes(chunk) for chunk in packed)
    # *<n>\r\n$<len>\r\n<NAME>\r\n...
    return data.split(b"\r\n", 3)[2].decode().upper()


def count_commands(monkeypatch: pytest.MonkeyPatch, limiter: Limiter) -> list[str]:
    """Every command the limiter asks of its Redis from now on, through its client or its
    own connections (each one a backend attempt, reconnects inside it included)."""
    from flask_gateway_obs.ratelimit.redis_hit import RedisHit

    storage = limiter.storage
    assert isinstance(storage, RedisStorage)
    client = storage.storage
    sent: list[str] = []
    original = client.execute_command
    original_hit = RedisHit.__call__

    def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return original(*args, **options)

    def hit(self: RedisHit, key: str, expiry: int, cost: int) -> Any:
        if self.client is client and self.direct:
            sent.append("EVALSHA")
        return original_hit(self, key, expiry, cost)

    monkeypatch.setattr(client, "execute_command", counting)
    monkeypatch.setattr(RedisHit, "__call__", hit)
    return sent


def written_commands(monkeypatch: pytest.MonkeyPatch, limiter: Limiter) -> list[str]:
    """Every command written on a connection to the limiter's Redis from now on (the
    connections' own set-up aside), whichever way the limiter sends it."""
    import redis

    storage = limiter.storage
    assert isinstance(storage, RedisStorage)
    port = storage.storage.connection_pool.connection_kwargs.get("port")
    owner = next(
        cls for cls in redis.connection.Connection.__mro__ if "send_packed_command" in vars(cls)
    )
    original = owner.send_packed_command
    sent: list[str] = []

    def writing(self: Any, command: Any, *args: Any, **options: Any) -> Any:
        name = _command_name(command)
        if getattr(self, "port", None) == port and name not in _HANDSHAKE:
            sent.append(name)
        return original(self, command, *args, **options)

    monkeypatch.setattr(owner, "send_packed_command", writing)
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
