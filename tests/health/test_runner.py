"""The runner: faults on loopback, timeouts, thread bounds, the cache, what a check
returns, status-change logs, fork."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import threading
import time
import warnings
from typing import Any

import pytest

from flask_gateway_obs import CheckResult, GatewayObs
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.contracts import Recorder
from flask_gateway_obs.core.state import EXTENSION_KEY
from flask_gateway_obs.health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    UnknownGroupError,
)
from flask_gateway_obs.health import runner as health_runner
from flask_gateway_obs.testing import capture_logs

from ..conftest import MakeApp, RedisServer
from .conftest import (
    MARGIN,
    QUIET,
    RecordingRecorder,
    build,
    runner_of,
    wait_until,
    with_clock,
)

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
    monkeypatch.setattr(health_runner, "POOL_IDLE_SECONDS", 0.05)
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
    monkeypatch.setattr(health_runner, "POOL_IDLE_SECONDS", 0.01)
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
    _app, obs = build(make_app, {**QUIET, Keys.HEALTH_CACHE_TTL: 0})
    calls = []

    @obs.health_check("slow", timeout=0.05)
    def slow() -> None:
        calls.append(1)
        if len(calls) == 1:
            release.wait(30)

    assert obs.check_health().checks["slow"].reason == "timeout"
    release.set()
    # Until the late run is back, probes report the timeout without starting another run.
    wait_until(lambda: obs.check_health().checks["slow"].status == HEALTHY)
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


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text")


class _Custom(BaseException):
    pass


@pytest.mark.parametrize(
    "exc",
    [KeyboardInterrupt(), SystemExit(3), GeneratorExit(), _Custom("x"), _Unprintable()],
    ids=lambda exc: type(exc).__name__,
)
def test_a_check_raising_anything_is_unhealthy_with_its_class_not_a_timeout(
    make_app: MakeApp, exc: BaseException
) -> None:
    """A BaseException that is not an Exception, or one whose __str__ raises, makes the check
    unhealthy with its class as the reason and its real time; the process lives on."""
    _app, obs = build(make_app, {**QUIET, Keys.HEALTH_SHOW_DETAILS: "always"})

    def raises() -> None:
        raise exc

    obs.health_check("raises", timeout=5.0)(raises)
    obs.health_check("ok")(lambda: None)
    started = time.monotonic()
    report = obs.check_health()
    assert time.monotonic() - started < 5.0 * MARGIN
    outcome = report.checks["raises"]
    assert (outcome.status, outcome.reason) == (UNHEALTHY, type(exc).__name__)
    assert outcome.response_time_ms < 5000.0 * MARGIN
    assert report.checks["ok"].status == HEALTHY
    body = report.to_dict(details=True)["checks"]["raises"]
    assert body["reason"] == type(exc).__name__
    if isinstance(exc, _Unprintable):
        assert outcome.error is None
    assert obs.check_health(fresh=True).checks["raises"].reason == type(exc).__name__


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
