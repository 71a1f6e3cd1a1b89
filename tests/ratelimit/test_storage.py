"""The limiter's storage: which one, and what happens while Redis is down, slow or read-only."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from limits.storage import MemoryStorage, RedisSentinelStorage, RedisStorage

from flask_gateway_obs.config import Keys
from flask_gateway_obs.ratelimit import (
    storage_options,
    storage_uri,
)
from flask_gateway_obs.testing import capture_logs

from ..conftest import ManualClock, free_port
from .helpers import (
    CLIENT,
    RecordingRecorder,
    add_routes,
    count_commands,
    limiter_of,
    problem,
    statuses,
    unique_service,
)

pytestmark = pytest.mark.usefixtures("limiter_path")


def test_storage_comes_from_ratelimit_storage_uri_then_redis_url_then_memory() -> None:
    """RATELIMIT_STORAGE_URI wins, then GATEWAY_OBS_REDIS_URL, else memory."""
    redis = "redis://127.0.0.1:6390/2"
    assert storage_uri({"RATELIMIT_STORAGE_URI": "memory://"}, redis) == "memory://"
    assert storage_uri({}, redis) == redis
    assert storage_uri({}, "unix:///run/redis.sock?db=1") == "redis+unix:///run/redis.sock?db=1"
    assert storage_uri({}, None) == "memory://"


def test_redis_storage_gets_short_socket_timeouts_unless_the_app_sets_them(make_app) -> None:
    """Our timeout goes to the Redis client; RATELIMIT_STORAGE_OPTIONS wins; nothing connects."""
    url = "redis://127.0.0.1:1/0"  # nothing listens: setting up must not try to connect
    app = make_app({Keys.REDIS_URL: url, Keys.RATELIMIT_STORAGE_TIMEOUT: 0.1})
    storage = limiter_of(app).storage
    assert isinstance(storage, RedisStorage)
    kwargs = storage.storage.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.1 and kwargs["socket_connect_timeout"] == 0.1

    own = make_app({Keys.REDIS_URL: url, "RATELIMIT_STORAGE_OPTIONS": {"socket_timeout": 2}})
    storage = limiter_of(own).storage
    assert isinstance(storage, RedisStorage)
    assert storage.storage.connection_pool.connection_kwargs["socket_timeout"] == 2

    memory = make_app({Keys.REDIS_URL: url, "RATELIMIT_STORAGE_URI": "memory://"})
    assert isinstance(limiter_of(memory).storage, MemoryStorage)


def test_sentinel_connections_get_the_socket_timeouts_too(make_app) -> None:
    """redis+sentinel: the connections to the sentinels time out like those to Redis."""

    uri = "redis+sentinel://127.0.0.1:1/mymaster"  # nothing listens: nothing connects
    timeouts = {"socket_timeout": 0.2, "socket_connect_timeout": 0.2}
    assert storage_options(uri, 0.2) == {
        "wrap_exceptions": True,
        **timeouts,
        "sentinel_kwargs": timeouts,
        "use_replicas": False,
    }
    assert "sentinel_kwargs" not in storage_options("redis://127.0.0.1:1/0", 0.2)
    assert storage_options("memory://", 0.2) == {"wrap_exceptions": True}

    app = make_app({"RATELIMIT_STORAGE_URI": uri, Keys.RATELIMIT_STORAGE_TIMEOUT: 0.2})
    storage = limiter_of(app).storage
    assert isinstance(storage, RedisSentinelStorage)
    (sentinel,) = storage.sentinel.sentinels
    kwargs = sentinel.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.2 and kwargs["socket_connect_timeout"] == 0.2


@pytest.mark.redis
def test_two_app_instances_share_one_limit_in_redis(make_app, redis_url) -> None:
    """Two instances of one service on the same Redis count against the same limit."""
    config = {Keys.REDIS_URL: redis_url, Keys.SERVICE_NAME: unique_service()}
    first = add_routes(make_app(config)).test_client()
    second = add_routes(make_app(config)).test_client()
    assert statuses(first, "/items/1", 2) == [200, 200]
    third = second.get("/items/1", environ_base=CLIENT)
    assert third.status_code == 200
    # The headers read the shared window: 3 used of 3, resetting within the minute.
    assert third.headers["X-RateLimit-Remaining"] == "0"
    assert 0 < int(third.headers["X-RateLimit-Reset"]) - time.time() <= 61
    refused = second.get("/items/1", environ_base=CLIENT)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert statuses(first, "/items/1", 1) == [429]
    # Another service on the same Redis has its own counts.
    other = {Keys.REDIS_URL: redis_url, Keys.SERVICE_NAME: unique_service()}
    assert statuses(add_routes(make_app(other)).test_client(), "/items/1", 1) == [200]


@pytest.mark.redis
@pytest.mark.slow
def test_redis_killed_mid_test_fails_open_then_shares_limits_again(
    make_app, redis_server, monkeypatch
) -> None:
    """Redis down: served on in-memory limits, one attempt, one warning; back: shared again."""
    config = {Keys.REDIS_URL: redis_server.url, "RATELIMIT_DEFAULT": "3/minute"}
    first, second = add_routes(make_app(config)), add_routes(make_app(config))
    limiter, clock, recorder = limiter_of(first), ManualClock(), RecordingRecorder()
    limiter.clock = clock
    first.extensions["gateway_obs"].recorder = recorder
    client = first.test_client()
    assert statuses(client, "/free", 1) == [200]

    redis_server.stop()
    sent = count_commands(monkeypatch, limiter)
    with capture_logs("flask_gateway_obs.ratelimit") as logs:
        down = statuses(client, "/free", 5)
        # Limits still hold while Redis is away, per process, counted from zero.
        assert down == [200, 200, 200, 429, 429]
        assert sent == ["EVALSHA"]  # one attempt for five requests: no per-request stall
        assert limiter.storage_down
        assert recorder.errors == [("RateLimitStorageError", "ratelimit")]
        warnings_ = logs.find(level="warning")
        assert len(warnings_) == 1
        assert warnings_[0]["message"].startswith("rate limit storage unavailable")
        assert warnings_[0]["storage"] == f"redis://127.0.0.1:{redis_server.port}"

        clock.advance(0.6)  # first probe is due: Redis is still down
        assert statuses(client, "/free", 3) == [429, 429, 429]
        assert sent == ["EVALSHA", "EVALSHA"]  # the probe is a write (limits' increment)
        assert len(recorder.errors) == 2 and len(logs.find(level="warning")) == 1

        redis_server.start()
        clock.advance(0.5)  # the back-off doubled to 1 s: not yet
        assert statuses(client, "/free", 1) == [429] and len(sent) == 2
        clock.advance(0.6)
        assert statuses(client, "/free", 1) == [200]  # probe succeeds; counted in Redis again
        assert not limiter.storage_down
        assert logs.find(message="rate limit storage is back: limits are shared again")

    # Shared again: the restarted Redis holds 1 from the first app; the second adds to it.
    assert statuses(second.test_client(), "/free", 3) == [200, 200, 429]
    assert statuses(client, "/free", 1) == [429]


@pytest.mark.redis
@pytest.mark.slow
def test_fail_closed_answers_503_problem_json_while_redis_is_down(
    make_app, redis_server, monkeypatch
) -> None:
    """Fail-closed: limited routes get a 503 problem+json at once; unlimited ones are served."""
    config = {Keys.REDIS_URL: redis_server.url, Keys.RATELIMIT_FAIL_CLOSED: True}
    app = add_routes(make_app(config))
    limiter, clock = limiter_of(app), ManualClock()
    limiter.clock = clock
    client = app.test_client()
    assert statuses(client, "/items/1", 1) == [200]

    redis_server.stop()
    sent = count_commands(monkeypatch, limiter)
    refused = [client.get("/items/1", environ_base=CLIENT) for _ in range(4)]
    assert {r.status_code for r in refused} == {503}
    body = problem(refused[0])
    assert body["code"] == "rate_limit_unavailable"
    assert "Rate limiting is temporarily unavailable" in body["detail"]
    assert refused[0].headers["Retry-After"] == "1"
    assert "X-RateLimit-Limit" not in refused[0].headers
    assert sent == ["EVALSHA"]  # the rest were refused without touching Redis
    assert statuses(client, "/free", 2) == [200, 200]
    assert statuses(client, "/exempt", 2) == [200, 200]

    redis_server.start()
    clock.advance(0.6)
    assert statuses(client, "/items/1", 1) == [200]
    assert sent[:2] == ["EVALSHA", "EVALSHA"] and not limiter.storage_down


@pytest.mark.redis
def test_black_holed_redis_costs_one_timeout_not_one_per_request(
    make_app, black_hole, monkeypatch
) -> None:
    """A Redis that never answers is tried once, within its timeout; later requests skip it."""
    host, port = black_hole
    config = {
        Keys.REDIS_URL: f"redis://{host}:{port}/0",
        Keys.RATELIMIT_STORAGE_TIMEOUT: 0.1,
        "RATELIMIT_DEFAULT": "100/minute",
    }
    app = add_routes(make_app(config))
    limiter = limiter_of(app)
    limiter.clock = ManualClock()
    sent = count_commands(monkeypatch, limiter)
    client = app.test_client()
    started = time.perf_counter()
    assert statuses(client, "/free", 20) == [200] * 20
    elapsed = time.perf_counter() - started
    assert sent == ["EVALSHA"]
    assert limiter.storage_down and limiter.storage_failures == 1
    assert elapsed < 5.0  # generous: one 0.1 s timeout, not twenty


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("deduct", [False, True], ids=["headers", "deduct_when"])
def test_redis_dying_during_a_request_never_turns_it_into_a_500(
    make_app, redis_server, deduct: bool
) -> None:
    """Redis killed inside the view: the after-request step (headers, deduction) contains it."""
    # The moving window reads its window back for the headers after the view (the
    # fixed window takes them from the hit: see the next test).
    strategy = "fixed-window" if deduct else "moving-window"
    app = make_app({Keys.REDIS_URL: redis_server.url, "RATELIMIT_STRATEGY": strategy})
    limiter = limiter_of(app)
    options: dict[str, Callable[[Any], bool]] = {"deduct_when": lambda r: True} if deduct else {}

    @app.get("/kill")
    @limiter.limit("10/minute", **options)
    def kill() -> dict[str, Any]:
        redis_server.stop()
        return {"killed": True}

    response = app.test_client().get("/kill", environ_base=CLIENT)
    assert response.status_code == 200 and response.get_json() == {"killed": True}
    assert limiter.storage_down
    # The window is read from the in-memory stand-in from then on (the deduction too).
    assert response.headers["X-RateLimit-Remaining"] == ("9" if deduct else "10")


@pytest.mark.redis
@pytest.mark.slow
def test_a_flapping_redis_is_warned_about_once_a_minute(make_app, redis_server) -> None:
    """Down, back, down again within a minute: one warning; a minute later, another."""
    app = add_routes(make_app({Keys.REDIS_URL: redis_server.url, "RATELIMIT_DEFAULT": "50/minute"}))
    limiter, clock, recorder = limiter_of(app), ManualClock(), RecordingRecorder()
    limiter.clock = clock
    app.extensions["gateway_obs"].recorder = recorder
    client = app.test_client()

    def outage_and_return(first_probe: float) -> None:
        redis_server.stop()
        assert statuses(client, "/free", 2) == [200, 200]
        assert limiter.storage_down
        redis_server.start()
        clock.advance(first_probe)
        assert statuses(client, "/free", 1) == [200]
        assert not limiter.storage_down

    with capture_logs("flask_gateway_obs.ratelimit") as logs:
        outage_and_return(0.6)
        clock.advance(10)
        outage_and_return(1.1)  # down again soon after: the back-off went on (1 s, not 0.5 s)
        assert len(logs.find(level="warning")) == 1
        assert len(logs.find(message="rate limit storage is back: limits are shared again")) == 1
        clock.advance(60)
        outage_and_return(0.6)
        assert len(logs.find(level="warning")) == 2
    assert recorder.errors == [("RateLimitStorageError", "ratelimit")] * 3


@pytest.mark.redis
@pytest.mark.slow
def test_a_redis_that_answers_but_refuses_writes_stays_down_and_limits_hold(
    make_app, redis_server, monkeypatch
) -> None:
    """Read-only Redis answers PING but probes write: limits hold; a quick relapse keeps counts."""
    import redis

    app = add_routes(make_app({Keys.REDIS_URL: redis_server.url, "RATELIMIT_DEFAULT": "3/minute"}))
    limiter, clock = limiter_of(app), ManualClock()
    limiter.clock = clock
    client = app.test_client()
    admin = redis.Redis.from_url(redis_server.url)
    try:
        assert statuses(client, "/free", 1) == [200]  # 1 in Redis
        admin.replicaof("127.0.0.1", free_port())  # a replica of nothing: read-only
        assert admin.ping()
        sent = count_commands(monkeypatch, limiter)
        assert statuses(client, "/free", 4) == [200, 200, 200, 429]  # in memory, from zero
        assert limiter.storage_down and limiter.storage_failures == 1
        for wait in (0.6, 1.1, 2.1):  # probes due after 0.5, 1 and 2 s: each write refused
            clock.advance(wait)
            assert statuses(client, "/free", 1) == [429]
            assert limiter.storage_down
        assert limiter.storage_failures == 4 and "PING" not in sent

        admin.replicaof("NO", "ONE")  # takes writes again
        clock.advance(4.1)
        assert statuses(client, "/free", 1) == [200]  # the probe wrote: 2 of 3 in Redis
        assert not limiter.storage_down

        admin.replicaof("127.0.0.1", free_port())  # read-only again, seconds later
        clock.advance(5)
        assert statuses(client, "/free", 1) == [429]  # the outage's count holds
        assert limiter.storage_down and limiter.storage_failures == 5
        before = len(sent)
        clock.advance(4.1)  # not back to a 0.5 s wait: the back-off goes on (8 s)
        assert statuses(client, "/free", 1) == [429] and len(sent) == before
    finally:
        admin.close()


def test_sentinel_reads_from_the_master_unless_configured(make_app) -> None:
    """redis+sentinel: windows are read from the master; RATELIMIT_STORAGE_OPTIONS may
    still turn replica reads on."""
    uri = "redis+sentinel://127.0.0.1:1/mymaster"  # nothing listens: nothing connects
    ours = make_app({"RATELIMIT_STORAGE_URI": uri})
    assert limiter_of(ours).storage.use_replicas is False
    theirs = make_app(
        {"RATELIMIT_STORAGE_URI": uri, "RATELIMIT_STORAGE_OPTIONS": {"use_replicas": True}}
    )
    assert limiter_of(theirs).storage.use_replicas is True


def test_cluster_gets_no_retries_unless_configured() -> None:
    """redis+cluster: no command retries and no back-off (on every redis-py of the range);
    a retry option of RATELIMIT_STORAGE_OPTIONS leaves ours out."""
    from redis.retry import Retry

    uri = "redis+cluster://127.0.0.1:1,127.0.0.1:2"
    options = storage_options(uri, 0.2)
    assert isinstance(options["retry"], Retry)
    if hasattr(Retry, "get_retries"):  # redis-py 5 and later
        assert options["retry"].get_retries() == 0
    assert options.get("cluster_error_retry_attempts", 0) == 0
    for key in ("retry", "cluster_error_retry_attempts"):
        configured = storage_options(uri, 0.2, {key: 3})
        assert "retry" not in configured and "cluster_error_retry_attempts" not in configured
    assert "retry" not in storage_options("redis://127.0.0.1:1/0", 0.2)
