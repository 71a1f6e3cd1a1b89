"""The Redis check on a real Redis Cluster: a cluster that lost a master (no replica to
take over) reports ``cluster_state:fail``, and the check says unhealthy, within its timeout."""

from __future__ import annotations

import time
from typing import Any

import pytest

from flask_gateway_obs.config import Keys
from flask_gateway_obs.health.checks import RedisCheck

from ..redis_deployments import Cluster, fresh_redis_cluster, wait_until  # noqa: F401

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TIMEOUT = 0.5


def test_a_failed_cluster_is_unhealthy(make_app: Any, request: pytest.FixtureRequest) -> None:
    """Kill one of three masters: once the others report cluster_state:fail, every run of
    the check is unhealthy (whichever node it asks), and /health/ready answers 503 in time."""
    cluster: Cluster = request.getfixturevalue("fresh_redis_cluster")
    check = RedisCheck(url=cluster.url, timeout=TIMEOUT)
    assert check().status == "healthy"
    app = make_app(
        {Keys.REDIS_URL: cluster.url, Keys.HEALTH_TIMEOUT: TIMEOUT, Keys.HEALTH_CACHE_TTL: 0}
    )
    assert app.test_client().get("/health/ready").status_code == 200
    dead, *alive = cluster.ports
    cluster.servers.kill(dead)
    for port in alive:
        wait_until(lambda p=port: cluster.state(p) == "fail", f"node {port} to report fail", 10)
    for _ in range(8):
        try:
            result = check()
        except Exception:  # the dead node's own answer: the runner reports it unhealthy
            continue
        assert (result.status, result.reason) == ("unhealthy", "cluster_state is fail")
    for _ in range(3):
        started = time.monotonic()
        answer = app.test_client().get("/health/ready")
        elapsed = time.monotonic() - started
        assert answer.status_code == 503
        assert answer.get_json()["checks"]["redis"]["status"] == "unhealthy"
        assert elapsed < TIMEOUT + 0.5
