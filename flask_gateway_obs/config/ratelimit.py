"""Keys of the rate limiter (``GATEWAY_OBS_RATELIMIT_*``, ``GATEWAY_OBS_TRUSTED_PROXIES``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .parsers import (
    PREFIX,
    CrossRule,
    Parser,
    _bool,
    _callable_or_import,
    _int,
    _Invalid,
    _optional,
    _positive_float,
    _setting,
)

#: Tighter than the shared bound on seconds: a Redis timeout past a minute is a hang (and
#: one of 1e10 s overflows the socket's), a probe interval past an hour leaves a recovered
#: storage unused for long.
MAX_STORAGE_TIMEOUT = 60.0
MAX_PROBE_INTERVAL = 3600.0


def _seconds_up_to(maximum: float) -> Parser:
    def parse(value: Any) -> float:
        number = _positive_float(value)
        if number > maximum:
            raise _Invalid
        return number

    return parse


@dataclasses.dataclass(frozen=True)
class RatelimitSettings:
    """Keys of the rate limiter (``GATEWAY_OBS_RATELIMIT_*``, ``GATEWAY_OBS_TRUSTED_PROXIES``)."""

    # ratelimit
    ratelimit_enabled: bool = _setting(
        "RATELIMIT_ENABLED",
        True,
        _bool,
        "a boolean",
        "install the rate limiter (Flask-Limiter); nothing is limited until ``RATELIMIT_DEFAULT`` "
        "or a decorator sets a limit",
    )
    ratelimit_fail_closed: bool = _setting(
        "RATELIMIT_FAIL_CLOSED",
        False,
        _bool,
        "a boolean",
        "while the limiter's storage is down, answer rate-limited requests with 503 instead of "
        "counting them per process in memory",
    )
    ratelimit_key_func: Callable[[], str] | None = _setting(  # noqa: RUF009 - immutable
        "RATELIMIT_KEY_FUNC",
        None,
        _optional(_callable_or_import),
        "a callable or a 'package.module:name' string",
        "default key function of the limits (who a limit counts); default: the client address "
        "(see ``GATEWAY_OBS_TRUSTED_PROXIES``)",
    )
    ratelimit_storage_timeout: float = _setting(
        "RATELIMIT_STORAGE_TIMEOUT",
        0.25,
        _seconds_up_to(MAX_STORAGE_TIMEOUT),
        f"a number of seconds > 0 and <= {MAX_STORAGE_TIMEOUT:g}, below the probe interval",
        "connect and read timeout of a Redis limiter storage, unless "
        "``RATELIMIT_STORAGE_OPTIONS`` sets ``socket_timeout`` / ``socket_connect_timeout``",
    )
    ratelimit_probe_interval: float = _setting(
        "RATELIMIT_PROBE_INTERVAL",
        30.0,
        _seconds_up_to(MAX_PROBE_INTERVAL),
        f"a number of seconds > 0 and <= {MAX_PROBE_INTERVAL:g}",
        "longest wait between two checks of a limiter storage that is down (the wait starts at "
        "0.5 s and doubles)",
    )
    trusted_proxies: int = _setting(
        "TRUSTED_PROXIES",
        0,
        _int(0, 32),
        "an integer from 0 to 32",
        "proxies in front of the app that append to ``X-Forwarded-For``; the limiter's client is "
        "the Nth address from the right, as with werkzeug's ``ProxyFix`` (0: the socket address)",
    )


class RatelimitKeys:
    """The ``app.config`` keys of this group."""

    RATELIMIT_ENABLED = PREFIX + "RATELIMIT_ENABLED"
    RATELIMIT_FAIL_CLOSED = PREFIX + "RATELIMIT_FAIL_CLOSED"
    RATELIMIT_KEY_FUNC = PREFIX + "RATELIMIT_KEY_FUNC"
    RATELIMIT_STORAGE_TIMEOUT = PREFIX + "RATELIMIT_STORAGE_TIMEOUT"
    RATELIMIT_PROBE_INTERVAL = PREFIX + "RATELIMIT_PROBE_INTERVAL"
    TRUSTED_PROXIES = PREFIX + "TRUSTED_PROXIES"


def _probe_rule(settings: RatelimitSettings) -> list[tuple[str, Any, str]]:
    """A probe of a storage that is down must end before the next one is due (else a
    black-holed storage stalls a request at every probe)."""
    problems: list[tuple[str, Any, str]] = []
    if settings.ratelimit_storage_timeout >= settings.ratelimit_probe_interval:
        problems.append(
            (
                RatelimitKeys.RATELIMIT_STORAGE_TIMEOUT,
                settings.ratelimit_storage_timeout,
                "a timeout below GATEWAY_OBS_RATELIMIT_PROBE_INTERVAL",
            )
        )
    return problems


#: Rules between rate-limit keys (skipped by ``load_settings`` when a key they read failed
#: to parse).
CROSS_RULES: tuple[CrossRule, ...] = (_probe_rule,)
