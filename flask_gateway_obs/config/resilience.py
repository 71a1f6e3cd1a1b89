"""Keys of breakers and retries (``GATEWAY_OBS_BREAKER_*``, ``GATEWAY_OBS_RETRY_*``)."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .parsers import (
    PREFIX,
    CrossRule,
    Parser,
    _between,
    _bool,
    _choice,
    _int,
    _Invalid,
    _named_options,
    _non_negative_float,
    _optional,
    _percent,
    _positive_float,
    _setting,
    _text,
)
from .redis import ACCEPTS as REDIS_ACCEPTS
from .redis import redis_url


def _window(value: Any) -> str:
    """``consecutive``, ``count:N`` or ``time:S``, normalised."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "consecutive":
            return text
        kind, colon, size = text.partition(":")
        if colon and kind in _WINDOW_SIZES:
            return f"{kind}:{_int(1, _WINDOW_SIZES[kind])(size)}"
    raise _Invalid


#: Largest window: calls of a ``count:`` window, seconds of a ``time:`` one.
_WINDOW_SIZES = {"count": 10_000, "time": 3_600}
_WINDOW_ACCEPTS = "consecutive, count:N (N from 1 to 10000) or time:S (S seconds, 1 to 3600)"
_PERCENT_ACCEPTS = "a percentage > 0 and <= 100"

#: option -> (parser, accepts) of one breaker in ``GATEWAY_OBS_BREAKERS`` and of
#: ``obs.circuit_breaker(name, **options)``.
BREAKER_OPTIONS: dict[str, tuple[Parser, str]] = {
    "fail_max": (_int(1, 100_000), "an integer from 1 to 100000"),
    "reset_timeout": (_positive_float, "a number of seconds > 0 and <= 86400"),
    "success_threshold": (_int(1, 10_000), "an integer from 1 to 10000"),
    "half_open_max_calls": (_int(1, 10_000), "an integer from 1 to 10000"),
    "timeout": (_optional(_positive_float), "a number of seconds > 0 and <= 86400, or null"),
    "storage": (_choice("memory", "redis"), "one of memory, redis"),
    "window": (_window, _WINDOW_ACCEPTS),
    "failure_rate": (_percent, _PERCENT_ACCEPTS),
    "min_calls": (_int(1, 10_000), "an integer from 1 to 10000"),
    "slow_call_seconds": (
        _optional(_positive_float),
        "a number of seconds > 0 and <= 86400, or null",
    ),
    "slow_call_rate": (_percent, _PERCENT_ACCEPTS),
}
#: option -> (parser, accepts) of one bulkhead in ``GATEWAY_OBS_BULKHEADS`` and of
#: ``obs.bulkhead(name, **options)``.
BULKHEAD_OPTIONS: dict[str, tuple[Parser, str]] = {
    "max_concurrent": (_int(1, 10_000), "an integer from 1 to 10000"),
    "max_wait": (_non_negative_float, "a number of seconds from 0 to 86400"),
}
#: option -> (parser, accepts) of one policy in ``GATEWAY_OBS_RETRY_POLICIES`` and of
#: ``obs.retry(name, **options)``.
RETRY_OPTIONS: dict[str, tuple[Parser, str]] = {
    "max_attempts": (_int(1, 100), "an integer from 1 to 100"),
    "base_delay": (_non_negative_float, "a number of seconds from 0 to 86400"),
    "multiplier": (_between(1.0, 100.0), "a number from 1 to 100"),
    "max_delay": (_non_negative_float, "a number of seconds from 0 to 86400"),
    "jitter": (_choice("full", "equal", "none"), "one of full, equal, none"),
    "deadline": (_optional(_positive_float), "a number of seconds > 0 and <= 86400, or null"),
    "respect_retry_after": (_bool, "a boolean"),
}


