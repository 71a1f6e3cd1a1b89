"""The limiter on the Redis deployments users run, when part of one fails: a Cluster node
down or black-holed costs a request about the storage timeout, once; through Sentinel,
windows are read from the master, not from a replica that lags."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from flask import Flask
from flask import request as flask_request

from flask_gateway_obs.config import Keys

from ..redis_deployments import (  # noqa: F401
    Cluster,
    Sentinels,
    fresh_redis_cluster,
    fresh_redis_sentinel,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LIMIT = 3
TIMEOUT = 0.25


def gateway(make_app: Any, url: str, limit: int = LIMIT) -> Flask:
    """An app limited to ``limit`` requests a minute per X-Client, on the storage at ``url``."""
    app = make_app(
        {
            Keys.REDIS_URL: url,
            Keys.SERVICE_NAME: f"test-{uuid.uuid4().hex[:8]}",
            Keys.HEALTH_CHECK_REDIS: False,
            Keys.RATELIMIT_KEY_FUNC: lambda: flask_request.headers.get("X-Client", "anonymous"),
            Keys.RATELIMIT_STORAGE_TIMEOUT: TIMEOUT,
            Keys.RATELIMIT_PROBE_INTERVAL: 1.0,
            "RATELIMIT_DEFAULT": f"{limit} per minute",
        }
    )

    @app.get("/pay")
    def pay() -> Any:
        return {"paid": True}

    return app


def timed(app: Flask, who: str, count: int, pause: float = 0.0) -> list[tuple[int, float]]:
    """``count`` requests from ``who``: each one's status and seconds."""
    found = []
    for _ in range(count):
        started = time.monotonic()
        status = app.test_client().get("/pay", headers={"X-Client": who}).status_code
        found.append((status, time.monotonic() - started))
        time.sleep(pause)
    return found


@pytest.mark.parametrize("failure", ["killed", "black-holed"])
def test_a_cluster_node_down_costs_a_request_the_timeout_once(
    make_app: Any, request: pytest.FixtureRequest, limiter_path: str, failure: str
) -> None:
    """Kill or SIGSTOP the node that holds a client's window: no request waits for
    redis-py's retries (seconds); they are served (fail open), each within far less than 2 s,
    probes of the storage included."""
    cluster: Cluster = request.getfixturevalue("fresh_redis_cluster")
    app = gateway(make_app, cluster.url, limit=100)
    who = uuid.uuid4().hex
    assert [status for status, _ in timed(app, who, 1)] == [200]
    port = cluster.owner(f"*{who}*")
    if failure == "killed":
        cluster.servers.kill(port)
    else:
        cluster.servers.pause(port)
    # 8 requests over about 1.6 s: the first finds the node down, later ones probe it.
    results = timed(app, who, 8, pause=0.2)
    assert [status for status, _ in results] == [200] * 8
    slowest = max(seconds for _, seconds in results)
    assert slowest < 2.0, results
    assert sum(seconds for _, seconds in results) < 4.0, results


def test_sentinel_windows_are_read_from_the_master(
    make_app: Any, request: pytest.FixtureRequest, limiter_path: str
) -> None:
    """With the replica cut off its master (it serves stale reads), X-RateLimit-Remaining
    still counts down and a 429's Retry-After is the window's: both come from the master."""
    sentinels: Sentinels = request.getfixturevalue("fresh_redis_sentinel")
    sentinels.break_replica()
    app = gateway(make_app, sentinels.url)
    client = app.test_client()
    who = uuid.uuid4().hex
    answers = [client.get("/pay", headers={"X-Client": who}) for _ in range(LIMIT + 1)]
    assert [a.status_code for a in answers] == [200] * LIMIT + [429]
    remaining = [a.headers["X-RateLimit-Remaining"] for a in answers]
    assert remaining == [str(n) for n in range(LIMIT - 1, -1, -1)] + ["0"]
    assert 50 <= int(answers[-1].headers["Retry-After"]) <= 60
