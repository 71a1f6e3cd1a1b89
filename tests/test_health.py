"""Health endpoints and runner: real Redis and PostgreSQL, faults on loopback, timeouts,
thread bounds, the cache, the detail policy and registration rules."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import CheckResult, ConfigError, GatewayObs, HealthReport, health
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.contracts import Recorder
from flask_gateway_obs.core.state import EXTENSION_KEY
from flask_gateway_obs.health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    CheckOutcome,
    HealthRunner,
    UnknownGroupError,
    aggregate,
)
from flask_gateway_obs.testing import capture_logs

from .conftest import MakeApp, ManualClock, RedisServer, free_port

#: Most tests look at custom or network checks only.
QUIET = {Keys.HEALTH_CHECK_MEMORY: False, Keys.HEALTH_CHECK_DISK: False}
#: Generous scheduling allowance for a loaded 2-core machine; bounds, not speeds.
MARGIN = 0.6


FakeClock = ManualClock


class RecordingRecorder(Recorder):
    """A recorder that remembers what health reported to it."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str]] = []
        self.latencies: list[tuple[str, str, float, bool]] = []

    def health_check(self, check: str, status: str) -> None:
        self.statuses.append((check, status))

    def dependency(self, dependency: str, operation: str, seconds: float, failed: bool) -> None:
        self.latencies.append((dependency, operation, seconds, failed))


def build(make_app: MakeApp, config: dict[str, Any] | None = None) -> tuple[Flask, GatewayObs]:
    """An app and the GatewayObs set up on it."""
    app = make_app(config, init=False)
    return app, GatewayObs(app)


def runner_of(app: Flask) -> HealthRunner:
    runner = app.extensions[EXTENSION_KEY].health
    assert isinstance(runner, HealthRunner)
    return runner


def with_clock(app: Flask) -> FakeClock:
    clock = FakeClock()
    runner_of(app).clock = clock
    return clock


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hung checks wait on; set at the end so their threads finish."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def full_backlog() -> Iterator[tuple[str, int]]:
    """A loopback listener with backlog 0, filled and never accepted: a connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers: list[socket.socket] = []
    for _ in range(64):
        try:
            fillers.append(socket.create_connection(address, timeout=0.1))
        except OSError:
            break
    else:
        pytest.fail("could not fill the listen backlog")
    yield "127.0.0.1", int(address[1])
    for sock in fillers:
        sock.close()
    listener.close()


# --- real dependencies -------------------------------------------------------------------------


def test_real_redis_and_postgres_are_healthy_with_response_times(
    make_app: MakeApp, redis_url: str, database_url: str
) -> None:
    """Against this machine's Redis and PostgreSQL every check is healthy and timed."""
    app = make_app({Keys.REDIS_URL: redis_url, Keys.DATABASE_URL: database_url})
    response = app.test_client().get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == HEALTHY
    assert set(body["checks"]) == {"redis", "postgres", "memory", "disk"}
    for check in body["checks"].values():
        assert check["status"] == HEALTHY
        assert check["response_time_ms"] > 0


def test_default_body_has_status_and_response_times_only(make_app: MakeApp, redis_url: str) -> None:
    """Without details each check shows its status and response time, nothing else."""
    app = make_app({Keys.REDIS_URL: redis_url, Keys.SERVICE_VERSION: "1.4.2"})
    response = app.test_client().get("/health")
    body = response.get_json()
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert set(body) == {"status", "checks", "timestamp", "uptime_seconds", "version"}
    assert body["version"] == "1.4.2"
    assert body["uptime_seconds"] >= 0
    assert body["timestamp"].endswith("+00:00")
    for check in body["checks"].values():
        assert set(check) == {"status", "response_time_ms"}


def test_ready_runs_the_dependencies_and_health_runs_everything(
    make_app: MakeApp, redis_url: str, database_url: str
) -> None:
    """/health/ready has the ready group (Redis, PostgreSQL); /health adds memory and disk."""
    app = make_app({Keys.REDIS_URL: redis_url, Keys.DATABASE_URL: database_url})
    client = app.test_client()
    assert set(client.get("/health/ready").get_json()["checks"]) == {"redis", "postgres"}
    assert set(client.get("/health").get_json()["checks"]) == {
        "redis",
        "postgres",
        "memory",
        "disk",
    }


def test_live_never_runs_a_dependency_check(make_app: MakeApp) -> None:
    """/health/live answers 200 from the process alone while every dependency is down."""
    app, obs = build(
        make_app,
        {
            Keys.REDIS_URL: f"redis://127.0.0.1:{free_port()}/0",
            Keys.DATABASE_URL: f"postgresql://u@127.0.0.1:{free_port()}/db",
        },
    )
    calls = []
    app.extensions[EXTENSION_KEY].recorder = recorder = RecordingRecorder()

    @obs.health_check("counted")
    def counted() -> None:
        calls.append(1)

    response = app.test_client().get("/health/live")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {}
    assert calls == []
    assert recorder.statuses == []


# --- faults ------------------------------------------------------------------------------------


