"""Shared helpers of the resilience tests: fake clocks, fake upstreams, shortcuts."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from flask import Flask

from flask_gateway_obs import resilience
from flask_gateway_obs.resilience.circuit import CircuitBreaker
from flask_gateway_obs.resilience.policy import RetryPolicy

from ..conftest import ManualClock

BREAKER_LOGGER = "flask_gateway_obs.breaker"
RETRY_LOGGER = "flask_gateway_obs.retry"


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


def make_breaker(app: Flask, name: str = "payments", **options: Any) -> CircuitBreaker:
    """The app's breaker ``name`` (what ``obs.circuit_breaker`` returns in its context)."""
    return resilience.of_state(app.extensions["gateway_obs"]).breakers.get(name, **options)


def fail(cb: CircuitBreaker, dep: Dependency, times: int) -> list[BaseException]:
    """Make ``times`` failing calls; return what each raised."""
    dep.failing = True
    raised = []
    for _ in range(times):
        with pytest.raises(Exception) as caught:  # noqa: PT011 - several kinds on purpose
            cb.call(dep)
        raised.append(caught.value)
    return raised


class Time:
    """A fake monotonic clock that sleeping (and each attempt) moves forward."""

    def __init__(self, attempt_cost: float = 0.0) -> None:
        self.now = 100.0
        self.attempt_cost = attempt_cost
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(float(seconds))
        self.now += seconds


class Flaky:
    """Fails with ``errors`` in turn (one per call), then returns ``"ok"``."""

    def __init__(self, *errors: BaseException, time: Time | None = None) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.raised: list[BaseException] = []
        self.time = time

    def __call__(self) -> str:
        self.calls += 1
        if self.time is not None:
            self.time.now += self.time.attempt_cost
        if self.errors:
            error = self.errors.pop(0)
            self.raised.append(error)
            raise error
        return "ok"


def always(error_type: type[BaseException], n: int = 50) -> list[BaseException]:
    """``n`` fresh errors of one type."""
    return [error_type(f"failure {i}") for i in range(n)]


def policy(app: Flask, fake: Time, name: str | None = None, **options: Any) -> RetryPolicy:
    """The app's retry policy ``name`` on the fake clock and sleep."""
    options.setdefault("sleep", fake.sleep)
    options.setdefault("clock", fake.clock)
    return resilience.of_state(app.extensions["gateway_obs"]).retries.get(name, **options)


def http_error(status: int, retry_after: str | None) -> requests.HTTPError:
    """A requests HTTPError carrying a response with ``status`` and ``Retry-After``."""
    response = requests.Response()
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return requests.HTTPError(f"{status}", response=response)