@dataclasses.dataclass(frozen=True)
class ResilienceSettings:
    """Keys of breakers and retries (``GATEWAY_OBS_BREAKER_*``, ``GATEWAY_OBS_RETRY_*``)."""

    # resilience
    breaker_fail_max: int = _setting(
        "BREAKER_FAIL_MAX",
        5,
        _int(1, 100_000),
        "an integer from 1 to 100000",
        "consecutive failures that open a circuit breaker",
    )
    breaker_reset_timeout: float = _setting(
        "BREAKER_RESET_TIMEOUT",
        30.0,
        _positive_float,
        "a number of seconds > 0 and <= 86400",
        "how long an open breaker fails fast before it lets trial calls through (half-open)",
    )
    breaker_success_threshold: int = _setting(
        "BREAKER_SUCCESS_THRESHOLD",
        1,
        _int(1, 10_000),
        "an integer from 1 to 10000",
        "successful trial calls that close a half-open breaker",
    )
    breaker_half_open_max_calls: int = _setting(
        "BREAKER_HALF_OPEN_MAX_CALLS",
        1,
        _int(1, 10_000),
        "an integer from 1 to 10000",
        "trial calls a half-open breaker lets through at once (per process); the others fail fast",
    )
    breaker_timeout: float | None = _setting(
        "BREAKER_TIMEOUT",
        None,
        _optional(_positive_float),
        "a number of seconds > 0 and <= 86400",
        "a call slower than this fails with 504 and counts as a failure; it runs in a worker "
        'thread and is not stopped (README: "Timeouts, honestly"); default: no timeout',
    )
    breaker_window: str = _setting(
        "BREAKER_WINDOW",
        "consecutive",
        _window,
        _WINDOW_ACCEPTS,
        "what opens a breaker: ``consecutive`` failures (``FAIL_MAX``), or the failure or "
        "slow-call rate of the last N calls (``count:N``) or S seconds (``time:S``)",
    )
    breaker_failure_rate: float = _setting(
        "BREAKER_FAILURE_RATE",
        50.0,
        _percent,
        _PERCENT_ACCEPTS,
        "``count:``/``time:`` windows: open when this percentage of the window's calls failed",
    )
    breaker_min_calls: int = _setting(
        "BREAKER_MIN_CALLS",
        10,
        _int(1, 10_000),
        "an integer from 1 to 10000",
        "``count:``/``time:`` windows: calls the window must hold before a rate can open the "
        "breaker (at most N for ``count:N``)",
    )
    breaker_slow_call_seconds: float | None = _setting(
        "BREAKER_SLOW_CALL_SECONDS",
        None,
        _optional(_positive_float),
        "a number of seconds > 0 and <= 86400, or empty for none",
        "``count:``/``time:`` windows: a call longer than this is slow; default: none is",
    )
    breaker_slow_call_rate: float = _setting(
        "BREAKER_SLOW_CALL_RATE",
        100.0,
        _percent,
        _PERCENT_ACCEPTS,
        "``count:``/``time:`` windows: open when this percentage of the window's calls were slow",
    )
    breaker_storage: str = _setting(
        "BREAKER_STORAGE",
        "memory",
        _choice("memory", "redis"),
        "one of memory, redis",
        "``memory``: state per process; ``redis``: shared by every worker and host of the service",
    )
    breaker_redis_url: str | None = _setting(
        "BREAKER_REDIS_URL",
        None,
        _optional(redis_url),
        REDIS_ACCEPTS,
        "Redis for shared breaker state; default ``GATEWAY_OBS_REDIS_URL``",
    )
    breaker_redis_namespace: str | None = _setting(
        "BREAKER_REDIS_NAMESPACE",
        None,
        _optional(_text),
        "a non-empty string",
        "key prefix of shared breaker state; default ``gateway_obs:<service name>``, so "
        "the workers of one service share it and other services do not (set it or "
        "``GATEWAY_OBS_SERVICE_NAME``: the import name is often just ``app``)",
    )
    breaker_redis_timeout: float = _setting(
        "BREAKER_REDIS_TIMEOUT",
        0.25,
        _positive_float,
        "a number of seconds > 0 and <= 86400",
        "connect and read timeout of breaker-state calls to Redis",
    )
    breaker_redis_retry_interval: float = _setting(
        "BREAKER_REDIS_RETRY_INTERVAL",
        5.0,
        _positive_float,
        "a number of seconds > 0 and <= 86400",
        "after a Redis error breakers use local state and try Redis again after this long",
    )
    breakers: Mapping[str, Mapping[str, Any]] | None = _setting(
        "BREAKERS",
        None,
        _named_options("BREAKERS", BREAKER_OPTIONS),
        "a dict (or JSON object) of breaker name -> {option: value}",
        "per-breaker overrides of ``fail_max``, ``reset_timeout``, ``success_threshold``, "
        "``half_open_max_calls``, ``timeout``, ``storage``, ``window``, ``failure_rate``, "
        "``min_calls``, ``slow_call_seconds``, ``slow_call_rate``",
    )
    bulkhead_max_concurrent: int = _setting(
        "BULKHEAD_MAX_CONCURRENT",
        10,
        _int(1, 10_000),
        "an integer from 1 to 10000",
        "calls a bulkhead lets run at once (per process)",
    )
    bulkhead_max_wait: float = _setting(
        "BULKHEAD_MAX_WAIT",
        0.0,
        _non_negative_float,
        "a number of seconds from 0 to 86400",
        "how long a call waits for room in a full bulkhead before ``BulkheadFullError`` (503)",
    )
    bulkheads: Mapping[str, Mapping[str, Any]] | None = _setting(
        "BULKHEADS",
        None,
        _named_options("BULKHEADS", BULKHEAD_OPTIONS),
        "a dict (or JSON object) of bulkhead name -> {option: value}",
        "per-bulkhead overrides of ``max_concurrent``, ``max_wait``",
    )
    retry_max_attempts: int = _setting(
        "RETRY_MAX_ATTEMPTS",
        3,
        _int(1, 100),
        "an integer from 1 to 100",
        "attempts in all, the first one included (1: no retry)",
    )
    retry_base_delay: float = _setting(
        "RETRY_BASE_DELAY",
        0.1,
        _non_negative_float,
        "a number of seconds from 0 to 86400",
        "backoff before the first retry, multiplied by ``GATEWAY_OBS_RETRY_MULTIPLIER`` "
        "for each further one",
    )
    retry_multiplier: float = _setting(
        "RETRY_MULTIPLIER",
        2.0,
        _between(1.0, 100.0),
        "a number from 1 to 100",
        "growth factor of the exponential backoff",
    )
    retry_max_delay: float = _setting(
        "RETRY_MAX_DELAY",
        2.0,
        _non_negative_float,
        "a number of seconds from 0 to 86400",
        "cap of one backoff sleep; an upstream ``Retry-After`` above it ends the retries",
    )
    retry_jitter: str = _setting(
        "RETRY_JITTER",
        "full",
        _choice("full", "equal", "none"),
        "one of full, equal, none",
        "``full``: sleep a random 0..backoff; ``equal``: backoff/2 plus a random 0..backoff/2",
    )
    retry_deadline: float | None = _setting(
        "RETRY_DEADLINE",
        10.0,
        _optional(_positive_float),
        "a number of seconds > 0 and <= 86400, or empty for none",
        "seconds from the first attempt: no retry starts unless its sleep and an attempt as "
        "long as the previous one still end by then; caps a breaker ``timeout`` inside",
    )
    retry_respect_retry_after: bool = _setting(
        "RETRY_RESPECT_RETRY_AFTER",
        True,
        _bool,
        "a boolean",
        "never retry sooner than an upstream's ``Retry-After`` (``retry_after`` attribute "
        "or the header of the error's ``response``)",
    )
    retry_policies: Mapping[str, Mapping[str, Any]] | None = _setting(
        "RETRY_POLICIES",
        None,
        _named_options("RETRY_POLICIES", RETRY_OPTIONS),
        "a dict (or JSON object) of policy name -> {option: value}",
        "named retry policies overriding ``max_attempts``, ``base_delay``, ``multiplier``, "
        "``max_delay``, ``jitter``, ``deadline``, ``respect_retry_after``",
    )