def test_redis_killed_mid_test_turns_unhealthy_then_recovers(
    make_app: MakeApp, redis_server: RedisServer
) -> None:
    """Kill Redis: /health 503 with redis unhealthy in time, live and other routes still 200;
    restart it: healthy again."""
    app = make_app({**QUIET, Keys.REDIS_URL: redis_server.url, Keys.HEALTH_TIMEOUT: 0.5})
    app.add_url_rule("/items", "items", lambda: {"items": []})
    clock = with_clock(app)
    client = app.test_client()
    assert client.get("/health").status_code == 200

    redis_server.stop()
    assert client.get("/health").status_code == 200, "within the TTL the cached result stands"
    clock.advance(runner_of(app).ttl)
    started = time.monotonic()
    response = client.get("/health")
    assert time.monotonic() - started < 0.5 + MARGIN
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"]["status"] == UNHEALTHY
    assert response.get_json()["status"] == UNHEALTHY
    assert client.get("/health/live").status_code == 200
    assert client.get("/items").status_code == 200

    redis_server.start()
    clock.advance(runner_of(app).ttl)
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["checks"]["redis"]["status"] == HEALTHY


@pytest.mark.parametrize("fault", ["black_hole", "full_backlog"])
def test_redis_that_never_answers_is_unhealthy_within_the_timeout(
    make_app: MakeApp, request: pytest.FixtureRequest, fault: str
) -> None:
    """A Redis that accepts and never answers, or never accepts: 503 within timeout + margin."""
    host, port = request.getfixturevalue(fault)
    app = make_app({**QUIET, Keys.REDIS_URL: f"redis://{host}:{port}/0", Keys.HEALTH_TIMEOUT: 0.4})
    started = time.monotonic()
    response = app.test_client().get("/health/ready")
    assert time.monotonic() - started < 0.4 + MARGIN
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"]["status"] == UNHEALTHY


@pytest.mark.parametrize("fault", ["black_hole", "full_backlog"])
def test_postgres_that_never_answers_is_unhealthy_within_the_timeout(
    make_app: MakeApp, request: pytest.FixtureRequest, fault: str
) -> None:
    """libpq's connect_timeout has whole seconds; the runner still answers at 0.4 s."""
    host, port = request.getfixturevalue(fault)
    app = make_app(
        {
            **QUIET,
            Keys.DATABASE_URL: f"postgresql://app:pw@{host}:{port}/db",
            Keys.HEALTH_TIMEOUT: 0.4,
            Keys.HEALTH_SHOW_DETAILS: "always",
        }
    )
    started = time.monotonic()
    response = app.test_client().get("/health/ready")
    assert time.monotonic() - started < 0.4 + MARGIN
    assert response.status_code == 503
    check = response.get_json()["checks"]["postgres"]
    assert check["status"] == UNHEALTHY
    assert check["reason"] == "timeout"
    assert check["response_time_ms"] == 400.0


def test_probe_time_is_bounded_by_the_largest_timeout_not_the_sum(
    make_app: MakeApp, release: threading.Event
) -> None:
    """Hung checks of 0.1 to 0.5 s: each times out at its own timeout, the probe at the
    largest (0.5 s), not the sum (1.5 s)."""
    _app, obs = build(make_app, QUIET)
    timeouts = {"hung_a": 0.1, "hung_b": 0.2, "hung_c": 0.3, "hung_d": 0.4, "hung_e": 0.5}
    for name, timeout in timeouts.items():
        obs.health_check(name, timeout=timeout)(lambda: release.wait(10))
    started = time.monotonic()
    report = obs.check_health()
    elapsed = time.monotonic() - started
    assert report.status == UNHEALTHY
    for name, timeout in timeouts.items():
        assert report.checks[name].reason == "timeout"
        assert report.checks[name].response_time_ms == pytest.approx(timeout * 1000.0)
    assert max(timeouts.values()) <= elapsed < max(timeouts.values()) + MARGIN
    assert elapsed < sum(timeouts.values())


def test_hung_check_does_not_pile_up_threads(make_app: MakeApp, release: threading.Event) -> None:
    """50 probes of a check that never returns leave the thread count flat."""
    app, obs = build(make_app, {**QUIET, Keys.HEALTH_CACHE_TTL: 0})
    calls = []

    @obs.health_check("stuck", timeout=0.05)
    def stuck() -> None:
        calls.append(1)
        release.wait(30)

    client = app.test_client()
    assert client.get("/health").status_code == 503
    threads_after_first = threading.active_count()
    for _ in range(50):
        response = client.get("/health")
        assert response.status_code == 503
    # <=: threads of earlier tests may still be ending; none may be added by ours
    assert threading.active_count() <= threads_after_first
    assert runner_of(app).threads == 1
    assert calls == [1]


