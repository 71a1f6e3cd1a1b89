"""Which errors count against a dependency, which are worth retrying, and Retry-After.

Shared by breakers (:func:`client_error`, the default exclusion), retries
(:func:`is_transient`, :func:`retry_after_of`) and fallbacks; imports neither
pybreaker nor tenacity.
"""

from __future__ import annotations

import email.utils
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from werkzeug.exceptions import HTTPException

from ..errors import AppError, BulkheadFullError, CircuitOpenError
from ..logs import LOGGER_NAME

__all__ = [
    "TRANSIENT_STATUSES",
    "Exclusion",
    "client_error",
    "contained",
    "is_transient",
    "retry_after_of",
    "status_of",
]

Exclusion = type[BaseException] | Callable[[BaseException], bool]

_log = logging.getLogger(LOGGER_NAME + ".breaker")

TRANSIENT_STATUSES = frozenset({502, 503, 504})

#: (module, attribute path) of optional libraries' connection errors, used only when
#: the library is already imported (an error of its type implies it is). asyncio's and
#: concurrent.futures' TimeoutError are the builtin one from Python 3.11 on, classes of
#: their own before.
_OPTIONAL_TRANSIENT = (
    ("asyncio", "TimeoutError"),
    ("concurrent.futures", "TimeoutError"),
    ("requests", "exceptions.ConnectionError"),
    ("requests", "exceptions.Timeout"),
    ("redis", "exceptions.ConnectionError"),
    ("redis", "exceptions.TimeoutError"),
    ("psycopg2", "OperationalError"),
    ("psycopg2", "InterfaceError"),
    ("httpx", "TransportError"),
)


def status_of(error: BaseException) -> int | None:
    """The HTTP status an error stands for: an ``AppError``'s, an ``HTTPException``'s,
    or that of the ``response`` it carries (``requests``, ``httpx``); else ``None``."""
    if isinstance(error, AppError):
        return error.status_code
    if isinstance(error, HTTPException):
        return error.code
    try:
        status = getattr(getattr(error, "response", None), "status_code", None)
    except Exception:  # a property of a foreign exception that raises: no status
        return None
    return status if isinstance(status, int) else None


def client_error(error: BaseException) -> bool:
    """Default exclusion: a 4xx answer is the caller's fault, not the dependency's.

    Operational ``AppError``\\ s with a 4xx status, werkzeug's 4xx exceptions and errors
    carrying a 4xx response never count as failures (they count as successes: the
    dependency answered).
    """
    if isinstance(error, AppError) and not error.is_operational:
        return False
    status = status_of(error)
    return status is not None and 400 <= status < 500


def contained(breaker: str, exclusion: Exclusion) -> Exclusion:
    """``exclusion`` as pybreaker should see it: an exception class as a plain class, and
    a predicate that cannot raise (a broken one counts the error, which is re-raised as
    it is, instead of replacing it and leaving the breaker without a verdict)."""
    if isinstance(exclusion, type):
        if type(exclusion) is type:
            return exclusion
        # pybreaker tells classes from predicates by ``type(x) is type``: a class with a
        # metaclass would be called as a predicate (and always "exclude").
        cls = exclusion
        return lambda error: isinstance(error, cls)
    predicate = exclusion
    warned = False

    def safe(error: BaseException) -> bool:
        nonlocal warned
        try:
            return bool(predicate(error))
        except Exception:
            if not warned:
                warned = True
                _log.warning(
                    "exclude predicate of circuit breaker %s raised; counting the error",
                    breaker,
                    exc_info=True,
                    extra={"breaker": breaker, "error_type": type(error).__name__},
                )
            return False

    return safe


def _optional_transient_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for module_name, path in _OPTIONAL_TRANSIENT:
        target: Any = sys.modules.get(module_name)
        for part in path.split("."):
            target = getattr(target, part, None)
        if isinstance(target, type) and issubclass(target, BaseException):
            found.append(target)
    return tuple(found)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is worth retrying by default.

    Yes: ``ConnectionError``, ``TimeoutError`` (``socket.timeout``, and asyncio's and
    concurrent.futures' on Python 3.10), a 502/503/504 (``AppError``, werkzeug, or a
    carried ``response``), and the connection errors of requests, redis, psycopg2 and
    httpx. Never: ``CircuitOpenError``, ``BulkheadFullError`` (retrying would hold the
    worker longer where the gateway is already saturated), 4xx, anything else.
    """
    if isinstance(error, (CircuitOpenError, BulkheadFullError)):
        return False
    status = status_of(error)
    if status is not None:
        return status in TRANSIENT_STATUSES
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return isinstance(error, _optional_transient_types())


def retry_after_of(error: BaseException, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the upstream asked to wait: ``error.retry_after``, or the ``Retry-After``
    header of ``error.response`` (seconds or an HTTP date); ``None`` if absent or invalid."""
    value: Any = getattr(error, "retry_after", None)
    if value is None:
        headers = getattr(getattr(error, "response", None), "headers", None)
        getter = getattr(headers, "get", None)
        if callable(getter):
            try:
                value = getter("Retry-After")
            except Exception:
                value = None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                moment = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if moment.tzinfo is None:
                return None
            seconds = moment.timestamp() - now()
    else:
        return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)