class ResilienceKeys:
    """The ``app.config`` keys of this group."""

    BREAKER_FAIL_MAX = PREFIX + "BREAKER_FAIL_MAX"
    BREAKER_RESET_TIMEOUT = PREFIX + "BREAKER_RESET_TIMEOUT"
    BREAKER_SUCCESS_THRESHOLD = PREFIX + "BREAKER_SUCCESS_THRESHOLD"
    BREAKER_HALF_OPEN_MAX_CALLS = PREFIX + "BREAKER_HALF_OPEN_MAX_CALLS"
    BREAKER_TIMEOUT = PREFIX + "BREAKER_TIMEOUT"
    BREAKER_WINDOW = PREFIX + "BREAKER_WINDOW"
    BREAKER_FAILURE_RATE = PREFIX + "BREAKER_FAILURE_RATE"
    BREAKER_MIN_CALLS = PREFIX + "BREAKER_MIN_CALLS"
    BREAKER_SLOW_CALL_SECONDS = PREFIX + "BREAKER_SLOW_CALL_SECONDS"
    BREAKER_SLOW_CALL_RATE = PREFIX + "BREAKER_SLOW_CALL_RATE"
    BREAKER_STORAGE = PREFIX + "BREAKER_STORAGE"
    BREAKER_REDIS_URL = PREFIX + "BREAKER_REDIS_URL"
    BREAKER_REDIS_NAMESPACE = PREFIX + "BREAKER_REDIS_NAMESPACE"
    BREAKER_REDIS_TIMEOUT = PREFIX + "BREAKER_REDIS_TIMEOUT"
    BREAKER_REDIS_RETRY_INTERVAL = PREFIX + "BREAKER_REDIS_RETRY_INTERVAL"
    BREAKERS = PREFIX + "BREAKERS"
    BULKHEAD_MAX_CONCURRENT = PREFIX + "BULKHEAD_MAX_CONCURRENT"
    BULKHEAD_MAX_WAIT = PREFIX + "BULKHEAD_MAX_WAIT"
    BULKHEADS = PREFIX + "BULKHEADS"
    RETRY_MAX_ATTEMPTS = PREFIX + "RETRY_MAX_ATTEMPTS"
    RETRY_BASE_DELAY = PREFIX + "RETRY_BASE_DELAY"
    RETRY_MULTIPLIER = PREFIX + "RETRY_MULTIPLIER"
    RETRY_MAX_DELAY = PREFIX + "RETRY_MAX_DELAY"
    RETRY_JITTER = PREFIX + "RETRY_JITTER"
    RETRY_DEADLINE = PREFIX + "RETRY_DEADLINE"
    RETRY_RESPECT_RETRY_AFTER = PREFIX + "RETRY_RESPECT_RETRY_AFTER"
    RETRY_POLICIES = PREFIX + "RETRY_POLICIES"