def test_idle_pool_threads_end_so_discarded_apps_keep_no_threads(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 short-lived apps probed once each: every pool thread ends once idle."""
    monkeypatch.setattr(health, "POOL_IDLE_SECONDS", 0.05)
    before = threading.active_count()
    runners = []
    for _ in range(50):
        app, obs = build(make_app, QUIET)
        for index in range(3):
            obs.health_check(f"check{index}")(lambda: None)
        assert app.test_client().get("/health").status_code == 200
        runners.append(runner_of(app))
    assert sum(r.threads for r in runners) > 0, "the probes ran on pool threads"
    wait_until(lambda: sum(r.threads for r in runners) == 0)
    # <=: threads of earlier tests may still be ending; none of ours may be left
    wait_until(lambda: threading.active_count() <= before)


def test_pool_thread_that_ended_idle_is_replaced_on_the_next_probe(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the pool's threads ended, the next probe runs its checks again."""
    monkeypatch.setattr(health, "POOL_IDLE_SECONDS", 0.01)
    app, obs = build(make_app, {**QUIET, Keys.HEALTH_CACHE_TTL: 0})
    calls: list[int] = []
    obs.health_check("counted")(lambda: calls.append(1))
    for expected in range(1, 6):
        assert obs.check_health().status == HEALTHY
        wait_until(lambda: runner_of(app).threads == 0)
        assert len(calls) == expected


def test_stuck_run_that_comes_back_late_does_not_count_and_frees_the_check(
    make_app: MakeApp, release: threading.Event
) -> None:
    """A late result is dropped (it stays a timeout); once back, the next probe runs anew."""
    app, obs = build(make_app, {**QUIET, Keys.HEALTH_CACHE_TTL: 0})
    calls = []

    @obs.health_check("slow", timeout=0.05)
    def slow() -> None:
        calls.append(1)
        if len(calls) == 1:
            release.wait(30)

    assert obs.check_health().checks["slow"].reason == "timeout"
    release.set()
    wait_until(lambda: not runner_of(app)._inflight)
    assert obs.check_health().checks["slow"].status == HEALTHY
    assert calls == [1, 1]


# --- the cache -----------------------------------------------------------------------------------


def test_500_concurrent_probes_cause_one_ping_and_one_select_per_ttl(
    make_app: MakeApp, redis_server: RedisServer, database_url: str
) -> None:
    """Counted at the servers' side: INFO commandstats for PING, the pool for SELECT 1."""
    import redis
    from psycopg2.pool import ThreadedConnectionPool

    class CountingPool(ThreadedConnectionPool):
        borrowed = 0

        def getconn(self, key: Any = None) -> Any:
            CountingPool.borrowed += 1
            return super().getconn(key)

    admin = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    pool = CountingPool(1, 2, database_url, connect_timeout=2)
    try:
        app, obs = build(make_app, {**QUIET, Keys.REDIS_URL: redis_server.url})
        obs.set_postgres_pool(pool)
        clock = with_clock(app)
        admin.config_resetstat()
        barrier = threading.Barrier(50)
        statuses: list[int] = []

        def probe() -> None:
            client = app.test_client()
            barrier.wait()
            for _ in range(10):
                statuses.append(client.get("/health/ready").status_code)

        threads = [threading.Thread(target=probe) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 500
        assert admin.info("commandstats")["cmdstat_ping"]["calls"] == 1
        assert CountingPool.borrowed == 1

        clock.advance(runner_of(app).ttl)
        assert app.test_client().get("/health/ready").status_code == 200
        assert admin.info("commandstats")["cmdstat_ping"]["calls"] == 2
        assert CountingPool.borrowed == 2
    finally:
        admin.close()
        pool.closeall()


def test_cached_result_expires_after_the_ttl_of_the_injected_clock(make_app: MakeApp) -> None:
    """Within the TTL the cached result is served; at the TTL the check runs again."""
    app, obs = build(make_app, {**QUIET, Keys.HEALTH_CACHE_TTL: 5})
    clock = with_clock(app)
    calls = []
    obs.health_check("counted")(lambda: calls.append(1))
    obs.check_health()
    clock.advance(4.9)
    obs.check_health()
    assert len(calls) == 1
    clock.advance(0.1)
    obs.check_health()
    assert len(calls) == 2


def test_fresh_and_zero_ttl_skip_the_cache(make_app: MakeApp) -> None:
    """``fresh=True`` and a TTL of 0 run the check on every probe."""
    calls = []
    _app, obs = build(make_app, QUIET)
    obs.health_check("counted")(lambda: calls.append(1))
    obs.check_health()
    obs.check_health(fresh=True)
    assert len(calls) == 2
    _uncached, obs = build(make_app, {**QUIET, Keys.HEALTH_CACHE_TTL: 0})
    obs.health_check("counted")(lambda: calls.append(1))
    obs.check_health()
    obs.check_health()
    assert len(calls) == 4


def test_every_run_feeds_the_recorder_once_and_cache_hits_do_not(make_app: MakeApp) -> None:
    """health_check_status and dependency_latency_seconds see each run, not each probe;
    a failed run is reported to the recorder as no failure (no error to count)."""
    app, obs = build(make_app, QUIET)
    app.extensions[EXTENSION_KEY].recorder = recorder = RecordingRecorder()
    obs.health_check("ok")(lambda: None)
    obs.health_check("bad", critical=False)(lambda: False)
    for _ in range(3):
        obs.check_health()
    assert sorted(recorder.statuses) == [("bad", UNHEALTHY), ("ok", HEALTHY)]
    assert sorted((d, op, failed) for d, op, _, failed in recorder.latencies) == [
        ("bad", "health", False),
        ("ok", "health", False),
    ]
    assert all(seconds >= 0 for _, _, seconds, _ in recorder.latencies)


def test_failing_checks_observe_latency_but_count_no_error(make_app: MakeApp) -> None:
    """Failing probes set health_check_status and observe dependency_latency_seconds;
    errors_total, which counts application errors, stays at 0."""
    from flask_gateway_obs.testing import metric_value

    app, obs = build(make_app, {**QUIET, Keys.HEALTH_CACHE_TTL: 0})
    obs.health_check("down")(lambda: False)
    obs.health_check("raises")(lambda: 1 / 0)
    client = app.test_client()
    for _ in range(5):
        assert client.get("/health/ready").status_code == 503
    assert metric_value(app, "errors_total") == 0
    assert metric_value(app, "health_check_status", check="down") == 0.0
    for name in ("down", "raises"):
        assert (
            metric_value(
                app, "dependency_latency_seconds_count", dependency=name, operation="health"
            )
            == 5
        )


def test_a_broken_recorder_does_not_break_the_probe(make_app: MakeApp) -> None:
    """Instrumentation errors are contained."""

    class Broken(Recorder):
        def health_check(self, check: str, status: str) -> None:
            raise RuntimeError("metrics down")

    app, obs = build(make_app, QUIET)
    app.extensions[EXTENSION_KEY].recorder = Broken()
    obs.health_check("ok")(lambda: None)
    assert app.test_client().get("/health").status_code == 200


# --- detail policy --------------------------------------------------------------------------------


def _app_with_secrets(make_app: MakeApp, **config: Any) -> Flask:
    return make_app(
        {
            **QUIET,
            Keys.REDIS_URL: f"redis://:r3dis-pass@127.0.0.1:{free_port()}/0",
            Keys.DATABASE_URL: f"postgresql://app:pg-pass@127.0.0.1:{free_port()}/orders",
            **config,
        }
    )


def test_default_body_carries_no_error_text_host_or_password(make_app: MakeApp) -> None:
    """Failing checks show only their status: no reason, error, host, DSN or password."""
    app = _app_with_secrets(make_app)
    response = app.test_client().get("/health")
    assert response.status_code == 503
    text = response.get_data(as_text=True)
    for leak in ("r3dis-pass", "pg-pass", "127.0.0.1", "refused", "reason", "error", "redis://"):
        assert leak not in text


def test_details_are_shown_only_with_the_right_token(make_app: MakeApp) -> None:
    """when_authorized: Bearer or the token header unlocks details; a wrong token does not."""
    app = _app_with_secrets(
        make_app,
        **{Keys.HEALTH_SHOW_DETAILS: "when_authorized", Keys.HEALTH_TOKEN: "t0ken-abc"},
    )
    client = app.test_client()

    def detailed(headers: dict[str, str]) -> bool:
        return "reason" in client.get("/health", headers=headers).get_json()["checks"]["redis"]

    assert not detailed({})
    assert not detailed({"Authorization": "Bearer wrong"})
    assert not detailed({"Authorization": "Basic t0ken-abc"})
    assert not detailed({"X-Health-Token": "t0ken-ab"})
    assert not detailed({"X-Health-Token": "t0ken-abc\u00e9"})
    assert detailed({"Authorization": "Bearer t0ken-abc"})
    assert detailed({"Authorization": "bearer t0ken-abc"})
    assert detailed({"X-Health-Token": "t0ken-abc"})


def test_details_mask_passwords_and_show_the_failure(make_app: MakeApp) -> None:
    """With details: reason, error and target, and still no password."""
    app = _app_with_secrets(make_app, **{Keys.HEALTH_SHOW_DETAILS: "always"})
    response = app.test_client().get("/health")
    text = response.get_data(as_text=True)
    assert "r3dis-pass" not in text and "pg-pass" not in text
    checks = response.get_json()["checks"]
    assert checks["redis"]["reason"] == "ConnectionError"
    assert "refused" in checks["redis"]["error"].lower()
    assert checks["redis"]["details"]["url"].startswith("redis://:***@127.0.0.1:")
    assert checks["postgres"]["details"]["dsn"].startswith("postgresql://app:***@127.0.0.1:")
    assert checks["postgres"]["critical"] is True


def test_reason_and_nested_details_are_masked_in_body_api_and_log(make_app: MakeApp) -> None:
    """Passwords in a check's reason and in details at any depth (dicts, lists, tuples)
    are masked in the body, the Python API and the status-change log line."""
    app, obs = build(make_app, {**QUIET, Keys.HEALTH_SHOW_DETAILS: "always"})

    @obs.health_check("orders_db")
    def orders_db() -> CheckResult:
        return CheckResult.unhealthy(
            "could not connect to postgresql://app:hunter2@db/orders",
            replica={"dsn": "postgresql://app:hunter2@replica/orders", "port": 5432},
            fallbacks=["redis://:hunter2@cache:6379/0", ("host=db password=hunter2",)],
        )

    with capture_logs("flask_gateway_obs.health") as logs:
        response = app.test_client().get("/health")
    assert "hunter2" not in response.get_data(as_text=True)
    check = response.get_json()["checks"]["orders_db"]
    assert check["reason"] == "could not connect to postgresql://app:***@db/orders"
    assert check["details"] == {
        "replica": {"dsn": "postgresql://app:***@replica/orders", "port": 5432},
        "fallbacks": ["redis://:***@cache:6379/0", ["host=db password=***"]],
    }
    assert obs.check_health().checks["orders_db"].reason == check["reason"]
    assert "hunter2" not in "".join(logs.lines)
    assert [r["reason"] for r in logs.records] == [check["reason"]]


def test_custom_token_header(make_app: MakeApp) -> None:
    """GATEWAY_OBS_HEALTH_TOKEN_HEADER names the header that carries the token."""
    app, obs = build(
        make_app,
        {
            **QUIET,
            Keys.HEALTH_SHOW_DETAILS: "when_authorized",
            Keys.HEALTH_TOKEN: "abc",
            Keys.HEALTH_TOKEN_HEADER: "X-Probe-Key",
        },
    )
    obs.health_check("bad")(lambda: CheckResult.degraded("slow"))
    client = app.test_client()
    assert (
        "reason"
        not in client.get("/health", headers={"X-Health-Token": "abc"}).get_json()["checks"]["bad"]
    )
    body = client.get("/health", headers={"X-Probe-Key": "abc"}).get_json()
    assert body["checks"]["bad"]["reason"] == "slow"


# --- check results and aggregation -------------------------------------------------------------


def test_what_a_check_returns_decides_its_status(make_app: MakeApp) -> None:
    """None/True healthy; False, a raise or junk unhealthy; CheckResult as given; async works."""
    _app, obs = build(make_app, {**QUIET, Keys.HEALTH_SHOW_DETAILS: "always"})

    async def async_ok() -> CheckResult:
        await asyncio.sleep(0)
        return CheckResult.healthy(depth=3)

    def raises() -> None:
        raise RuntimeError("lost postgresql://u:hunter2@db/x")

    checks = {
        "none": lambda: None,
        "true": lambda: True,
        "false": lambda: False,
        "degraded": lambda: CheckResult.degraded("backlog", depth=1200),
        "raises": raises,
        "junk": lambda: "yes",
        "async": async_ok,
    }
    for name, func in checks.items():
        obs.health_check(name, critical=False)(func)
    outcomes = obs.check_health().checks
    assert {name: o.status for name, o in outcomes.items()} == {
        "none": HEALTHY,
        "true": HEALTHY,
        "false": UNHEALTHY,
        "degraded": DEGRADED,
        "raises": UNHEALTHY,
        "junk": UNHEALTHY,
        "async": HEALTHY,
    }
    assert outcomes["degraded"].reason == "backlog"
    assert outcomes["degraded"].details == {"depth": 1200}
    assert outcomes["raises"].reason == "RuntimeError"
    assert outcomes["raises"].error == "lost postgresql://u:***@db/x"
    assert outcomes["false"].reason == "check failed"
    assert outcomes["async"].details == {"depth": 3}


def _outcome(status: str, critical: bool = True) -> CheckOutcome:
    return CheckOutcome("c", status, 1.0, critical)


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([], HEALTHY),
        ([_outcome(HEALTHY), _outcome(HEALTHY, False)], HEALTHY),
        ([_outcome(HEALTHY), _outcome(DEGRADED)], DEGRADED),
        ([_outcome(UNHEALTHY, False)], DEGRADED),
        ([_outcome(DEGRADED), _outcome(UNHEALTHY, False)], DEGRADED),
        ([_outcome(UNHEALTHY), _outcome(DEGRADED)], UNHEALTHY),
        ([_outcome(UNHEALTHY, False), _outcome(UNHEALTHY)], UNHEALTHY),
    ],
)
def test_aggregation(outcomes: list[CheckOutcome], expected: str) -> None:
    """Critical unhealthy -> unhealthy; non-critical unhealthy or any degraded -> degraded."""
    assert aggregate(outcomes) == expected


