"""Rate windows (``count:N``, ``time:S``): rates just under and over the threshold,
``min_calls``, slow calls on an injected clock, simultaneous failures, half-open trials by
Resilience4j's rules, outcome metrics, config."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import CircuitOpenError, ConfigError, GatewayObs
from flask_gateway_obs.config import Keys
from flask_gateway_obs.resilience.circuit import CircuitBreaker
from flask_gateway_obs.resilience.windows import CountWindow, TimeWindow
from flask_gateway_obs.testing import capture_logs, metric_value

from ..conftest import MakeApp
from .helpers import BREAKER_LOGGER, Clock, Dependency, fail, make_breaker


def calls(cb: CircuitBreaker, outcomes: str) -> None:
    """One call per letter: ``f`` fails, ``s`` succeeds (errors are swallowed)."""
    for outcome in outcomes:
        dep = Dependency(ConnectionError("down") if outcome == "f" else None)
        with contextlib.suppress(ConnectionError, CircuitOpenError):
            cb.call(dep)


def test_count_window_keeps_only_the_last_n_outcomes() -> None:
    """A full ring drops its oldest outcome for each new one."""
    window = CountWindow(3)
    for failed, slow in [(True, False), (True, True), (False, False), (False, True)]:
        window.record(failed, slow, 0.0)
    assert (window.calls, window.failures, window.slow) == (3, 1, 2)


def test_time_window_forgets_seconds_that_left_it() -> None:
    """Buckets of seconds older than the window are emptied; a long gap empties it all."""
    window = TimeWindow(10)
    window.record(True, False, 100.2)
    window.record(False, True, 105.9)
    window.advance(109.99)
    assert (window.calls, window.failures, window.slow) == (2, 1, 1)
    window.advance(110.0)  # second 100 left the window
    assert (window.calls, window.failures, window.slow) == (1, 0, 1)
    window.record(True, False, 500.0)
    assert (window.calls, window.failures) == (1, 1)


def test_just_under_the_failure_rate_stays_closed_and_at_it_opens(app: Flask, clock: Clock) -> None:
    """count:10 at 50 %: 4 failures of 10 leave it closed; the 5th (evicting a success) opens it."""
    cb = make_breaker(app, window="count:10", failure_rate=50, min_calls=10, clock=clock)
    calls(cb, "ssffsfsfss")  # 4 of 10
    assert cb.state == "closed"
    assert cb.failure_rate == pytest.approx(0.4)
    raised = fail(cb, Dependency(), 1)  # drops the oldest (a success): 5 of 10
    assert isinstance(raised[0], CircuitOpenError)
    assert isinstance(raised[0].__cause__, ConnectionError)
    assert cb.state == "open"


def test_no_rate_opens_before_min_calls(app: Flask, clock: Clock) -> None:
    """Every call failing opens nothing until the window holds min_calls calls."""
    cb = make_breaker(app, window="count:100", min_calls=10, clock=clock)
    calls(cb, "f" * 9)
    assert (cb.state, cb.failure_count, cb.failure_rate) == ("closed", 9, 1.0)
    calls(cb, "f")
    assert cb.state == "open"


def test_min_calls_above_a_count_window_is_the_window_size(app: Flask, clock: Clock) -> None:
    """A full count:5 window decides even with min_calls=10."""
    cb = make_breaker(app, window="count:5", min_calls=10, clock=clock)
    calls(cb, "fffff")
    assert cb.state == "open"


def test_time_window_counts_the_last_seconds_only(app: Flask, clock: Clock) -> None:
    """time:10: failures of more than 10 s ago no longer count towards the rate."""
    cb = make_breaker(app, window="time:10", failure_rate=50, min_calls=4, clock=clock)
    calls(cb, "fff")
    clock.advance(11)
    calls(cb, "sss")
    assert cb.failure_count == 0
    calls(cb, "f")  # 1 of 4 in the window
    assert cb.state == "closed"
    calls(cb, "f")  # 2 of 5
    assert cb.state == "closed"
    calls(cb, "f")  # 3 of 6
    assert cb.state == "open"


class Slow:
    """An upstream that answers after ``seconds`` on the test's clock."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    def __call__(self) -> str:
        self.clock.advance(self.seconds)
        return "late"


