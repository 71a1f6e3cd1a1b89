"""Circuit breakers: the state machine on an injected clock, parallel calls, exclusions,
fallbacks, timeouts, config, Redis-shared state and its fallback, logs, metrics, routes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import uuid
from typing import Any

import pybreaker
import pytest
from flask import Flask, abort

from flask_gateway_obs import (
    AppError,
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    GatewayObs,
    NotFoundError,
    breaker,
    get_request_id,
)
from flask_gateway_obs import resilience as resilience_module
from flask_gateway_obs.config import Keys
from flask_gateway_obs.resilience import breaker as breaker_module
from flask_gateway_obs.resilience.breaker import CallTimeoutError, CircuitBreaker
from flask_gateway_obs.testing import capture_logs, metric_value

from .conftest import MakeApp, ManualClock, RedisServer

BREAKER_LOGGER = "flask_gateway_obs.breaker"


class Clock(ManualClock):
    """Wall-clock seconds (whole seconds go to Redis), moved by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        super().__init__(now)


class Dependency:
    """A fake upstream: counts calls, fails while ``failing`` is set."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls = 0
        self.error = error or ConnectionError("upstream down")
        self.failing = error is not None

    def __call__(self, value: Any = "ok") -> Any:
        self.calls += 1
        if self.failing:
            raise self.error
        return value


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(make_app: MakeApp) -> Flask:
    return make_app()


def make_breaker(app: Flask, name: str = "payments", **options: Any) -> CircuitBreaker:
    """The app's breaker ``name`` (what ``obs.circuit_breaker`` returns in its context)."""
    return resilience_module.of_state(app.extensions["gateway_obs"]).breakers.get(name, **options)


def fail(cb: CircuitBreaker, dep: Dependency, times: int) -> list[BaseException]:
    """Make ``times`` failing calls; return what each raised."""
    dep.failing = True
    raised = []
    for _ in range(times):
        with pytest.raises(Exception) as caught:  # noqa: PT011 - several kinds on purpose
            cb.call(dep)
        raised.append(caught.value)
    return raised


# --- the state machine ----------------------------------------------------------------------


def test_opens_after_fail_max_consecutive_failures(app: Flask, clock: Clock) -> None:
    """fail_max consecutive failures open it; the call that trips raises CircuitOpenError."""
    cb = make_breaker(app, fail_max=3, clock=clock)
    dep = Dependency()
    raised = fail(cb, dep, 3)
    assert [type(e) for e in raised[:2]] == [ConnectionError, ConnectionError]
    assert isinstance(raised[2], CircuitOpenError)
    assert raised[2].__cause__ is dep.error
    assert cb.state == "open"


def test_a_success_resets_the_consecutive_count(app: Flask, clock: Clock) -> None:
    """Failures must be consecutive: a success in between starts the count again."""
    cb = make_breaker(app, fail_max=3, clock=clock)
    dep = Dependency()
    fail(cb, dep, 2)
    dep.failing = False
    assert cb.call(dep) == "ok"
    assert cb.failure_count == 0
    fail(cb, dep, 2)
    assert cb.state == "closed"


def test_open_breaker_fails_fast_without_touching_the_dependency(app: Flask, clock: Clock) -> None:
    """While open, calls raise CircuitOpenError at once, with seconds until half-open."""
    cb = make_breaker(app, fail_max=1, reset_timeout=30, clock=clock)
    dep = Dependency()
    fail(cb, dep, 1)
    calls = dep.calls
    clock.advance(12)
    with pytest.raises(CircuitOpenError) as caught:
        cb.call(dep)
    assert dep.calls == calls
    assert caught.value.retry_after == pytest.approx(18)
    assert caught.value.breaker == "payments"
    assert cb.retry_after == pytest.approx(18)


def test_half_open_after_reset_timeout_closes_after_success_threshold(
    app: Flask, clock: Clock
) -> None:
    """After reset_timeout trial calls go through; success_threshold successes close it."""
    cb = make_breaker(app, fail_max=1, reset_timeout=10, success_threshold=2, clock=clock)
    dep = Dependency()
    fail(cb, dep, 1)
    dep.failing = False
    clock.advance(10)
    assert cb.call(dep) == "ok"
    assert cb.state == "half-open"
    assert cb.call(dep) == "ok"
    assert cb.state == "closed"