def test_statuses_answer_200_200_503_by_default(make_app: MakeApp) -> None:
    """healthy 200, degraded 200 (a non-critical failure), unhealthy 503 (a critical one)."""
    app, obs = build(make_app, QUIET)
    state = {"optional": True, "critical": True}
    obs.health_check("optional", critical=False)(lambda: state["optional"])
    obs.health_check("critical")(lambda: state["critical"])
    client = app.test_client()
    assert client.get("/health").status_code == 200
    state["optional"] = False
    runner_of(app).ttl = 0
    response = client.get("/health")
    assert (response.status_code, response.get_json()["status"]) == (200, DEGRADED)
    state["critical"] = False
    response = client.get("/health")
    assert (response.status_code, response.get_json()["status"]) == (503, UNHEALTHY)


def test_http_status_mapping_is_configurable(make_app: MakeApp) -> None:
    """GATEWAY_OBS_HEALTH_HTTP_STATUS_* change the codes."""
    app, obs = build(
        make_app,
        {
            **QUIET,
            Keys.HEALTH_HTTP_STATUS_DEGRADED: 207,
            Keys.HEALTH_HTTP_STATUS_UNHEALTHY: "500",
        },
    )
    obs.health_check("optional", critical=False, groups=("ready",))(lambda: False)
    obs.health_check("critical", groups=("mine",))(lambda: False)
    client = app.test_client()
    assert client.get("/health/ready").status_code == 207
    assert client.get("/health").status_code == 500


