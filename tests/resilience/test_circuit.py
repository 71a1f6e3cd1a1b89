"""Circuit breakers: the state machine on an injected clock, exclusions, listeners,
fallbacks, the call forms, parallel calls, logs, metrics and the 503 through a route."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pybreaker
import pytest
from flask import Flask, abort

from flask_gateway_obs import (
    AppError,
    BadRequestError,
    CircuitOpenError,
    NotFoundError,
)
from flask_gateway_obs.testing import capture_logs, metric_value

from .helpers import (
    BREAKER_LOGGER,
    Clock,
    Dependency,
    fail,
    make_breaker,
)


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