def test_failed_trial_reopens_for_a_fresh_reset_timeout(app: Flask, clock: Clock) -> None:
    """A failing trial call opens it again, counting reset_timeout from then."""
    cb = make_breaker(app, fail_max=1, reset_timeout=10, clock=clock)
    dep = Dependency()
    fail(cb, dep, 1)
    clock.advance(10)
    raised = fail(cb, dep, 1)
    assert isinstance(raised[0], CircuitOpenError)
    assert cb.state == "open"
    assert cb.retry_after == pytest.approx(10)


def test_half_open_admits_a_bounded_number_of_trial_calls(app: Flask, clock: Clock) -> None:
    """With half_open_max_calls=2, a third concurrent call is refused while two trials run."""
    cb = make_breaker(app, fail_max=1, reset_timeout=5, half_open_max_calls=2, clock=clock)
    fail(cb, Dependency(), 1)
    clock.advance(5)
    inside = threading.Semaphore(0)
    release = threading.Event()

    def trial() -> str:
        inside.release()
        release.wait(5)
        return "ok"

    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(cb.call(trial))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert inside.acquire(timeout=5)
    with pytest.raises(CircuitOpenError):
        cb.call(trial)
    release.set()
    for thread in threads:
        thread.join(5)
    assert results == ["ok", "ok"]
    assert cb.state == "closed"


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("no such order"),
        BadRequestError("bad amount"),
        AppError("conflict", 409),
    ],
)
def test_operational_client_errors_never_count(
    app: Flask, clock: Clock, error: BaseException
) -> None:
    """Operational 4xx AppErrors are raised unchanged and never open the breaker."""
    cb = make_breaker(app, fail_max=2, clock=clock)
    dep = Dependency(error)
    raised = fail(cb, dep, 5)
    assert all(e is error for e in raised)
    assert cb.state == "closed"
    assert cb.failure_count == 0


def test_werkzeug_4xx_and_custom_exclusions_never_count(app: Flask, clock: Clock) -> None:
    """abort(404) and exception types passed as ``exclude`` do not count either."""
    cb = make_breaker(app, fail_max=1, clock=clock, exclude=[KeyError])

    def aborts() -> None:
        abort(404)

    for fn in (aborts, Dependency(KeyError("k"))):
        with pytest.raises(Exception):  # noqa: PT011, B017 - the exclusion is what matters
            cb.call(fn)
    assert cb.state == "closed"


def test_excluded_exception_class_with_a_metaclass_excludes_only_itself(
    app: Flask, clock: Clock
) -> None:
    """An exception class with a metaclass (abc.ABCMeta) excludes its errors, not all."""
    import abc

    class Declined(Exception, metaclass=abc.ABCMeta):
        """A business error whose class has a metaclass."""

    cb = make_breaker(app, fail_max=1, clock=clock, exclude=[Declined])
    fail(cb, Dependency(Declined("no")), 2)
    assert cb.state == "closed"
    raised = fail(cb, Dependency(), 1)
    assert isinstance(raised[0], CircuitOpenError)


def test_non_operational_4xx_app_error_counts(app: Flask, clock: Clock) -> None:
    """A 4xx AppError marked as a bug (is_operational=False) is a failure like any other."""
    cb = make_breaker(app, fail_max=1, clock=clock)
    raised = fail(cb, Dependency(AppError("bug", 400, is_operational=False)), 1)
    assert isinstance(raised[0], CircuitOpenError)


def test_outcome_of_a_call_that_outlived_its_state_is_ignored(app: Flask, clock: Clock) -> None:
    """A slow call admitted while closed cannot close a breaker that opened meanwhile."""
    cb = make_breaker(app, fail_max=1, clock=clock)
    started = threading.Event()
    release = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "late"

    thread = threading.Thread(target=cb.call, args=(slow,))
    thread.start()
    assert started.wait(5)
    cb.open()
    release.set()
    thread.join(5)
    assert cb.state == "open"


class Veto(pybreaker.CircuitBreakerListener):
    """A user listener whose ``before_call`` raises once armed."""

    def __init__(self) -> None:
        self.armed = False

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        if self.armed:
            self.armed = False
            raise RuntimeError("listener bug")