# --- registration ------------------------------------------------------------------------------


def test_checks_registered_before_init_app_apply_to_the_app(make_app: MakeApp) -> None:
    """Decorators on an object without an app are applied by init_app."""
    obs = GatewayObs()

    @obs.health_check("early", critical=False, groups=("ready", "live"))
    def early() -> CheckResult:
        return CheckResult.degraded("warming up")

    app = make_app(QUIET, init=False)
    obs.init_app(app)
    live = app.test_client().get("/health/live").get_json()
    assert live == {**live, "status": DEGRADED}
    assert set(live["checks"]) == {"early"}
    with app.app_context():
        assert obs.check_dependencies().checks["early"].reason == "warming up"


def test_check_registered_in_an_app_context_applies_to_that_app_only(make_app: MakeApp) -> None:
    """After init_app, inside an app context, a decorator targets the current app."""
    obs = GatewayObs()
    first, second = make_app(QUIET, init=False), make_app(QUIET, init=False)
    obs.init_app(first)
    obs.init_app(second)
    with second.app_context():
        obs.health_check("second_only")(lambda: None)
    assert "second_only" in runner_of(second).checks
    assert "second_only" not in runner_of(first).checks
    obs.health_check("everywhere")(lambda: None)
    assert "everywhere" in runner_of(first).checks
    assert "everywhere" in runner_of(second).checks


def test_a_second_check_with_the_same_name_is_rejected(make_app: MakeApp) -> None:
    """Two different functions cannot share a name; the message says what to do."""
    _app, obs = build(make_app, QUIET)
    obs.health_check("dup")(lambda: None)

    def other() -> None:
        return None

    with pytest.raises(ValueError, match=r"already registered.*another name"):
        obs.health_check("dup")(other)


