"""Retry around breaker (``obs.resilient``): retries stop when it opens, deadlines cap
breaker timeouts, the fallback answers last; the example gateway's breaker."""

from __future__ import annotations

import asyncio
import threading

import pytest
from flask import Flask

from flask_gateway_obs import (
    CircuitOpenError,
    GatewayObs,
)
from flask_gateway_obs import resilience as resilience_module
from flask_gateway_obs.resilience.breaker import CallTimeoutError
from flask_gateway_obs.testing import capture_logs, metric_value

from .helpers import (
    Clock,
    Flaky,
    Time,
    always,
)


def test_breaker_timeout_is_capped_to_what_is_left_of_the_deadline(
    obs: GatewayObs, app: Flask
) -> None:
    """Retry around a breaker with a 5 s timeout: an attempt with 0.1 s of the deadline left
    waits 0.1 s; that timeout is the caller's, so the breaker does not count it."""
    fake = Time()
    release = threading.Event()
    attempts: list[str] = []

    def upstream() -> str:
        attempts.append("called")
        if len(attempts) == 1:
            fake.now += 0.05
            raise ConnectionError("refused")  # then a 1.85 s sleep: 1.9 s of 2 s spent
        release.wait(5)
        return "late"

    fetch = obs.resilient(
        "capped",
        retry={
            "max_attempts": 2,
            "deadline": 2.0,
            "base_delay": 1.85,
            "max_delay": 2.0,
            "jitter": "none",
            "sleep": fake.sleep,
            "clock": fake.clock,
        },
        breaker={"timeout": 5, "fail_max": 10},
    )(upstream)
    with app.app_context():
        with pytest.raises(CallTimeoutError) as caught:
            fetch()
        release.set()
        cb = obs.circuit_breaker("capped")
    assert caught.value.timeout == pytest.approx(0.1)
    assert caught.value.by_deadline
    assert len(attempts) == 2
    assert fake.sleeps == [1.85]
    assert cb.failure_count == 1  # the refusal counted; the capped timeout did not


def test_async_breaker_timeout_is_capped_to_what_is_left_of_the_deadline(
    obs: GatewayObs, app: Flask
) -> None:
    """The same for a coroutine: the capped wait cancels the attempt after 0.1 s."""
    fake = Time()
    cancelled: list[bool] = []

    async def upstream() -> str:
        if fake.sleeps == []:
            fake.now += 0.05
            raise ConnectionError("refused")
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    fetch = obs.resilient(
        "capped_async",
        retry={
            "max_attempts": 2,
            "deadline": 2.0,
            "base_delay": 1.85,
            "max_delay": 2.0,
            "jitter": "none",
            "sleep": fake.sleep,
            "clock": fake.clock,
        },
        breaker={"timeout": 5, "fail_max": 10},
    )(upstream)

    async def scenario() -> None:
        with pytest.raises(CallTimeoutError) as caught:
            await fetch()
        assert caught.value.timeout == pytest.approx(0.1)
        await asyncio.sleep(0)

    with app.app_context():
        asyncio.run(scenario())
        assert obs.circuit_breaker("capped_async").failure_count == 1
    assert cancelled == [True]


def test_retries_stop_once_the_breaker_opens(obs: GatewayObs, app: Flask, fake: Time) -> None:
    """Retry wraps breaker: the attempt that opens it ends the retries with CircuitOpenError."""
    flaky = Flaky(*always(ConnectionError))
    fetch = obs.resilient(
        "payments",
        retry={"max_attempts": 10, "sleep": fake.sleep, "clock": fake.clock},
        breaker={"fail_max": 2},
    )(flaky)
    with pytest.raises(CircuitOpenError):
        fetch()
    assert flaky.calls == 2
    assert len(fake.sleeps) == 1
    with pytest.raises(CircuitOpenError):
        fetch()
    assert flaky.calls == 2
    assert metric_value(app, "retry_attempts_total", operation="payments", outcome="failure") == 2


def test_resilient_fallback_answers_after_the_retries(
    obs: GatewayObs, app: Flask, fake: Time
) -> None:
    """The fallback sits outside the retries: it answers once they are spent."""
    flaky = Flaky(*always(TimeoutError))
    fetch = obs.resilient(
        "rates",
        retry={"max_attempts": 3, "sleep": fake.sleep, "clock": fake.clock},
        breaker={"fail_max": 10},
        fallback=lambda error: f"cached ({type(error).__name__})",
    )(flaky)
    with app.app_context():
        assert fetch() == "cached (TimeoutError)"
    assert flaky.calls == 3


def test_resilient_without_retry_or_breaker(obs: GatewayObs) -> None:
    """retry=False or breaker=False leaves that layer out."""
    flaky = Flaky(ConnectionError())
    with pytest.raises(ConnectionError):
        obs.resilient("solo", retry=False)(flaky)()
    assert obs.resilient("solo2", breaker=False, retry={"sleep": lambda s: None})(flaky)() == "ok"
    with pytest.raises(TypeError):
        obs.resilient("bad", retry=3)  # type: ignore[arg-type]


def test_example_gateway_quotes_route_opens_and_closes_its_breaker(clock: Clock) -> None:
    """The example's flaky upstream: retries, then 503 with Retry-After, then closed again."""
    from example_app import create_app

    app = create_app({"TESTING": True})
    # Created first with a clock of the test's; the route's resilient() finds this one.
    quotes = resilience_module.of_state(app.extensions["gateway_obs"]).breakers.get(
        "quotes", clock=clock
    )
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
