"""Retry policies: attempts, backoff and jitter, the deadline, what is retried, Retry-After,
logs and metrics, config and the decorator forms, coroutines."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.exceptions import BadGateway

from flask_gateway_obs import (
    AppError,
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    GatewayObs,
    NotFoundError,
    ServiceUnavailableError,
    retry,
)
from flask_gateway_obs import resilience as resilience_module
from flask_gateway_obs.config import Keys
from flask_gateway_obs.testing import capture_logs, metric_value

from ..conftest import MakeApp
from .helpers import (
    RETRY_LOGGER,
    Flaky,
    Time,
    always,
    http_error,
    policy,
)


def test_transient_failures_are_retried_until_success(app: Flask, fake: Time) -> None:
    """Two ConnectionErrors then success: three calls, two sleeps, the result returned."""
    flaky = Flaky(ConnectionError("a"), ConnectionError("b"))
    assert policy(app, fake, max_attempts=3).call(flaky) == "ok"
    assert flaky.calls == 3
    assert len(fake.sleeps) == 2


def test_attempts_are_capped_and_the_original_error_is_raised(app: Flask, fake: Time) -> None:
    """After max_attempts the last original exception is raised, never tenacity's RetryError."""
    flaky = Flaky(*always(ConnectionError))
    with pytest.raises(ConnectionError) as caught:
        policy(app, fake, max_attempts=4).call(flaky)
    assert flaky.calls == 4
    assert caught.value is flaky.raised[-1]
    assert len(fake.sleeps) == 3


def test_max_attempts_one_means_a_single_call(app: Flask, fake: Time) -> None:
    """max_attempts=1 calls once and sleeps never."""
    flaky = Flaky(*always(TimeoutError))
    with pytest.raises(TimeoutError):
        policy(app, fake, max_attempts=1).call(flaky)
    assert (flaky.calls, fake.sleeps) == (1, [])


def test_backoff_grows_exponentially_up_to_the_cap(app: Flask, fake: Time) -> None:
    """Without jitter: base, base*multiplier, ... never above max_delay."""
    flaky = Flaky(*always(ConnectionError))
    retrying = policy(
        app,
        fake,
        max_attempts=6,
        base_delay=0.5,
        multiplier=3,
        max_delay=4,
        jitter="none",
        deadline=None,
    )
    with pytest.raises(ConnectionError):
        retrying.call(flaky)
    assert fake.sleeps == [0.5, 1.5, 4, 4, 4]


def test_full_jitter_varies_between_runs_within_the_backoff(app: Flask) -> None:
    """Full jitter: each sleep is random in [0, backoff], so runs differ."""
    runs = []
    for _ in range(5):
        fake = Time()
        with pytest.raises(ConnectionError):
            policy(app, fake, max_attempts=4, base_delay=1, max_delay=10, jitter="full").call(
                Flaky(*always(ConnectionError))
            )
        assert all(0 <= s <= b for s, b in zip(fake.sleeps, [1, 2, 4], strict=True))
        runs.append(tuple(fake.sleeps))
    assert len(set(runs)) > 1


def test_equal_jitter_keeps_at_least_half_the_backoff(app: Flask) -> None:
    """Equal jitter: each sleep is in [backoff/2, backoff], and runs differ."""
    runs = []
    for _ in range(5):
        fake = Time()
        with pytest.raises(ConnectionError):
            policy(app, fake, max_attempts=4, base_delay=1, max_delay=10, jitter="equal").call(
                Flaky(*always(ConnectionError))
            )
        assert all(b / 2 <= s <= b for s, b in zip(fake.sleeps, [1, 2, 4], strict=True))
        runs.append(tuple(fake.sleeps))
    assert len(set(runs)) > 1


@pytest.mark.parametrize("attempt_cost", [0.0, 0.15, 0.5, 0.7])
def test_the_deadline_is_never_crossed(app: Flask, attempt_cost: float) -> None:
    """Neither a sleep nor an attempt ends past the deadline when attempts cost the same:
    no attempt starts unless the previous one's duration still fits."""
    fake = Time(attempt_cost)
    flaky = Flaky(*always(ConnectionError), time=fake)
    started = fake.now
    retrying = policy(
        app,
        fake,
        max_attempts=50,
        base_delay=0.2,
        max_delay=0.4,
        jitter="none",
        deadline=2.0,
    )
    with capture_logs(RETRY_LOGGER) as logs, pytest.raises(ConnectionError):
        retrying.call(flaky)
    assert fake.now - started <= 2.0 + 1e-9
    assert flaky.calls > 1
    assert logs.find(reason="deadline")