def test_an_app_factory_may_register_the_same_check_again(make_app: MakeApp) -> None:
    """A factory that runs twice defines the same function twice: that is not a clash."""
    obs = GatewayObs()

    def create_app() -> Flask:
        app = make_app(QUIET, init=False)
        obs.init_app(app)

        @obs.health_check("factory_check")
        def factory_check() -> None:
            return None

        return app

    first, second = create_app(), create_app()
    assert "factory_check" in runner_of(first).checks
    assert "factory_check" in runner_of(second).checks


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": ""}, "non-empty name"),
        ({"name": "x", "timeout": 0}, "timeout"),
        ({"name": "x", "timeout": -1.0}, "timeout"),
        ({"name": "x", "timeout": True}, "timeout"),
        ({"name": "x", "groups": ("",)}, "groups"),
    ],
)
def test_bad_check_arguments_are_rejected(kwargs: dict[str, Any], error: str) -> None:
    """A check's name, timeout and groups are validated when it is registered."""
    obs = GatewayObs()
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=error):
        obs.health_check(name, **kwargs)(lambda: None)


def test_check_result_rejects_an_unknown_status() -> None:
    """CheckResult accepts healthy, degraded and unhealthy only."""
    with pytest.raises(ValueError, match="status must be"):
        CheckResult("fine")


def test_set_redis_client_replaces_the_url(make_app: MakeApp, redis_url: str) -> None:
    """A client given to the object is checked instead of the URL; None goes back to the URL."""
    import redis

    _app, obs = build(make_app, {**QUIET, Keys.REDIS_URL: f"redis://127.0.0.1:{free_port()}/0"})
    client = redis.Redis.from_url(redis_url, socket_timeout=1)
    try:
        obs.set_redis_client(client)
        assert obs.check_health().checks["redis"].status == HEALTHY
        obs.set_redis_client(None)
        assert obs.check_health().checks["redis"].status == UNHEALTHY
    finally:
        client.close()


def test_set_redis_client_before_init_app(make_app: MakeApp, redis_url: str) -> None:
    """Without any URL, a client given before init_app adds the Redis check."""
    import redis

    obs = GatewayObs()
    client = redis.Redis.from_url(redis_url, socket_timeout=1)
    try:
        obs.set_redis_client(client)
        app = make_app(QUIET, init=False)
        obs.init_app(app)
        assert obs.check_dependencies().checks["redis"].status == HEALTHY
    finally:
        client.close()


def test_set_postgres_pool_takes_a_pool_or_a_dsn(make_app: MakeApp, database_url: str) -> None:
    """A psycopg2 pool or a DSN string both give a postgres check."""
    from psycopg2.pool import ThreadedConnectionPool

    app, obs = build(make_app, {**QUIET, Keys.HEALTH_SHOW_DETAILS: "always"})
    assert "postgres" not in runner_of(app).checks
    obs.set_postgres_pool(database_url)
    assert obs.check_health(fresh=True).checks["postgres"].status == HEALTHY
    pool = ThreadedConnectionPool(1, 1, database_url, connect_timeout=2)
    try:
        obs.set_postgres_pool(pool)
        outcome = obs.check_health(fresh=True).checks["postgres"]
        assert outcome.status == HEALTHY
        assert outcome.details == {"pool": "ThreadedConnectionPool"}
    finally:
        pool.closeall()
    with pytest.raises(TypeError, match="getconn"):
        obs.set_postgres_pool(42)
    with pytest.raises(ValueError, match="empty"):
        obs.set_postgres_pool("  ")


def test_builtin_checks_can_be_switched_off(make_app: MakeApp, redis_url: str) -> None:
    """GATEWAY_OBS_HEALTH_CHECK_* turn each built-in check off."""
    app = make_app(
        {
            Keys.REDIS_URL: redis_url,
            Keys.HEALTH_CHECK_REDIS: False,
            Keys.HEALTH_CHECK_MEMORY: "false",
            Keys.HEALTH_CHECK_DISK: "0",
        }
    )
    assert runner_of(app).checks == {}
    assert app.test_client().get("/health").get_json()["checks"] == {}


def test_disk_check_uses_the_configured_path_and_thresholds(
    make_app: MakeApp, tmp_path: Any
) -> None:
    """The disk check measures GATEWAY_OBS_HEALTH_DISK_PATH; a missing path is unhealthy."""
    app = make_app(
        {
            Keys.HEALTH_CHECK_MEMORY: False,
            Keys.HEALTH_DISK_PATH: str(tmp_path / "missing"),
            Keys.HEALTH_SHOW_DETAILS: "always",
        }
    )
    body = app.test_client().get("/health").get_json()
    assert body["checks"]["disk"]["status"] == UNHEALTHY
    assert body["checks"]["disk"]["reason"] == "FileNotFoundError"
    assert body["status"] == UNHEALTHY


def test_memory_check_is_on_health_but_not_on_ready_or_live(make_app: MakeApp) -> None:
    """Memory and disk are reported on /health only; they never gate traffic or liveness."""
    app = make_app()
    client = app.test_client()
    assert set(client.get("/health").get_json()["checks"]) == {"memory", "disk"}
    assert client.get("/health/ready").get_json()["checks"] == {}
    assert client.get("/health/live").get_json()["checks"] == {}


# --- endpoints -----------------------------------------------------------------------------------


def test_endpoints_ignore_query_strings_and_bodies_and_answer_head(make_app: MakeApp) -> None:
    """GET with any query or body is the same probe; HEAD gets the status without a body."""
    app = make_app(QUIET)
    client = app.test_client()
    plain = client.get("/health").get_json()
    noisy = client.get("/health?details=true&group=x", data=b"\x00junk").get_json()
    assert noisy["checks"] == plain["checks"] and noisy["status"] == plain["status"]
    head = client.head("/health/ready")
    assert head.status_code == 200 and head.data == b""


