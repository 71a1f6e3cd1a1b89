"""Shared state on the Redis deployments users run: breaker state and rate limits shared by
two app instances (two workers) through a real Sentinel set-up and a real Cluster; a
Sentinel failover keeps requests served, then everything is shared again within 30 s."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, request

from flask_gateway_obs import CircuitOpenError
from flask_gateway_obs import resilience as resilience_module
from flask_gateway_obs.config import Keys
from flask_gateway_obs.resilience.circuit import CircuitBreaker

from .conftest import MakeApp
from .redis_deployments import redis_cluster, redis_sentinel, wait_until  # noqa: F401

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LIMIT = 3


def client_key() -> str:
    """Who a limit counts: the X-Client header (each test phase uses a fresh one)."""
    return request.headers.get("X-Client", "anonymous")


@pytest.fixture
def make_gateway(make_app: MakeApp) -> Iterator[Callable[[str, str], Flask]]:
    """``make_gateway(url, namespace)``: one app instance (a worker) with breakers in Redis, a
    default limit and the Redis check; the limiter's connections are closed afterwards."""
    made: list[Flask] = []

    def factory(url: str, namespace: str) -> Flask:
        app = gateway(make_app, url, namespace)
        made.append(app)
        return app

    yield factory
    for app in made:
        storage = app.extensions["gateway_obs"].limiter.storage
        for client in (getattr(storage, "storage", None), getattr(storage, "storage_slave", None)):
            if client is not None:
                client.close()


def gateway(make_app: MakeApp, url: str, namespace: str) -> Flask:
    """One app instance (a worker): breakers in Redis, a default limit, a Redis check."""
    app = make_app(
        {
            Keys.REDIS_URL: url,
            Keys.SERVICE_NAME: namespace,
            Keys.BREAKER_STORAGE: "redis",
            Keys.BREAKER_REDIS_RETRY_INTERVAL: 0.5,
            Keys.BREAKER_REDIS_TIMEOUT: 0.5,
            Keys.RATELIMIT_KEY_FUNC: client_key,
            Keys.RATELIMIT_PROBE_INTERVAL: 1.0,
            Keys.RATELIMIT_STORAGE_TIMEOUT: 0.5,
            "RATELIMIT_DEFAULT": f"{LIMIT} per minute",
        }
    )

    @app.get("/pay")
    def pay() -> Any:
        return {"paid": breaker_of(app).call(lambda: True)}

    return app


def breaker_of(app: Flask) -> CircuitBreaker:
    """The app's breaker "payments" (opens after one failure, stays open a minute)."""
    breakers = resilience_module.of_state(app.extensions["gateway_obs"]).breakers
    return breakers.get("payments", fail_max=1, reset_timeout=60)


def trip(app: Flask) -> None:
    """Open the app's breaker with a failing call."""
    with pytest.raises(CircuitOpenError):
        breaker_of(app).call(_refused)


def _refused() -> None:
    raise ConnectionError("upstream refused")


def statuses(apps: list[Flask], who: str, count: int) -> list[int]:
    """``count`` requests to /pay from client ``who``, alternating between the apps."""
    return [
        apps[i % len(apps)].test_client().get("/pay", headers={"X-Client": who}).status_code
        for i in range(count)
    ]


@pytest.fixture(params=["redis_sentinel", "redis_cluster"])
def deployment(request: pytest.FixtureRequest) -> Any:
    """Each deployment in turn."""
    return request.getfixturevalue(request.param)


def test_breaker_state_and_limits_are_shared_by_every_instance(
    make_gateway: Callable[[str, str], Flask], deployment: Any
) -> None:
    """A breaker opened in one instance is open in the other; the limit counts the requests
    of both together; the Redis health check passes."""
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    first, second = make_gateway(deployment.url, namespace), make_gateway(deployment.url, namespace)
    ready = first.test_client().get("/health/ready")
    assert (ready.status_code, ready.get_json()["checks"]["redis"]["status"]) == (200, "healthy")
    assert statuses([first, second], "alice", LIMIT + 1) == [200] * LIMIT + [429]
    trip(first)
    assert first.test_client().get("/pay", headers={"X-Client": "bob"}).status_code == 503
    assert breaker_of(second).state == "open"
    assert second.test_client().get("/pay", headers={"X-Client": "carol"}).status_code == 503
    breaker_of(second).close()
    assert breaker_of(first).state == "closed"


def test_sentinel_failover_keeps_requests_served_then_shares_again(
    make_gateway: Callable[[str, str], Flask], request: pytest.FixtureRequest
) -> None:
    """Kill the master: requests are still served (limits fail open, breakers use local
    state) while the Redis check says unhealthy; within 30 s of the kill limits and breaker
    state are shared again through the new master, and the check passes."""
    sentinels = request.getfixturevalue("redis_sentinel")
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    apps = [make_gateway(sentinels.url, namespace) for _ in range(2)]
    assert statuses(apps, "before", 2) == [200, 200]
    killed_at = time.monotonic()
    old = sentinels.kill_master()
    assert statuses(apps, "during", 4) == [200] * 4  # served: the limit fails open
    assert apps[0].test_client().get("/health/ready").status_code == 503
    sentinels.wait_for_failover(old)

    def shared_again() -> bool:
        phase = uuid.uuid4().hex
        for app in apps:
            breaker_of(app).close()
        if statuses(apps, phase, LIMIT + 1)[-1] != 429:
            return False
        trip(apps[0])
        return breaker_of(apps[1]).state == "open"

    wait_until(shared_again, "limits and breaker state shared through the new master", 30)
    wait_until(
        lambda: apps[1].test_client().get("/health/ready").status_code == 200,
        "the Redis check to pass through the new master",
        30,
    )
    assert time.monotonic() - killed_at < 30
