"""Which errors are transient, and the Retry-After an upstream asked for."""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils

import pytest
import requests

from flask_gateway_obs.resilience.retry import is_transient, retry_after_of

from .helpers import (
    http_error,
)


def test_optional_libraries_connection_errors_are_transient() -> None:
    """requests', redis' and psycopg2's connection errors count as transient."""
    import psycopg2
    import redis

    assert is_transient(requests.exceptions.ConnectionError("refused"))
    assert is_transient(requests.exceptions.ReadTimeout("slow"))
    assert is_transient(redis.exceptions.ConnectionError("refused"))
    assert is_transient(redis.exceptions.TimeoutError("slow"))
    assert is_transient(psycopg2.OperationalError("could not connect"))
    assert not is_transient(redis.exceptions.ResponseError("WRONGTYPE"))


def test_asyncio_and_futures_timeouts_are_transient_on_every_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on Python 3.10, where asyncio's and concurrent.futures' TimeoutError are classes of
    their own (not the builtin TimeoutError), both are still retried."""

    class AsyncioTimeoutError(Exception):
        """asyncio.TimeoutError before Python 3.11."""

    class FuturesTimeoutError(Exception):
        """concurrent.futures.TimeoutError before Python 3.11."""

    monkeypatch.setattr(asyncio, "TimeoutError", AsyncioTimeoutError)
    monkeypatch.setattr(concurrent.futures, "TimeoutError", FuturesTimeoutError)
    assert is_transient(AsyncioTimeoutError())
    assert is_transient(FuturesTimeoutError())


def test_retry_after_as_an_http_date() -> None:
    """Retry-After may be an HTTP date; garbage and past dates are handled."""
    moment = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_of(http_error(503, moment), now=lambda: 1_000_000) == pytest.approx(30)
    assert retry_after_of(http_error(503, "soon")) is None
    assert retry_after_of(http_error(503, moment), now=lambda: 2_000_000) == 0.0
    assert retry_after_of(ValueError()) is None
