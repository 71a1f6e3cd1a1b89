"""Breaker state shared through Redis, and the local state it falls back on."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import (
    CircuitOpenError,
)
from flask_gateway_obs.config import Keys
from flask_gateway_obs.testing import capture_logs

from ..conftest import MakeApp, RedisServer
from .helpers import (
    BREAKER_LOGGER,
    Dependency,
    fail,
    make_breaker,
)


def redis_app(make_app: MakeApp, url: str, namespace: str, **config: Any) -> Flask:
    return make_app(
        {
            Keys.BREAKER_STORAGE: "redis",
            Keys.BREAKER_REDIS_URL: url,
            Keys.BREAKER_REDIS_NAMESPACE: namespace,
            **config,
        }
    )


@pytest.mark.redis
def test_breaker_opened_in_one_instance_is_open_in_another(
    make_app: MakeApp, redis_url: str
) -> None:
    """Two app instances (workers) share state; one started later never resets it."""
    namespace = f"test:{uuid.uuid4().hex}"
    first = redis_app(make_app, redis_url, namespace)
    cb = make_breaker(first, fail_max=2, reset_timeout=60)
    fail(cb, Dependency(), 2)
    assert cb.state == "open"

    second = redis_app(make_app, redis_url, namespace)
    other = make_breaker(second, fail_max=2, reset_timeout=60)
    dep = Dependency()
    with pytest.raises(CircuitOpenError) as caught:
        other.call(dep)
    assert dep.calls == 0
    assert 0 < (caught.value.retry_after or 0) <= 60

    other.close()
    assert cb.state == "closed"
    import redis

    client = redis.Redis.from_url(redis_url)
    assert client.get(f"{namespace}:payments:pybreaker:state") == b"closed"
    client.delete(*client.keys(f"{namespace}:*"))
    client.close()


@pytest.mark.redis
def test_other_services_do_not_share_state(make_app: MakeApp, redis_url: str) -> None:
    """The default namespace is per service: another service's breaker stays closed."""
    namespace = f"test:{uuid.uuid4().hex}"
    first = redis_app(make_app, redis_url, namespace)
    second = redis_app(make_app, redis_url, namespace + "-other")
    fail(make_breaker(first, fail_max=1), Dependency(), 1)
    assert make_breaker(second, fail_max=1).state == "closed"


@pytest.mark.redis
def test_redis_storage_asked_in_code_uses_the_shared_redis_url(
    make_app: MakeApp, redis_url: str
) -> None:
    """GATEWAY_OBS_REDIS_URL set, storage "memory" by default: storage="redis" in code shares
    that breaker through Redis (client made on first use), warning once if unnamed; the
    others keep their state in memory."""
    namespace = f"test:{uuid.uuid4().hex}"
    app = make_app({Keys.REDIS_URL: redis_url, Keys.BREAKER_REDIS_NAMESPACE: namespace})
    cb = make_breaker(app, "shared", storage="redis", fail_max=1)
    fail(cb, Dependency(), 1)
    local = make_breaker(app, "local", fail_max=1)
    fail(local, Dependency(), 1)
    assert local.state == "open"
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.get(f"{namespace}:shared:pybreaker:state") == b"open"
        assert client.keys(f"{namespace}:local:*") == []
        unnamed = make_app({Keys.REDIS_URL: redis_url})
        with capture_logs(BREAKER_LOGGER) as logs:
            make_breaker(unnamed, "shared", storage="redis")
            make_breaker(unnamed, "other", storage="redis")
        assert len(logs.find(level="warning", namespace="gateway_obs:testapp")) == 1
    finally:
        keys = client.keys(f"{namespace}:*") + client.keys("gateway_obs:testapp:*")
        if keys:
            client.delete(*keys)
        client.close()


@pytest.mark.redis
@pytest.mark.slow
def test_redis_down_falls_back_to_local_state_with_a_capped_warning(
    make_app: MakeApp, redis_server: RedisServer
) -> None:
    """Redis killed: calls still work, the breaker still opens locally, one warning logged."""
    app = redis_app(make_app, redis_server.url, "test", **{Keys.BREAKER_REDIS_TIMEOUT: 0.2})
    cb = make_breaker(app, fail_max=2, reset_timeout=60)
    dep = Dependency()
    assert cb.call(dep) == "ok"
    redis_server.stop()
    with capture_logs("flask_gateway_obs.breaker") as logs:
        for _ in range(5):
            assert cb.call(dep) == "ok"
        raised = fail(cb, dep, 2)
        assert isinstance(raised[1], CircuitOpenError)
        with pytest.raises(CircuitOpenError):
            cb.call(dep)
        late = make_breaker(app, "created-while-down", fail_max=1)
        assert late.call(Dependency()) == "ok"
    warnings = logs.find(message="breaker state storage unavailable; using local state")
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["error_type"] == "ConnectionError"
    assert cb.state == "open"


@pytest.mark.redis
@pytest.mark.slow
def test_shared_state_resumes_when_redis_returns(
    make_app: MakeApp, redis_server: RedisServer
) -> None:
    """After the retry interval a restarted Redis is used again (and the recovery logged)."""
    app = redis_app(make_app, redis_server.url, "test", **{Keys.BREAKER_REDIS_RETRY_INTERVAL: 0.05})
    cb = make_breaker(app, fail_max=1, reset_timeout=60)
    redis_server.stop()
    assert cb.call(Dependency()) == "ok"
    redis_server.start()
    time.sleep(0.1)
    with capture_logs("flask_gateway_obs.breaker") as logs:
        fail(cb, Dependency(), 1)
    assert logs.find(message="breaker state storage reachable again; sharing state through Redis")
    import redis

    client = redis.Redis.from_url(redis_server.url)
    assert client.get("test:payments:pybreaker:state") == b"open"
    client.close()


@pytest.mark.redis
def test_black_holed_redis_does_not_hang_calls(
    make_app: MakeApp, black_hole: tuple[str, int]
) -> None:
    """A Redis that never answers: its timeout is logged once, then local state is used
    (calls succeed, and the breaker still opens in this process)."""
    host, port = black_hole
    app = redis_app(
        make_app, f"redis://{host}:{port}/0", "test", **{Keys.BREAKER_REDIS_TIMEOUT: 0.1}
    )
    with capture_logs(BREAKER_LOGGER) as logs:
        cb = make_breaker(app, fail_max=1)
        for _ in range(3):
            assert cb.call(lambda: "ok") == "ok"
        fail(cb, Dependency(), 1)
        assert cb.state == "open"
    warnings = logs.find(message="breaker state storage unavailable; using local state")
    assert [w["error_type"] for w in warnings] == ["TimeoutError"]
