"""Breakers with a ``timeout``: 504s, worker threads, hung calls, contexts and coroutines."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import (
    get_request_id,
)
from flask_gateway_obs.resilience import timeouts as timeouts_module
from flask_gateway_obs.resilience.breaker import CallTimeoutError
from flask_gateway_obs.testing import metric_value

from .helpers import (
    Clock,
    Dependency,
    make_breaker,
)


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
    monkeypatch.setattr(timeouts_module, "MAX_HUNG_CALLS", 2)
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
    with pytest.raises(timeouts_module.HungCallsError) as caught:
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
    monkeypatch.setattr(timeouts_module, "WORKER_IDLE_SECONDS", 0.02)
    cb = make_breaker(app, "idle", timeout=5)
    assert cb.call(lambda: 1) == 1
    for _ in range(500):
        if _worker_threads("idle") == 0:
            break
        time.sleep(0.01)
    assert _worker_threads("idle") == 0
    assert [cb.call(lambda n=n: n) for n in range(3)] == [0, 1, 2]


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