def test_a_listener_raising_before_a_trial_call_does_not_wedge_half_open(
    app: Flask, clock: Clock
) -> None:
    """A before_call listener that raises gives the trial slot back: the next trial runs."""
    veto = Veto()
    cb = make_breaker(app, fail_max=1, reset_timeout=10, clock=clock, listeners=[veto])
    fail(cb, Dependency(), 1)
    clock.advance(10)
    veto.armed = True
    dep = Dependency()
    with pytest.raises(RuntimeError, match="listener bug"):
        cb.call(dep)
    assert dep.calls == 0
    assert cb.call(dep) == "ok"
    assert cb.state == "closed"


def test_a_raising_exclude_predicate_neither_wedges_nor_hides_the_error(
    app: Flask, clock: Clock
) -> None:
    """A broken exclude predicate counts the error as a failure and re-raises the original."""

    def broken(error: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    cb = make_breaker(app, fail_max=2, reset_timeout=10, clock=clock, exclude=[broken])
    dep = Dependency()
    raised = fail(cb, dep, 2)
    assert raised[0] is dep.error
    assert isinstance(raised[1], CircuitOpenError)
    clock.advance(10)
    raised = fail(cb, dep, 1)  # the half-open trial fails: open again, slot given back
    assert isinstance(raised[0], CircuitOpenError)
    assert raised[0].__cause__ is dep.error
    clock.advance(10)
    dep.failing = False
    assert cb.call(dep) == "ok"
    assert cb.state == "closed"


# --- fallbacks, timeouts, other call forms ----------------------------------------------------


def test_fallback_answers_when_the_call_fails_or_the_breaker_is_open(
    app: Flask, clock: Clock
) -> None:
    """The fallback gets the error and the call's arguments; 4xx errors still raise."""
    cb = make_breaker(app, fail_max=2, clock=clock)
    seen: list[tuple[str, Any]] = []

    def fallback(error: BaseException, order: str) -> str:
        seen.append((type(error).__name__, order))
        return "queued"

    dep = Dependency()

    @cb(fallback=fallback)
    def charge(order: str) -> Any:
        return dep(order)

    assert charge("a") == "a"
    dep.failing = True
    assert [charge("b"), charge("c"), charge("d")] == ["queued"] * 3
    assert seen == [
        ("ConnectionError", "b"),
        ("CircuitOpenError", "c"),
        ("CircuitOpenError", "d"),
    ]
    dep.error = NotFoundError("gone")
    cb.close()
    with pytest.raises(NotFoundError):
        charge("e")


def test_timeout_fails_the_call_with_504_and_counts(app: Flask, clock: Clock) -> None:
    """A call over ``timeout`` raises CallTimeoutError (a 504) and counts as a failure."""
    cb = make_breaker(app, fail_max=2, timeout=0.05, clock=clock)
    release = threading.Event()
    with pytest.raises(CallTimeoutError) as caught:
        cb.call(release.wait, 5)
    release.set()
    assert caught.value.status_code == 504
    assert isinstance(caught.value, TimeoutError)
    assert cb.failure_count == 1
    assert cb.call(lambda: "fast") == "fast"


def test_timeout_is_a_504_where_futures_have_their_own_timeout_class(
    app: Flask, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on Python 3.10, where concurrent.futures.TimeoutError is not the builtin one."""
    from concurrent.futures import _base

    class FuturesTimeoutError(Exception):
        """concurrent.futures.TimeoutError before Python 3.11."""

    monkeypatch.setattr(_base, "TimeoutError", FuturesTimeoutError)
    monkeypatch.setattr(concurrent.futures, "TimeoutError", FuturesTimeoutError)
    cb = make_breaker(app, fail_max=2, timeout=0.05, clock=clock)
    release = threading.Event()
    with pytest.raises(CallTimeoutError):
        cb.call(release.wait, 5)
    release.set()
    assert cb.failure_count == 1


def test_timeout_keeps_the_functions_own_timeout_error(app: Flask, clock: Clock) -> None:
    """A TimeoutError raised by the function itself passes through as it is."""
    cb = make_breaker(app, timeout=5, clock=clock)
    own = TimeoutError("socket read timed out")
    with pytest.raises(TimeoutError) as caught:
        cb.call(Dependency(own))
    assert caught.value is own


def test_timed_call_sees_the_callers_request_id(app: Flask, clock: Clock) -> None:
    """The worker thread of a timed call runs in the caller's context (request ID, app)."""
    cb = make_breaker(app, timeout=5, clock=clock)

    @app.get("/rid")
    def rid() -> dict[str, Any]:
        return {"inside": cb.call(get_request_id), "outside": get_request_id()}

    body = app.test_client().get("/rid", headers={"X-Request-ID": "req-42"}).get_json()
    assert body == {"inside": "req-42", "outside": "req-42"}


def test_context_manager_counts_and_refuses_when_open(app: Flask, clock: Clock) -> None:
    """``with cb:`` counts failures of the block and refuses to enter while open."""
    cb = make_breaker(app, fail_max=2, clock=clock)
    for _ in range(2):
        with pytest.raises((ConnectionError, CircuitOpenError)), cb:
            raise ConnectionError("down")
    ran = False
    with pytest.raises(CircuitOpenError), cb:
        ran = True
    assert not ran
    assert cb.state == "open"


def test_async_functions_go_through_the_breaker(app: Flask, clock: Clock) -> None:
    """Coroutine functions are awaited inside the breaker, and their failures count."""
    cb = make_breaker(app, fail_max=1, timeout=1, clock=clock)

    @cb
    async def fetch(fail: bool) -> str:
        await asyncio.sleep(0)
        if fail:
            raise ConnectionError("down")
        return "ok"

    assert asyncio.run(fetch(False)) == "ok"
    with pytest.raises(CircuitOpenError):
        asyncio.run(fetch(True))
    assert cb.state == "open"


def test_async_timeout_cancels_the_coroutine(app: Flask, clock: Clock) -> None:
    """For coroutines the timeout really stops the work: it is cancelled at its await."""
    cb = make_breaker(app, timeout=0.05, clock=clock)
    cancelled: list[bool] = []

    @cb
    async def hang() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def scenario() -> None:
        with pytest.raises(CallTimeoutError):
            await hang()
        await asyncio.sleep(0)  # let the cancellation run

    asyncio.run(scenario())
    assert cancelled == [True]
    assert cb.failure_count == 1


# --- concurrency --------------------------------------------------------------------------------


def test_calls_through_one_breaker_run_in_parallel(app: Flask) -> None:
    """8 threads x 200 ms through one breaker are all inside the function at once."""
    cb = make_breaker(app, fail_max=3)
    together = threading.Barrier(8, timeout=5)

    def upstream() -> str:
        together.wait()  # breaks (BrokenBarrierError) unless all 8 calls run at the same time
        time.sleep(0.2)
        return "ok"

    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(cb.call(upstream))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    elapsed = time.perf_counter() - started
    assert errors == []
    assert results == ["ok"] * 8
    assert elapsed < 8 * 0.2  # one at a time would take 1.6 s; the benchmark measures it


@pytest.mark.parametrize("callers", [8, 20])
def test_simultaneous_timed_calls_each_get_a_worker_at_once(app: Flask, callers: int) -> None:
    """With ``timeout`` set, simultaneous calls (one idle worker already there, or more
    callers than a fixed pool would have) all run together: none waits behind another."""
    cb = make_breaker(app, fail_max=100, timeout=30)
    assert cb.call(lambda: "warm") == "warm"  # leaves one idle worker behind
    start = threading.Barrier(callers, timeout=10)
    together = threading.Barrier(callers, timeout=5)

    def upstream() -> str:
        together.wait()  # breaks unless every call runs in a worker at the same time
        return "ok"

    results: list[str] = []
    errors: list[BaseException] = []

    def caller() -> None:
        start.wait()
        try:
            results.append(cb.call(upstream))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert results == ["ok"] * callers
    assert cb.failure_count == 0


def test_calls_are_refused_while_too_many_timed_out_calls_still_hang(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_HUNG_CALLS abandoned calls a new call fails fast (503, counted, not started);
    once the hung calls return, calls go through again."""
    monkeypatch.setattr(breaker_module, "MAX_HUNG_CALLS", 2)
    cb = make_breaker(app, fail_max=100, timeout=0.05)
    release = threading.Event()
    timed_out = 0
    # A call given up on before its worker picked it up is cancelled, not hung: go on
    # until two are hung, however late the workers get scheduled.
    while cb.hung_calls < 2 and timed_out < 50:
        with pytest.raises(CallTimeoutError):
            cb.call(release.wait, 5)
        timed_out += 1
    assert cb.hung_calls == 2
    dep = Dependency()
    with pytest.raises(breaker_module.HungCallsError) as caught:
        cb.call(dep)
    assert dep.calls == 0
    assert caught.value.status_code == 503
    assert cb.failure_count == timed_out + 1
    count = metric_value(
        app, "dependency_latency_seconds_count", dependency="payments", operation="call"
    )
    assert count == timed_out  # the refused call never reached the dependency
    release.set()
    for _ in range(500):
        if cb.hung_calls == 0:
            break
        time.sleep(0.01)
    assert cb.call(dep) == "ok"


def _worker_threads(breaker_name: str) -> int:
    return sum(t.name.startswith(f"breaker-{breaker_name}-") for t in threading.enumerate())


def test_idle_timeout_workers_exit_and_later_calls_still_run(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers left idle for WORKER_IDLE_SECONDS exit; the next call starts a fresh one."""
    monkeypatch.setattr(breaker_module, "WORKER_IDLE_SECONDS", 0.02)
    cb = make_breaker(app, "idle", timeout=5)
    assert cb.call(lambda: 1) == 1
    for _ in range(500):
        if _worker_threads("idle") == 0:
            break
        time.sleep(0.01)
    assert _worker_threads("idle") == 0
    assert [cb.call(lambda n=n: n) for n in range(3)] == [0, 1, 2]


def test_raw_pybreaker_runs_calls_one_at_a_time() -> None:
    """The problem solved above: pybreaker's own call holds its lock around the function."""
    raw = pybreaker.CircuitBreaker()
    together = threading.Barrier(2, timeout=0.3)
    errors: list[BaseException] = []

    def upstream() -> None:
        try:
            together.wait()
        except threading.BrokenBarrierError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=raw.call, args=(upstream,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert errors  # the second call could not start while the first was running


def test_concurrent_failures_open_the_breaker_exactly_once(app: Flask, clock: Clock) -> None:
    """8 simultaneous failures with fail_max=3: one closed->open transition, state open."""
    cb = make_breaker(app, fail_max=3, clock=clock)
    together = threading.Barrier(8, timeout=5)

    def upstream() -> None:
        together.wait()
        raise ConnectionError("down")

    def worker() -> None:
        with contextlib.suppress(ConnectionError, CircuitOpenError):
            cb.call(upstream)

    with capture_logs(BREAKER_LOGGER) as logs:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    opened = logs.find(breaker="payments", from_state="closed", to_state="open")
    assert len(opened) == 1
    assert cb.state == "open"


# --- logs and metrics ---------------------------------------------------------------------------


def test_every_transition_is_logged_and_sets_the_state_gauge(app: Flask, clock: Clock) -> None:
    """closed->open (warning), open->half-open, half-open->closed: fields and gauge values."""
    cb = make_breaker(app, fail_max=2, reset_timeout=10, clock=clock)
    dep = Dependency()
    gauge: list[float] = []
    with capture_logs(BREAKER_LOGGER) as logs:
        fail(cb, dep, 2)
        gauge.append(metric_value(app, "circuit_breaker_state", breaker="payments"))
        clock.advance(10)
        dep.failing = False
        with app.app_context():
            cb.call(dep)
    gauge.append(metric_value(app, "circuit_breaker_state", breaker="payments"))
    records = logs.find(logger=BREAKER_LOGGER)
    transitions = [(r["from_state"], r["to_state"], r["level"]) for r in records]
    assert transitions == [
        ("closed", "open", "warning"),
        ("open", "half-open", "info"),
        ("half-open", "closed", "info"),
    ]
    assert records[0]["breaker"] == "payments"
    assert records[0]["failure_count"] == 2
    assert gauge == [1.0, 0.0]


def test_half_open_state_reads_two_on_the_gauge(app: Flask, clock: Clock) -> None:
    """circuit_breaker_state is 2 while half-open."""
    cb = make_breaker(app, fail_max=1, success_threshold=2, clock=clock)
    fail(cb, Dependency(), 1)
    clock.advance(cb.settings.reset_timeout)
    cb.call(lambda: None)
    assert metric_value(app, "circuit_breaker_state", breaker="payments") == 2.0


def test_calls_are_timed_and_failures_counted_as_dependency_errors(
    app: Flask, clock: Clock
) -> None:
    """Each call that reached the dependency is observed; failures count in errors_total."""
    cb = make_breaker(app, fail_max=10, clock=clock)
    dep = Dependency()
    cb.call(dep)
    cb.call(dep)
    fail(cb, dep, 1)
    fail(cb, Dependency(NotFoundError("x")), 1)
    count = metric_value(
        app, "dependency_latency_seconds_count", dependency="payments", operation="call"
    )
    assert count == 4
    assert metric_value(app, "errors_total", source="dependency") == 1


# --- config, registry, decorators -----------------------------------------------------------------


def test_per_breaker_config_overrides_the_defaults(make_app: MakeApp) -> None:
    """GATEWAY_OBS_BREAKERS[name] wins over GATEWAY_OBS_BREAKER_*; keyword options over both."""
    app = make_app(
        {
            Keys.BREAKER_FAIL_MAX: 7,
            Keys.BREAKER_RESET_TIMEOUT: 9,
            Keys.BREAKERS: {"payments": {"fail_max": 2, "success_threshold": 3}},
        }
    )
    payments = make_breaker(app, "payments").settings
    other = make_breaker(app, "search").settings
    tuned = make_breaker(app, "tuned", reset_timeout=1.5).settings
    assert (payments.fail_max, payments.reset_timeout, payments.success_threshold) == (2, 9, 3)
    assert (other.fail_max, other.success_threshold) == (7, 1)
    assert tuned.reset_timeout == 1.5


def test_breaker_config_from_the_environment(make_app: MakeApp, monkeypatch: Any) -> None:
    """Values from from_prefixed_env (JSON or plain strings) are accepted."""
    monkeypatch.setenv("FLASK_GATEWAY_OBS_BREAKERS", '{"payments": {"fail_max": "4"}}')
    monkeypatch.setenv("FLASK_GATEWAY_OBS_BREAKER_RESET_TIMEOUT", "2.5")
    monkeypatch.setenv("FLASK_GATEWAY_OBS_BREAKER_TIMEOUT", "")
    app = make_app(init=False)
    app.config.from_prefixed_env()
    GatewayObs(app)
    settings = make_breaker(app).settings
    assert (settings.fail_max, settings.reset_timeout, settings.timeout) == (4, 2.5, None)


def test_bad_breaker_and_retry_config_is_one_error_naming_each_part(make_app: MakeApp) -> None:
    """Unknown option names and bad values of the per-name dicts all land in one ConfigError."""
    app = make_app(
        {
            Keys.BREAKERS: {"payments": {"fail_maxx": 3, "reset_timeout": -1}, "search": 5},
            Keys.RETRY_POLICIES: '{"rates": {"jitter": "wild"}}',
            Keys.BREAKER_STORAGE: "disk",
        },
        init=False,
    )
    with pytest.raises(ConfigError) as caught:
        GatewayObs(app)
    where = [problem[0] for problem in caught.value.problems]
    assert "GATEWAY_OBS_BREAKERS['payments'].fail_maxx" in where
    assert "GATEWAY_OBS_BREAKERS['payments'].reset_timeout" in where
    assert "GATEWAY_OBS_BREAKERS['search']" in where
    assert "GATEWAY_OBS_RETRY_POLICIES['rates'].jitter" in where
    assert Keys.BREAKER_STORAGE in where
    assert "did you mean fail_max?" in str(caught.value)


def test_bad_keyword_options_raise_config_error(app: Flask) -> None:
    """obs.circuit_breaker(name, fail_max=0) is refused with what it accepts."""
    with pytest.raises(ConfigError, match="fail_max"):
        make_breaker(app, fail_max=0)
    with pytest.raises(ConfigError, match="one of fail_max"):
        make_breaker(app, "other", fial_max=3)


def test_obs_methods_reach_the_current_apps_breakers_and_policies(make_app: MakeApp) -> None:
    """obs.circuit_breaker / obs.retry return the objects of the app in context."""
    obs = GatewayObs()
    first, second = make_app(init=False), make_app(init=False)
    obs.init_app(first)
    obs.init_app(second)
    with first.app_context():
        a = obs.circuit_breaker("payments", fail_max=2)
        assert obs.circuit_breaker("payments") is a
        assert obs.retry("payments").settings.max_attempts == 3
    with second.app_context():
        assert obs.circuit_breaker("payments") is not a
    with pytest.raises(RuntimeError, match="app context"):
        obs.circuit_breaker("payments")


def test_same_name_with_other_options_is_an_error(app: Flask) -> None:
    """One name is one breaker: asking for it with different options fails loudly."""
    first = make_breaker(app, fail_max=3)
    assert make_breaker(app, fail_max=3) is first
    assert make_breaker(app) is first
    with pytest.raises(ValueError, match="already exists"):
        make_breaker(app, fail_max=4)


@breaker("inventory", fail_max=1)
def reserve(dep: Dependency) -> Any:
    """Decorated at import time, before any app exists."""
    return dep()


def test_import_time_decorator_resolves_each_apps_own_breaker(make_app: MakeApp) -> None:
    """@breaker at module level: each app gets its own breaker, looked up at call time."""
    first, second = make_app(), make_app()
    dep = Dependency()
    dep.failing = True
    with first.app_context(), pytest.raises(CircuitOpenError):
        reserve(dep)
    dep.failing = False
    with second.app_context():
        assert reserve(dep) == "ok"
    with first.app_context(), pytest.raises(CircuitOpenError):
        reserve(dep)
    assert first.extensions["gateway_obs"].resilience.breakers.names() == ["inventory"]


def test_outside_an_app_context_process_defaults_apply() -> None:
    """Without an app the decorator works with the built-in defaults (memory, no metrics)."""
    dep = Dependency()
    assert reserve(dep) == "ok"
    dep.failing = True
    with pytest.raises(CircuitOpenError):
        reserve(dep)
    assert resilience_module.default().breakers.get("inventory").state == "open"


def test_redis_storage_without_a_url_is_a_config_error(make_app: MakeApp) -> None:
    """storage=redis needs GATEWAY_OBS_BREAKER_REDIS_URL or GATEWAY_OBS_REDIS_URL."""
    app = make_app({Keys.BREAKER_STORAGE: "redis"}, init=False)
    with pytest.raises(ConfigError, match="BREAKER_STORAGE"):
        GatewayObs(app)


def test_decode_responses_in_the_url_is_rejected_at_start(make_app: MakeApp) -> None:
    """A Redis URL asking for decoded responses fails init_app with a clear message."""
    url = "redis://user:secret@127.0.0.1:6379/15?decode_responses=true"
    app = make_app({Keys.BREAKER_STORAGE: "redis", Keys.REDIS_URL: url}, init=False)
    with pytest.raises(ConfigError, match="decode_responses") as caught:
        GatewayObs(app)
    assert "secret" not in str(caught.value)


def test_decode_responses_client_is_rejected(app: Flask) -> None:
    """An explicit client with decode_responses=True is refused with what to do instead."""
    import redis

    client = redis.Redis(decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=True"):
        resilience_module.set_breaker_redis_client(app, client)
    client.close()


def test_redis_storage_in_code_without_any_url_names_the_keys_to_set(app: Flask) -> None:
    """storage="redis" given in code with no Redis URL at all: a ValueError saying what to set."""
    with pytest.raises(ValueError, match="GATEWAY_OBS_REDIS_URL"):
        make_breaker(app, "x", storage="redis")


def test_redis_storage_without_service_name_or_namespace_warns_at_init(
    make_app: MakeApp,
) -> None:
    """The default namespace comes from the import name: a warning says how to set it."""
    config = {Keys.BREAKER_STORAGE: "redis", Keys.REDIS_URL: "redis://127.0.0.1:6379/15"}
    with capture_logs(BREAKER_LOGGER) as logs:
        make_app(config)
    warnings = logs.find(level="warning", namespace="gateway_obs:testapp")
    assert len(warnings) == 1
    assert "GATEWAY_OBS_SERVICE_NAME" in warnings[0]["message"]
    assert "GATEWAY_OBS_BREAKER_REDIS_NAMESPACE" in warnings[0]["message"]
    with capture_logs(BREAKER_LOGGER) as quiet:
        make_app({**config, Keys.SERVICE_NAME: "orders"})
        make_app({**config, Keys.BREAKER_REDIS_NAMESPACE: "orders"})
        make_app({Keys.REDIS_URL: config[Keys.REDIS_URL]})
    assert quiet.find(level="warning") == []


# --- shared state in Redis ------------------------------------------------------------------------


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
    that breaker through Redis (client made on first use), warning once if unnamed."""
    namespace = f"test:{uuid.uuid4().hex}"
    app = make_app({Keys.REDIS_URL: redis_url, Keys.BREAKER_REDIS_NAMESPACE: namespace})
    cb = make_breaker(app, "shared", storage="redis", fail_max=1)
    assert make_breaker(app, "local").underlying._state_storage.name == "memory"
    fail(cb, Dependency(), 1)
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.get(f"{namespace}:shared:pybreaker:state") == b"open"
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
    """A Redis that never answers costs one short timeout, then local state is used."""
    host, port = black_hole
    app = redis_app(
        make_app, f"redis://{host}:{port}/0", "test", **{Keys.BREAKER_REDIS_TIMEOUT: 0.1}
    )
    cb = make_breaker(app, fail_max=1)
    for _ in range(3):
        assert cb.call(lambda: "ok") == "ok"
    assert cb.underlying._state_storage._health.down


# --- through a route ------------------------------------------------------------------------------


def test_open_breaker_through_a_route_is_a_503_problem_with_retry_after(
    app: Flask, clock: Clock
) -> None:
    """CircuitOpenError reaches the error handler: 503 problem+json, Retry-After in seconds."""
    cb = make_breaker(app, fail_max=1, reset_timeout=30, clock=clock)
    dep = Dependency()
    dep.failing = True

    @app.get("/pay")
    def pay() -> Any:
        return {"result": cb.call(dep)}

    client = app.test_client()
    first = client.get("/pay")
    clock.advance(0.5)
    second = client.get("/pay")
    for response in (first, second):
        assert response.status_code == 503
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "circuit_open"
    assert first.headers["Retry-After"] == "30"
    assert second.headers["Retry-After"] == "30"  # 29.5 s, rounded up
    assert dep.calls == 1


def test_call_timeout_through_a_route_is_a_504_problem(app: Flask) -> None:
    """CallTimeoutError renders as 504 problem+json with code upstream_timeout."""
    cb = make_breaker(app, timeout=0.05)
    release = threading.Event()

    @app.get("/slow")
    def slow() -> Any:
        return {"result": cb.call(release.wait, 5)}

    response = app.test_client().get("/slow")
    release.set()
    assert response.status_code == 504
    assert response.get_json()["code"] == "upstream_timeout"


def test_example_gateway_quotes_route_opens_and_closes_its_breaker(clock: Clock) -> None:
    """The example's flaky upstream: retries, then 503 with Retry-After, then closed again."""
    from example_app import create_app

    app = create_app({"TESTING": True})
    # Created first with a clock of the test's; the route's resilient() finds this one.
    quotes = app.extensions["gateway_obs"].resilience.breakers.get("quotes", clock=clock)
    client = app.test_client()
    assert client.get("/quotes/ACME").get_json() == {"symbol": "ACME", "price": 42.0}
    with capture_logs() as logs:
        first = client.get("/quotes/ACME?fail=1")
        second = client.get("/quotes/ACME?fail=1")
        third = client.get("/quotes/ACME")
    assert first.status_code == 502
    assert (second.status_code, third.status_code) == (503, 503)
    assert third.headers["Retry-After"] == "10"
    assert logs.find(logger="flask_gateway_obs.retry", operation="quotes")
    assert logs.find(breaker="quotes", to_state="open")
    clock.advance(10)
    assert client.get("/quotes/ACME").status_code == 200
    assert quotes.state == "closed"