def test_slow_calls_open_it_at_the_slow_call_rate(app: Flask, clock: Clock) -> None:
    """Calls longer than slow_call_seconds count as slow even when they succeed; at the
    slow-call rate the breaker opens (the slow call itself still returns its answer)."""
    cb = make_breaker(
        app,
        window="count:10",
        min_calls=4,
        slow_call_seconds=1.0,
        slow_call_rate=50,
        clock=clock,
    )
    assert cb.call(Slow(clock, 1.0)) == "late"  # exactly the limit: not slow
    assert cb.call(Slow(clock, 0.2)) == "late"
    assert cb.call(Slow(clock, 2.5)) == "late"  # 1 slow of 3
    assert cb.state == "closed"
    assert cb.call(Slow(clock, 3.0)) == "late"  # 2 slow of 4: 50 %
    assert cb.state == "open"
    assert cb.failure_count == 0


def test_twenty_threads_failing_at_once_open_it_exactly_once(app: Flask, clock: Clock) -> None:
    """20 simultaneous failures through a count:20 window: one closed->open transition."""
    cb = make_breaker(app, window="count:20", min_calls=10, clock=clock)
    together = threading.Barrier(20, timeout=5)

    def upstream() -> None:
        together.wait()
        raise ConnectionError("down")

    def caller() -> None:
        with contextlib.suppress(ConnectionError, CircuitOpenError):
            cb.call(upstream)

    with capture_logs(BREAKER_LOGGER) as logs:
        threads = [threading.Thread(target=caller) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert len(logs.find(breaker="payments", to_state="open")) == 1
    assert cb.state == "open"


def _trials(cb: CircuitBreaker, outcomes: list[str]) -> tuple[list[Any], list[threading.Event]]:
    """Start one trial call per outcome, each held until its event is set."""
    inside = threading.Semaphore(0)
    releases = [threading.Event() for _ in outcomes]
    results: list[Any] = []

    def trial(outcome: str, release: threading.Event) -> None:
        def upstream() -> str:
            inside.release()
            release.wait(5)
            if outcome == "f":
                raise ConnectionError("still down")
            return "ok"

        try:
            results.append(cb.call(upstream))
        except Exception as exc:
            results.append(type(exc).__name__)

    for outcome, release in zip(outcomes, releases, strict=True):
        threading.Thread(target=trial, args=(outcome, release), daemon=True).start()
    for _ in outcomes:
        assert inside.acquire(timeout=5)
    return results, releases


@pytest.mark.parametrize(("outcomes", "after"), [("ssf", "closed"), ("sff", "open")])
def test_half_open_trials_decide_by_their_rate_once_all_are_done(
    app: Flask, clock: Clock, outcomes: str, after: str
) -> None:
    """Half-open admits half_open_max_calls trial calls in all (a finished one frees no
    permit); once every trial is done, their failure rate closes or reopens it."""
    cb = make_breaker(
        app, window="count:10", min_calls=2, half_open_max_calls=3, reset_timeout=5, clock=clock
    )
    calls(cb, "ff")
    clock.advance(5)
    results, releases = _trials(cb, list(outcomes))
    with pytest.raises(CircuitOpenError) as refused:  # every permit taken
        cb.call(Dependency())
    assert refused.value.retry_after == 1
    releases[0].set()
    for _ in range(500):
        if results:
            break
        threading.Event().wait(0.01)
    assert cb.state == "half-open"
    with pytest.raises(CircuitOpenError):  # a done trial gives no permit back
        cb.call(Dependency())
    for release in releases[1:]:
        release.set()
    for _ in range(500):
        if len(results) == 3:
            break
        threading.Event().wait(0.01)
    assert cb.state == after


def test_outcomes_and_the_failure_rate_are_metrics(app: Flask, clock: Clock) -> None:
    """circuit_breaker_calls_total counts success/failure/rejected (a 4xx is a success);
    circuit_breaker_failure_rate follows the window."""
    from flask_gateway_obs import NotFoundError

    cb = make_breaker(app, window="count:4", min_calls=4, clock=clock)
    calls(cb, "sf")
    with contextlib.suppress(NotFoundError):
        cb.call(Dependency(NotFoundError("no such order")))
    assert metric_value(app, "circuit_breaker_failure_rate", breaker="payments") == (
        pytest.approx(1 / 3)
    )
    calls(cb, "f")  # 2 of 4: opens
    calls(cb, "s")  # refused

    def count(outcome: str) -> float:
        return metric_value(app, "circuit_breaker_calls_total", breaker="payments", outcome=outcome)

    assert [count(o) for o in ("success", "failure", "rejected")] == [2, 2, 1]
    assert metric_value(app, "circuit_breaker_failure_rate", breaker="payments") == 0.5


def test_failure_rate_gauge_reads_zero_once_the_breaker_closes(
    make_app: MakeApp, clock: Clock
) -> None:
    """A close (by hand, or by the half-open trials) empties the window: the gauge says 0
    at once, as cb.failure_rate does, without waiting for another call."""
    app = make_app({Keys.BREAKERS: {"p": {"window": "count:4", "min_calls": 4}}})
    cb = make_breaker(app, "p", clock=clock)

    def gauge() -> float:
        return metric_value(app, "circuit_breaker_failure_rate", breaker="p")

    calls(cb, "ffff")
    assert (cb.state, gauge()) == ("open", 1.0)
    cb.close()
    assert (cb.state, cb.failure_rate, gauge()) == ("closed", 0.0, 0.0)

    calls(cb, "ffff")
    assert (cb.state, gauge()) == ("open", 1.0)
    clock.advance(cb.settings.reset_timeout)
    calls(cb, "s")  # the one trial call succeeds: closed
    assert (cb.state, cb.failure_rate, gauge()) == ("closed", 0.0, 0.0)


def test_failure_rate_gauge_of_a_time_window_follows_it_at_each_transition(
    make_app: MakeApp, clock: Clock
) -> None:
    """When a time: window forgets its failures, the gauge says so at the next transition
    (here the half-open one), not only at the next call of the closed breaker."""
    app = make_app(
        {Keys.BREAKERS: {"p": {"window": "time:10", "min_calls": 4, "reset_timeout": 30}}}
    )
    cb = make_breaker(app, "p", clock=clock)
    calls(cb, "ffff")
    assert metric_value(app, "circuit_breaker_failure_rate", breaker="p") == 1.0
    clock.advance(30)
    cb.half_open()
    assert cb.failure_rate == 0.0
    assert metric_value(app, "circuit_breaker_failure_rate", breaker="p") == 0.0


def test_windows_from_config_per_breaker_and_as_options(make_app: MakeApp) -> None:
    """GATEWAY_OBS_BREAKER_WINDOW and friends, GATEWAY_OBS_BREAKERS[name], keyword options."""
    app = make_app(
        {
            Keys.BREAKER_WINDOW: "time:30",
            Keys.BREAKER_FAILURE_RATE: 25,
            Keys.BREAKER_SLOW_CALL_SECONDS: 2,
            Keys.BREAKERS: {"search": {"window": "COUNT:50", "min_calls": 20}},
        }
    )
    payments = make_breaker(app, "payments").settings
    search = make_breaker(app, "search").settings
    tuned = make_breaker(app, "tuned", window="consecutive", slow_call_seconds=None).settings
    assert (payments.window, payments.failure_rate, payments.slow_call_seconds) == (
        "time:30",
        25,
        2,
    )
    assert (search.window, search.min_calls) == ("count:50", 20)
    assert tuned.window == "consecutive"


def test_bad_windows_are_one_config_error(make_app: MakeApp, app: Flask) -> None:
    """A bad window, a rate out of range and slow calls with consecutive failures are refused,
    naming each key; a keyword slow_call_seconds on a consecutive breaker too."""
    bad = make_app(
        {
            Keys.BREAKER_WINDOW: "count:0",
            Keys.BREAKER_FAILURE_RATE: 120,
            Keys.BREAKERS: {"p": {"window": "consecutive", "slow_call_seconds": 1}},
        },
        init=False,
    )
    with pytest.raises(ConfigError) as caught:
        GatewayObs(bad)
    where = {problem[0] for problem in caught.value.problems}
    assert where == {
        Keys.BREAKER_WINDOW,
        Keys.BREAKER_FAILURE_RATE,
        f"{Keys.BREAKERS}['p'].slow_call_seconds",
    }
    slow = make_app({Keys.BREAKER_SLOW_CALL_SECONDS: 1}, init=False)
    with pytest.raises(ConfigError, match="BREAKER_SLOW_CALL_SECONDS"):
        GatewayObs(slow)
    with pytest.raises(ConfigError, match="slow_call_seconds"):
        make_breaker(app, "x", slow_call_seconds=1)
