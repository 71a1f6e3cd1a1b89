"""Keys of the rate limiter (``GATEWAY_OBS_RATELIMIT_*``, ``GATEWAY_OBS_TRUSTED_PROXIES``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .parsers import (
    PREFIX,
    _bool,
    _callable_or_import,
    _int,
    _optional,
    _positive_float,
    _setting,
)


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
        _positive_float,
        "a number of seconds > 0 and <= 86400",
        "connect and read timeout of a Redis limiter storage, unless "
        "``RATELIMIT_STORAGE_OPTIONS`` sets ``socket_timeout`` / ``socket_connect_timeout``",
    )
    ratelimit_probe_interval: float = _setting(
        "RATELIMIT_PROBE_INTERVAL",
        30.0,
        _positive_float,
        "a number of seconds > 0 and <= 86400",
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