def breaker_redis_url(settings: Any) -> tuple[str, str] | None:
    """``(key, url)`` of the breakers' Redis: ``GATEWAY_OBS_BREAKER_REDIS_URL``, else
    ``GATEWAY_OBS_REDIS_URL``; ``None`` without either."""
    if settings.breaker_redis_url:
        return ResilienceKeys.BREAKER_REDIS_URL, str(settings.breaker_redis_url)
    if settings.redis_url:
        return PREFIX + "REDIS_URL", str(settings.redis_url)
    return None


def uses_breaker_redis(settings: Any) -> bool:
    """Whether the config asks for Redis breaker storage (by default or for one breaker)."""
    if settings.breaker_storage == "redis":
        return True
    return any(o.get("storage") == "redis" for o in (settings.breakers or {}).values())


def decodes_responses(url: str) -> bool:
    """Whether a Redis URL asks for ``decode_responses`` (as redis-py reads the query)."""
    values = parse_qs(urlsplit(url).query).get("decode_responses", [])
    return any(v.strip().upper() not in ("", "0", "F", "FALSE", "N", "NO") for v in values)


SLOW_CALLS_NEED_A_RATE_WINDOW = "null unless the window is count:N or time:S"


def slow_calls_problem(window: str, slow_call_seconds: float | None) -> bool:
    """Whether slow calls are asked for where nothing counts them (``consecutive``)."""
    return slow_call_seconds is not None and window == "consecutive"