def test_an_attempt_that_would_not_fit_before_the_deadline_is_not_started(app: Flask) -> None:
    """1.2 s spent, 0.4 s of sleep, 0.5 s per attempt: 2.1 s > 2 s, so no third attempt."""
    fake = Time(0.5)
    flaky = Flaky(*always(ConnectionError), time=fake)
    retrying = policy(
        app, fake, max_attempts=10, base_delay=0.2, max_delay=0.4, jitter="none", deadline=2.0
    )
    with pytest.raises(ConnectionError):
        retrying.call(flaky)
    assert flaky.calls == 2
    assert fake.sleeps == [0.2]


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bug"),
        KeyError("bug"),
        TypeError("bug"),
        NotFoundError("gone"),
        BadRequestError("bad"),
        AppError("throttled", 429),
        CircuitOpenError("payments", retry_after=5),
    ],
)
def test_non_transient_errors_are_raised_at_once(
    app: Flask, fake: Time, error: BaseException
) -> None:
    """Programming errors, 4xx and an open breaker: one call, no sleep, same exception."""
    flaky = Flaky(error)
    with pytest.raises(type(error)) as caught:
        policy(app, fake).call(flaky)
    assert caught.value is error
    assert (flaky.calls, fake.sleeps) == (1, [])


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("refused"),
        TimeoutError("timed out"),
        ServiceUnavailableError(),
        AppError("bad gateway", 502),
        AppError("gateway timeout", 504),
        BadGateway(),
    ],
)
def test_transient_errors_are_retried(app: Flask, fake: Time, error: BaseException) -> None:
    """Connection errors, timeouts and 502/503/504 are retried."""
    flaky = Flaky(error)
    assert policy(app, fake).call(flaky) == "ok"
    assert flaky.calls == 2


def test_retry_on_and_retry_if_replace_the_default_choice(app: Flask, fake: Time) -> None:
    """retry_on retries those types only; retry_if decides instead; never a CircuitOpenError."""
    assert policy(app, fake, retry_on=KeyError).call(Flaky(KeyError("k"))) == "ok"
    with pytest.raises(ConnectionError):
        policy(app, fake, retry_on=KeyError).call(Flaky(ConnectionError("c")))
    picky = policy(app, fake, retry_if=lambda e: "again" in str(e))
    assert picky.call(Flaky(RuntimeError("try again"))) == "ok"
    opened = Flaky(CircuitOpenError("p"))
    with pytest.raises(CircuitOpenError):
        policy(app, fake, retry_if=lambda e: True).call(opened)
    assert opened.calls == 1


def test_retry_after_of_the_error_is_honoured(app: Flask, fake: Time) -> None:
    """An error's retry_after longer than the backoff sets the sleep."""
    flaky = Flaky(ServiceUnavailableError(retry_after=2))
    assert policy(app, fake, base_delay=0.1, max_delay=3, jitter="none").call(flaky) == "ok"
    assert fake.sleeps == [2.0]


def test_retry_after_beyond_max_delay_ends_the_retries(app: Flask, fake: Time) -> None:
    """An upstream asking for a longer wait than max_delay allows is not retried sooner."""
    flaky = Flaky(ServiceUnavailableError(retry_after=30))
    with capture_logs(RETRY_LOGGER) as logs, pytest.raises(ServiceUnavailableError):
        policy(app, fake, max_delay=2).call(flaky)
    assert (flaky.calls, fake.sleeps) == (1, [])
    assert logs.find(reason="retry_after")


def test_retry_after_header_of_a_requests_response_is_honoured(app: Flask, fake: Time) -> None:
    """requests' HTTPError: 503 is transient and its Retry-After header sets the sleep."""
    flaky = Flaky(http_error(503, "2"), http_error(404, None))
    with pytest.raises(requests.HTTPError):
        policy(app, fake, max_delay=5, jitter="none", base_delay=0.1).call(flaky)
    assert fake.sleeps == [2.0]
    assert flaky.calls == 2  # the 404 that followed was not retried


def test_each_retry_is_logged_with_attempt_delay_type_and_request_id(make_app: MakeApp) -> None:
    """A warning per retry carries operation, attempt, delay, error type and the request ID."""
    app = make_app()
    fake = Time()
    flaky = Flaky(ConnectionError("a"), TimeoutError("b"))

    @retry(operation="rates", sleep=fake.sleep, clock=fake.clock, jitter="none")
    def fetch_rates() -> str:
        return flaky()

    @app.get("/rates")
    def rates() -> dict[str, str]:
        return {"rates": fetch_rates()}

    with capture_logs(RETRY_LOGGER) as logs:
        response = app.test_client().get("/rates", headers={"X-Request-ID": "req-7"})
    assert response.get_json() == {"rates": "ok"}
    records = logs.find(operation="rates")
    assert [(r["level"], r["attempt"], r["error_type"]) for r in records] == [
        ("warning", 1, "ConnectionError"),
        ("warning", 2, "TimeoutError"),
    ]
    assert [r["delay_s"] for r in records] == fake.sleeps == [0.1, 0.2]
    assert {r["request_id"] for r in records} == {"req-7"}