def test_wrong_method_is_a_problem_json_405(make_app: MakeApp) -> None:
    """POST to a health endpoint answers through the error handler."""
    response = make_app(QUIET).test_client().post("/health/ready")
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "method_not_allowed"


def test_an_internal_failure_is_a_problem_json_500(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the runner itself fail, the endpoint answers a generic problem+json 500."""
    app = make_app(QUIET)

    def broken(*args: Any, **kwargs: Any) -> HealthReport:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(runner_of(app), "run", broken)
    response = app.test_client().get("/health")
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    assert "secret internals" not in response.get_data(as_text=True)


def test_health_paths_are_internal_and_out_of_the_access_log(make_app: MakeApp) -> None:
    """The three paths are registered as internal and write no access-log line."""
    app = make_app(QUIET)
    app.add_url_rule("/items", "items", lambda: {"items": []})
    assert {"/health", "/health/live", "/health/ready"} <= app.extensions[
        EXTENSION_KEY
    ].internal_paths
    client = app.test_client()
    with capture_logs() as logs:
        for path in ("/health", "/health/live", "/health/ready", "/items"):
            client.get(path)
    paths = [r.get("path") for r in logs.records if r.get("logger") == "flask_gateway_obs.access"]
    assert paths == ["/items"]


def test_paths_are_configurable(make_app: MakeApp) -> None:
    """GATEWAY_OBS_HEALTH_*_PATH move the endpoints."""
    app = make_app(
        {
            **QUIET,
            Keys.HEALTH_PATH: "/status",
            Keys.HEALTH_LIVE_PATH: "/livez",
            Keys.HEALTH_READY_PATH: "/readyz/",
        }
    )
    client = app.test_client()
    for path in ("/status", "/livez", "/readyz"):
        assert client.get(path).status_code == 200
    assert client.get("/health").status_code == 404
    assert {"/status", "/livez", "/readyz"} <= app.extensions[EXTENSION_KEY].internal_paths


def test_disabled_endpoints_leave_the_python_api(make_app: MakeApp) -> None:
    """GATEWAY_OBS_HEALTH_ENABLED=False serves no endpoint; check_health still works."""
    app, obs = build(make_app, {**QUIET, Keys.HEALTH_ENABLED: False})
    assert app.test_client().get("/health").status_code == 404
    assert (
        not {"/health", "/health/live", "/health/ready"}
        & app.extensions[EXTENSION_KEY].internal_paths
    )
    assert obs.check_health().status == HEALTHY


@pytest.mark.parametrize(
    ("config", "bad_key"),
    [
        ({Keys.HEALTH_SHOW_DETAILS: "when_authorized"}, Keys.HEALTH_TOKEN),
        ({Keys.HEALTH_SHOW_DETAILS: "sometimes"}, Keys.HEALTH_SHOW_DETAILS),
        ({Keys.HEALTH_TIMEOUT: 0}, Keys.HEALTH_TIMEOUT),
        ({Keys.HEALTH_CACHE_TTL: -1}, Keys.HEALTH_CACHE_TTL),
        ({Keys.HEALTH_MAX_WORKERS: 0}, Keys.HEALTH_MAX_WORKERS),
        ({Keys.HEALTH_HTTP_STATUS_UNHEALTHY: 700}, Keys.HEALTH_HTTP_STATUS_UNHEALTHY),
        ({Keys.HEALTH_HTTP_STATUS_DEGRADED: 199}, Keys.HEALTH_HTTP_STATUS_DEGRADED),
        ({Keys.HEALTH_PATH: "health"}, Keys.HEALTH_PATH),
        ({Keys.HEALTH_READY_PATH: "/health"}, Keys.HEALTH_READY_PATH),
        ({Keys.HEALTH_MEMORY_UNHEALTHY_PERCENT: 101}, Keys.HEALTH_MEMORY_UNHEALTHY_PERCENT),
        (
            {Keys.HEALTH_MEMORY_DEGRADED_PERCENT: 96, Keys.HEALTH_MEMORY_UNHEALTHY_PERCENT: 95},
            Keys.HEALTH_MEMORY_DEGRADED_PERCENT,
        ),
        ({Keys.HEALTH_DISK_DEGRADED_PERCENT: 99}, Keys.HEALTH_DISK_DEGRADED_PERCENT),
        ({Keys.HEALTH_DISK_PATH: "  "}, Keys.HEALTH_DISK_PATH),
    ],
)
def test_bad_health_config_fails_at_init_app(
    make_app: MakeApp, config: dict[str, Any], bad_key: str
) -> None:
    """Every bad health value is a ConfigError that names the key."""
    with pytest.raises(ConfigError) as caught:
        make_app(config)
    assert bad_key in {key for key, _, _ in caught.value.problems}


def test_config_from_environment_strings(make_app: MakeApp) -> None:
    """Strings as from_prefixed_env hands them over are accepted."""
    app = make_app(
        {
            Keys.HEALTH_TIMEOUT: "0.75",
            Keys.HEALTH_CACHE_TTL: "0",
            Keys.HEALTH_MAX_WORKERS: "2",
            Keys.HEALTH_HTTP_STATUS_DEGRADED: "299",
            Keys.HEALTH_CHECK_DISK: "no",
        }
    )
    runner = runner_of(app)
    assert (runner.default_timeout, runner.ttl, runner._max_workers) == (0.75, 0.0, 2)
    assert "disk" not in runner.checks


# --- API, logs, fork ------------------------------------------------------------------------------


def test_check_health_outside_a_request(make_app: MakeApp) -> None:
    """The Python API works without a request or app context and gives a to_dict body."""
    obs = GatewayObs()
    obs.health_check("ok", groups=())(lambda: None)
    app = make_app({**QUIET, Keys.SERVICE_VERSION: "2.0"}, init=False)
    obs.init_app(app)
    report = obs.check_health()
    assert report.status == HEALTHY and report.ok
    assert report.to_dict()["checks"] == {"ok": {"status": HEALTHY, "response_time_ms": ANY}}
    assert report.to_dict()["version"] == "2.0"
    assert obs.check_dependencies().checks == {}
    json.dumps(report.to_dict(details=True))


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY = _Any()


def test_unknown_group_is_an_error(make_app: MakeApp) -> None:
    """A group no check belongs to raises UnknownGroupError naming the known ones."""
    _, obs = build(make_app, QUIET)
    obs.health_check("x", groups=("batch",))(lambda: None)
    with pytest.raises(UnknownGroupError, match="batch, live, ready"):
        obs.check_health("nope")
    assert set(obs.check_health("batch").checks) == {"x"}


def test_status_changes_are_logged_once(make_app: MakeApp) -> None:
    """Going unhealthy logs a warning, staying unhealthy logs nothing, recovering logs info."""
    _app, obs = build(make_app, {**QUIET, Keys.HEALTH_CACHE_TTL: 0})
    healthy = {"now": False}
    obs.health_check("flappy")(
        lambda: True if healthy["now"] else CheckResult.unhealthy("down", host="db")
    )
    with capture_logs("flask_gateway_obs.health") as logs:
        obs.check_health()
        obs.check_health()
        healthy["now"] = True
        obs.check_health()
        obs.check_health()
    assert [(r["level"], r["status"], r.get("reason")) for r in logs.records] == [
        ("warning", UNHEALTHY, "down"),
        ("info", HEALTHY, None),
    ]


def test_runner_starts_afresh_in_a_forked_child(
    make_app: MakeApp, release: threading.Event
) -> None:
    """After a real fork, a run stuck in the parent does not block the child's checks."""
    _app, obs = build(make_app, {**QUIET, Keys.HEALTH_CACHE_TTL: 0})
    first = {"hang": True}

    @obs.health_check("maybe_stuck", timeout=0.05)
    def maybe_stuck() -> None:
        if first["hang"]:
            release.wait(30)

    assert obs.check_health().status == UNHEALTHY
    first["hang"] = False
    assert obs.check_health().checks["maybe_stuck"].reason == "timeout"  # still stuck here
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the pipe and leave without pytest's teardown
        code = 1
        try:
            os.close(read_end)
            report = obs.check_health()
            outcome = report.checks["maybe_stuck"]
            os.write(write_end, json.dumps([report.status, outcome.reason]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 20)
        answer = os.read(read_end, 4096) if ready else b""
    finally:
        os.close(read_end)
        if not answer:
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert json.loads(answer) == [HEALTHY, None]
    assert obs.check_health().checks["maybe_stuck"].reason == "timeout"  # the parent's run


def test_example_gateway_checks_its_dependencies_when_their_urls_are_set(
    redis_url: str, database_url: str
) -> None:
    """The example checks memory, disk and its store always; Redis and PostgreSQL by URL."""
    from example_app import create_app

    bare = create_app({"TESTING": True, Keys.REDIS_URL: None, Keys.DATABASE_URL: None})
    assert set(runner_of(bare).checks) == {"memory", "disk", "items_store"}
    app = create_app({"TESTING": True, Keys.REDIS_URL: redis_url, Keys.DATABASE_URL: database_url})
    body = app.test_client().get("/health").get_json()
    assert body["status"] == HEALTHY
    assert set(body["checks"]) == {"redis", "postgres", "memory", "disk", "items_store"}


def test_health_endpoints_are_never_rate_limited(make_app: MakeApp) -> None:
    """With a default limit of 2 per minute, probes keep answering 200; other routes get 429."""
    app = make_app(
        {
            **QUIET,
            Keys.RATELIMIT_ENABLED: True,
            "RATELIMIT_DEFAULT": "2 per minute",
            "RATELIMIT_STORAGE_URI": "memory://",
        }
    )
    app.add_url_rule("/items", "items", lambda: {"items": []})
    client = app.test_client()
    for path in ("/health", "/health/live", "/health/ready"):
        assert [client.get(path).status_code for _ in range(5)] == [200] * 5
    assert [client.get("/items").status_code for _ in range(3)] == [200, 200, 429]


def test_probes_feed_health_metrics_and_are_not_counted_as_requests(make_app: MakeApp) -> None:
    """health_check_status and dependency_latency_seconds move; http_requests_total does not."""
    from flask_gateway_obs.testing import metric_value

    app, obs = build(make_app, QUIET)
    obs.health_check("ok")(lambda: None)
    obs.health_check("optional", critical=False)(lambda: CheckResult.degraded("slow"))
    client = app.test_client()
    for path in ("/health", "/health/live", "/health/ready"):
        client.get(path)
    assert metric_value(app, "health_check_status", check="ok") == 1.0
    assert metric_value(app, "health_check_status", check="optional") == 0.5
    assert (
        metric_value(app, "dependency_latency_seconds_count", dependency="ok", operation="health")
        == 1.0
    )
    assert metric_value(app, "http_requests_total") == 0.0