def _slow_calls_rule(settings: Any) -> list[tuple[str, Any, str]]:
    """Slow calls (``GATEWAY_OBS_BREAKER_SLOW_CALL_SECONDS``) need a rate window."""
    if slow_calls_problem(settings.breaker_window, settings.breaker_slow_call_seconds):
        return [
            (
                ResilienceKeys.BREAKER_SLOW_CALL_SECONDS,
                settings.breaker_slow_call_seconds,
                SLOW_CALLS_NEED_A_RATE_WINDOW + " (GATEWAY_OBS_BREAKER_WINDOW)",
            )
        ]
    return []


def _breakers_slow_calls_rule(settings: Any) -> list[tuple[str, Any, str]]:
    """The same for each breaker of ``GATEWAY_OBS_BREAKERS`` that sets slow calls; its
    window defaults to the shared key, read only then (a bad shared window skips the rule,
    and a breaker with a window of its own needs it not)."""
    problems: list[tuple[str, Any, str]] = []
    for name, options in (settings.breakers or {}).items():
        if "slow_call_seconds" not in options:
            continue
        # not .get(..., default): the shared window is read only when the breaker has none
        window = options.get("window") or settings.breaker_window
        slow = options["slow_call_seconds"]
        if slow_calls_problem(window, slow):
            problems.append(
                (
                    f"{ResilienceKeys.BREAKERS}[{name!r}].slow_call_seconds",
                    slow,
                    SLOW_CALLS_NEED_A_RATE_WINDOW,
                ),
            )
    return problems


def _redis_storage_rule(settings: Any) -> list[tuple[str, Any, str]]:
    """Redis breaker storage needs a usable Redis URL and the redis package."""
    problems: list[tuple[str, Any, str]] = []
    if not uses_breaker_redis(settings):
        return problems
    key = ResilienceKeys.BREAKER_STORAGE
    if settings.breaker_storage != "redis":
        key = ResilienceKeys.BREAKERS
    found = breaker_redis_url(settings)
    if found is None:
        problems.append(
            (
                key,
                "redis",
                "'memory', or 'redis' together with GATEWAY_OBS_BREAKER_REDIS_URL "
                "or GATEWAY_OBS_REDIS_URL",
            )
        )
    elif decodes_responses(found[1]):
        problems.append(
            (
                found[0],
                found[1],  # ConfigError masks URL credentials
                "a Redis URL without decode_responses=true (breaker state is read "
                "as bytes); give other users of Redis their own URL",
            )
        )
    if importlib.util.find_spec("redis") is None:
        problems.append(
            (
                key,
                "redis",
                "'memory' unless the redis package is installed "
                "(pip install 'flask-gateway-obs[redis]')",
            )
        )
    return problems


#: Rules between breaker keys (skipped by ``load_settings`` when a key they read failed to
#: parse).
CROSS_RULES: tuple[CrossRule, ...] = (
    _slow_calls_rule,
    _breakers_slow_calls_rule,
    _redis_storage_rule,
)