def test_attempts_and_outcomes_are_counted(app: Flask, fake: Time) -> None:
    """retry_attempts_total{operation,outcome}: retries, and one final outcome per call."""
    retrying = policy(app, fake, "pricing", max_attempts=2)
    retrying.call(Flaky(ConnectionError()))
    retrying.call(Flaky())
    with pytest.raises(ConnectionError):
        retrying.call(Flaky(*always(ConnectionError)))
    with pytest.raises(ValueError, match="bug"):
        retrying.call(Flaky(ValueError("bug")))

    def count(outcome: str) -> float:
        return metric_value(app, "retry_attempts_total", operation="pricing", outcome=outcome)

    assert [count(o) for o in ("retry", "success", "exhausted", "failure")] == [2, 2, 1, 1]


def test_named_policies_come_from_config(make_app: MakeApp, monkeypatch: Any) -> None:
    """GATEWAY_OBS_RETRY_POLICIES (also as JSON from the environment) over GATEWAY_OBS_RETRY_*."""
    monkeypatch.setenv(
        "FLASK_GATEWAY_OBS_RETRY_POLICIES", '{"rates": {"max_attempts": 5, "jitter": "equal"}}'
    )
    monkeypatch.setenv("FLASK_GATEWAY_OBS_RETRY_BASE_DELAY", "0.3")
    app = make_app(init=False)
    app.config.from_prefixed_env()
    GatewayObs(app)
    retries = resilience_module.of_state(app.extensions["gateway_obs"]).retries
    rates, other = retries.get("rates").settings, retries.get("other").settings
    assert (rates.max_attempts, rates.jitter, rates.base_delay) == (5, "equal", 0.3)
    assert (other.max_attempts, other.jitter) == (3, "full")


def test_bad_retry_values_raise_config_error(make_app: MakeApp, app: Flask, fake: Time) -> None:
    """Bad GATEWAY_OBS_RETRY_* values and bad keyword options are refused, naming each."""
    bad = make_app({Keys.RETRY_MAX_ATTEMPTS: 0, Keys.RETRY_MULTIPLIER: 0.5}, init=False)
    with pytest.raises(ConfigError) as caught:
        GatewayObs(bad)
    assert {p[0] for p in caught.value.problems} == {
        Keys.RETRY_MAX_ATTEMPTS,
        Keys.RETRY_MULTIPLIER,
    }
    with pytest.raises(ConfigError, match="max_attempts"):
        policy(app, fake, max_attempts="many")


def test_bare_and_named_decorator_forms(make_app: MakeApp) -> None:
    """@retry, @retry("name") and @retry(...) all work at import time and per app."""
    app = make_app({Keys.RETRY_POLICIES: {"quick": {"max_attempts": 2, "base_delay": 0}}})
    flaky = Flaky(*always(ConnectionError, 10))

    @retry
    def bare() -> str:
        return flaky()

    @retry("quick")
    def named() -> str:
        return flaky()

    with app.app_context():
        with pytest.raises(ConnectionError):
            named()
        assert flaky.calls == 2
        assert metric_value(app, "retry_attempts_total", operation="quick", outcome="retry") == 1
    assert bare.__name__ == "bare"


def test_outside_an_app_context_the_defaults_apply() -> None:
    """Without an app the built-in defaults apply (3 attempts) and nothing breaks."""
    fake = Time()
    flaky = Flaky(*always(ConnectionError))

    @retry(sleep=fake.sleep, clock=fake.clock)
    def fetch() -> str:
        return flaky()

    with pytest.raises(ConnectionError):
        fetch()
    assert flaky.calls == 3


def test_async_functions_are_retried(app: Flask) -> None:
    """Coroutine functions are awaited on each attempt; an async sleep is awaited."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    flaky = Flaky(ConnectionError(), ConnectionError())

    @retry(sleep=fake_sleep, jitter="none")
    async def fetch() -> str:
        await asyncio.sleep(0)
        return flaky()

    with app.app_context():
        assert asyncio.run(fetch()) == "ok"
    assert slept == [0.1, 0.2]
