"""Every configuration key, its default, its type and its validation, in one place.

Each key is a field of :class:`Settings`. The field's metadata holds the
``app.config`` key, the parser that validates and normalises a raw value and a
short description of what the key accepts (used in error messages and the
README table). :func:`load_settings` reads them all at ``init_app`` and raises
one :class:`ConfigError` that names every bad key.

Values may come from Python (``app.config[...] = 5``) or from the environment
through ``app.config.from_prefixed_env()``, which hands over JSON-decoded values
where it can and plain strings otherwise; every parser accepts both.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ConfigError", "Keys", "Settings", "load_settings"]

PREFIX = "GATEWAY_OBS_"


class ConfigError(ValueError):
    """One or more configuration values are invalid.

    :param problems: ``(key, got, accepts)`` for every bad key.
    """

    def __init__(self, problems: list[tuple[str, Any, str]]) -> None:
        self.problems = problems
        lines = [f"  {key}: got {got!r}; accepts {accepts}" for key, got, accepts in problems]
        super().__init__("invalid flask-gateway-obs configuration:\n" + "\n".join(lines))


class _Invalid(Exception):
    """Raised by a parser; the message is not used, the field's ``accepts`` is."""


Parser = Callable[[Any], Any]

# --- parsers -----------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _Invalid


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _Invalid from None
    else:
        raise _Invalid
    if not math.isfinite(number):
        raise _Invalid
    return number


def _positive_float(value: Any) -> float:
    number = _number(value)
    if number <= 0:
        raise _Invalid
    return number


def _non_negative_float(value: Any) -> float:
    number = _number(value)
    if number < 0:
        raise _Invalid
    return number


def _int(minimum: int) -> Parser:
    def parse(value: Any) -> int:
        number = _number(value)
        if number != int(number) or number < minimum:
            raise _Invalid
        return int(number)

    return parse


def _percent(value: Any) -> float:
    number = _number(value)
    if not 0 < number <= 100:
        raise _Invalid
    return number


def _choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise _Invalid

    return parse


def _text(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise _Invalid


def _optional(parser: Parser) -> Parser:
    def parse(value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parser(value)

    return parse


_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _log_level(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() in _LOG_LEVELS:
        return _LOG_LEVELS[value.strip().lower()]
    if isinstance(value, int) and not isinstance(value, bool) and value in _LOG_LEVELS.values():
        return value
    raise _Invalid


def _header_name(value: Any) -> str:
    text = _text(value)
    if not all(c.isalnum() or c == "-" for c in text):
        raise _Invalid
    return text


def _url(*schemes: str) -> Parser:
    def parse(value: Any) -> str:
        text = _text(value)
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise _Invalid from None
        if parts.scheme not in schemes:
            raise _Invalid
        if parts.scheme != "unix" and not parts.hostname and "host=" not in parts.query:
            raise _Invalid
        return text

    return parse


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                raise _Invalid from None
        else:
            return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _Invalid


def _path(value: Any) -> str:
    text = _text(value)
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise _Invalid
    return text.rstrip("/") or "/"


def _http_status(value: Any) -> int:
    number = _int(200)(value)
    if number > 599:
        raise _Invalid
    return int(number)


# --- the settings --------------------------------------------------------------


def _setting(key: str, default: Any, parse: Parser, accepts: str, doc: str) -> Any:
    return dataclasses.field(
        default=default,
        metadata={"key": PREFIX + key, "parse": parse, "accepts": accepts, "doc": doc},
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated configuration of one app; read once at ``init_app``."""

    # shared
    service_name: str | None = _setting(
        "SERVICE_NAME",
        None,
        _optional(_text),
        "a non-empty string",
        "``service`` field of every log line; default: the app's import name",
    )
    service_version: str | None = _setting(
        "SERVICE_VERSION",
        None,
        _optional(_text),
        "a non-empty string",
        "the service's version, for health bodies, ``app_info`` and the Sentry release",
    )
    redis_url: str | None = _setting(
        "REDIS_URL",
        None,
        _optional(_url("redis", "rediss", "unix")),
        "a redis://, rediss:// or unix:// URL",
        "Redis for the health check, default limiter storage and breaker state",
    )
    database_url: str | None = _setting(
        "DATABASE_URL",
        None,
        _optional(_url("postgresql", "postgres")),
        "a postgresql:// URL",
        "PostgreSQL for the health check",
    )
    request_id_header: str = _setting(
        "REQUEST_ID_HEADER",
        "X-Request-ID",
        _header_name,
        "an HTTP header name (letters, digits, '-')",
        "header that carries the request ID in and out",
    )
    # logs
    log_level: int = _setting(
        "LOG_LEVEL",
        logging.INFO,
        _log_level,
        "one of debug, info, warning, error, critical, fatal",
        "level of the root logger when the extension configures logging",
    )
    log_format: str = _setting(
        "LOG_FORMAT",
        "auto",
        _choice("json", "console", "auto"),
        "one of json, console, auto",
        "``auto`` is ``console`` when ``app.debug`` and ``json`` otherwise",
    )
    log_configure: bool = _setting(
        "LOG_CONFIGURE",
        True,
        _bool,
        "a boolean",
        "install the handler on the root logger; ``False`` leaves logging alone",
    )
    log_access: bool = _setting(
        "LOG_ACCESS",
        True,
        _bool,
        "a boolean",
        "one access-log line per request",
    )
    log_access_internal: bool = _setting(
        "LOG_ACCESS_INTERNAL",
        False,
        _bool,
        "a boolean",
        "also log requests to the extension's own endpoints (health, metrics)",
    )
    log_access_exclude_paths: tuple[str, ...] = _setting(
        "LOG_ACCESS_EXCLUDE_PATHS",
        (),
        _string_list,
        "a list of paths (or a comma-separated string)",
        "further paths left out of the access log",
    )
    log_user_agent_max: int = _setting(
        "LOG_USER_AGENT_MAX",
        256,
        _int(0),
        "an integer >= 0",
        "the access log truncates the user agent to this many characters",
    )
    log_redact_keys: tuple[str, ...] = _setting(
        "LOG_REDACT_KEYS",
        (),
        _string_list,
        "a list of key fragments (or a comma-separated string)",
        "fragments added to the built-in list of secret-looking keys",
    )
    log_file: str | None = _setting(
        "LOG_FILE",
        None,
        _optional(_text),
        "a file path",
        "also write JSON lines to this file, with rotation",
    )
    log_file_max_bytes: int = _setting(
        "LOG_FILE_MAX_BYTES",
        10 * 1024 * 1024,
        _int(1),
        "an integer >= 1",
        "size at which the log file rotates",
    )
    log_file_backup_count: int = _setting(
        "LOG_FILE_BACKUP_COUNT",
        5,
        _int(0),
        "an integer >= 0",
        "rotated log files kept",
    )
    # errors
    error_type_base: str | None = _setting(
        "ERROR_TYPE_BASE",
        None,
        _optional(_url("http", "https")),
        "an http(s) URL",
        "problem ``type`` is this URL plus the error code; default ``about:blank``",
    )
    # health
    health_enabled: bool = _setting(
        "HEALTH_ENABLED",
        True,
        _bool,
        "a boolean",
        "serve the health endpoints; ``obs.check_health()`` and the CLI work either way",
    )
    health_path: str = _setting(
        "HEALTH_PATH",
        "/health",
        _path,
        "an absolute URL path",
        "endpoint that runs every check",
    )
    health_live_path: str = _setting(
        "HEALTH_LIVE_PATH",
        "/health/live",
        _path,
        "an absolute URL path",
        "liveness endpoint: the process alone (checks in the ``live`` group, none by default)",
    )
    health_ready_path: str = _setting(
        "HEALTH_READY_PATH",
        "/health/ready",
        _path,
        "an absolute URL path",
        "readiness endpoint: the checks in the ``ready`` group (the dependencies)",
    )
    health_timeout: float = _setting(
        "HEALTH_TIMEOUT",
        2.0,
        _positive_float,
        "a number of seconds > 0",
        "default time limit of each check; a check over it is unhealthy with reason ``timeout``",
    )
    health_cache_ttl: float = _setting(
        "HEALTH_CACHE_TTL",
        2.0,
        _non_negative_float,
        "a number of seconds >= 0",
        "a check's result is reused for this long in each worker process; 0 disables the cache",
    )
    health_max_workers: int = _setting(
        "HEALTH_MAX_WORKERS",
        8,
        _int(1),
        "an integer >= 1",
        "threads (per worker process) that run checks concurrently",
    )
    health_show_details: str = _setting(
        "HEALTH_SHOW_DETAILS",
        "never",
        _choice("never", "always", "when_authorized"),
        "one of never, always, when_authorized",
        "when bodies carry reasons, errors, hosts and figures; ``when_authorized`` needs the token",
    )
    health_token: str | None = _setting(
        "HEALTH_TOKEN",
        None,
        _optional(_text),
        "a non-empty string",
        "token that unlocks details (``Authorization: Bearer <token>`` or the token header)",
    )
    health_token_header: str = _setting(
        "HEALTH_TOKEN_HEADER",
        "X-Health-Token",
        _header_name,
        "an HTTP header name (letters, digits, '-')",
        "header that may carry the details token instead of ``Authorization``",
    )
    health_http_status_healthy: int = _setting(
        "HEALTH_HTTP_STATUS_HEALTHY",
        200,
        _http_status,
        "an HTTP status from 200 to 599",
        "status code of a healthy report",
    )
    health_http_status_degraded: int = _setting(
        "HEALTH_HTTP_STATUS_DEGRADED",
        200,
        _http_status,
        "an HTTP status from 200 to 599",
        "status code of a degraded report",
    )
    health_http_status_unhealthy: int = _setting(
        "HEALTH_HTTP_STATUS_UNHEALTHY",
        503,
        _http_status,
        "an HTTP status from 200 to 599",
        "status code of an unhealthy report",
    )
    health_check_redis: bool = _setting(
        "HEALTH_CHECK_REDIS",
        True,
        _bool,
        "a boolean",
        "check Redis (``PING``, group ``ready``) when ``GATEWAY_OBS_REDIS_URL`` or a client is set",
    )
    health_check_postgres: bool = _setting(
        "HEALTH_CHECK_POSTGRES",
        True,
        _bool,
        "a boolean",
        "check PostgreSQL (``SELECT 1``, group ``ready``) when a URL or pool is set",
    )
    health_check_memory: bool = _setting(
        "HEALTH_CHECK_MEMORY",
        True,
        _bool,
        "a boolean",
        "check resident memory against the container limit (else total memory)",
    )
    health_memory_degraded_percent: float = _setting(
        "HEALTH_MEMORY_DEGRADED_PERCENT",
        90.0,
        _percent,
        "a percentage > 0 and <= 100",
        "memory check is degraded at this share of the limit",
    )
    health_memory_unhealthy_percent: float = _setting(
        "HEALTH_MEMORY_UNHEALTHY_PERCENT",
        95.0,
        _percent,
        "a percentage > 0 and <= 100",
        "memory check is unhealthy at this share of the limit",
    )
    health_check_disk: bool = _setting(
        "HEALTH_CHECK_DISK",
        True,
        _bool,
        "a boolean",
        "check free space on ``GATEWAY_OBS_HEALTH_DISK_PATH``",
    )
    health_disk_path: str = _setting(
        "HEALTH_DISK_PATH",
        "/",
        _text,
        "a filesystem path",
        "path whose filesystem the disk check measures",
    )
    health_disk_degraded_percent: float = _setting(
        "HEALTH_DISK_DEGRADED_PERCENT",
        90.0,
        _percent,
        "a percentage > 0 and <= 100",
        "disk check is degraded when this share of the space is used",
    )
    health_disk_unhealthy_percent: float = _setting(
        "HEALTH_DISK_UNHEALTHY_PERCENT",
        95.0,
        _percent,
        "a percentage > 0 and <= 100",
        "disk check is unhealthy when this share of the space is used",
    )


class Keys:
    """The ``app.config`` key of every setting, as constants for code and tests."""

    SERVICE_NAME = PREFIX + "SERVICE_NAME"
    SERVICE_VERSION = PREFIX + "SERVICE_VERSION"
    REDIS_URL = PREFIX + "REDIS_URL"
    DATABASE_URL = PREFIX + "DATABASE_URL"
    REQUEST_ID_HEADER = PREFIX + "REQUEST_ID_HEADER"
    LOG_LEVEL = PREFIX + "LOG_LEVEL"
    LOG_FORMAT = PREFIX + "LOG_FORMAT"
    LOG_CONFIGURE = PREFIX + "LOG_CONFIGURE"
    LOG_ACCESS = PREFIX + "LOG_ACCESS"
    LOG_ACCESS_INTERNAL = PREFIX + "LOG_ACCESS_INTERNAL"
    LOG_ACCESS_EXCLUDE_PATHS = PREFIX + "LOG_ACCESS_EXCLUDE_PATHS"
    LOG_USER_AGENT_MAX = PREFIX + "LOG_USER_AGENT_MAX"
    LOG_REDACT_KEYS = PREFIX + "LOG_REDACT_KEYS"
    LOG_FILE = PREFIX + "LOG_FILE"
    LOG_FILE_MAX_BYTES = PREFIX + "LOG_FILE_MAX_BYTES"
    LOG_FILE_BACKUP_COUNT = PREFIX + "LOG_FILE_BACKUP_COUNT"
    ERROR_TYPE_BASE = PREFIX + "ERROR_TYPE_BASE"
    # health
    HEALTH_ENABLED = PREFIX + "HEALTH_ENABLED"
    HEALTH_PATH = PREFIX + "HEALTH_PATH"
    HEALTH_LIVE_PATH = PREFIX + "HEALTH_LIVE_PATH"
    HEALTH_READY_PATH = PREFIX + "HEALTH_READY_PATH"
    HEALTH_TIMEOUT = PREFIX + "HEALTH_TIMEOUT"
    HEALTH_CACHE_TTL = PREFIX + "HEALTH_CACHE_TTL"
    HEALTH_MAX_WORKERS = PREFIX + "HEALTH_MAX_WORKERS"
    HEALTH_SHOW_DETAILS = PREFIX + "HEALTH_SHOW_DETAILS"
    HEALTH_TOKEN = PREFIX + "HEALTH_TOKEN"
    HEALTH_TOKEN_HEADER = PREFIX + "HEALTH_TOKEN_HEADER"
    HEALTH_HTTP_STATUS_HEALTHY = PREFIX + "HEALTH_HTTP_STATUS_HEALTHY"
    HEALTH_HTTP_STATUS_DEGRADED = PREFIX + "HEALTH_HTTP_STATUS_DEGRADED"
    HEALTH_HTTP_STATUS_UNHEALTHY = PREFIX + "HEALTH_HTTP_STATUS_UNHEALTHY"
    HEALTH_CHECK_REDIS = PREFIX + "HEALTH_CHECK_REDIS"
    HEALTH_CHECK_POSTGRES = PREFIX + "HEALTH_CHECK_POSTGRES"
    HEALTH_CHECK_MEMORY = PREFIX + "HEALTH_CHECK_MEMORY"
    HEALTH_MEMORY_DEGRADED_PERCENT = PREFIX + "HEALTH_MEMORY_DEGRADED_PERCENT"
    HEALTH_MEMORY_UNHEALTHY_PERCENT = PREFIX + "HEALTH_MEMORY_UNHEALTHY_PERCENT"
    HEALTH_CHECK_DISK = PREFIX + "HEALTH_CHECK_DISK"
    HEALTH_DISK_PATH = PREFIX + "HEALTH_DISK_PATH"
    HEALTH_DISK_DEGRADED_PERCENT = PREFIX + "HEALTH_DISK_DEGRADED_PERCENT"
    HEALTH_DISK_UNHEALTHY_PERCENT = PREFIX + "HEALTH_DISK_UNHEALTHY_PERCENT"


_FIELDS = {f.metadata["key"]: f for f in dataclasses.fields(Settings)}
_BY_NAME = {f.name: f for f in dataclasses.fields(Settings)}


def all_keys() -> dict[str, dataclasses.Field[Any]]:
    """Every ``app.config`` key with its field (for docs and tests)."""
    return dict(_FIELDS)


def load_settings(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> Settings:
    """Validate the extension's keys of ``config`` and return them as :class:`Settings`.

    ``overrides`` come from the constructor, by field name (``log_level``) or by
    key (``GATEWAY_OBS_LOG_LEVEL``); a value in ``config`` wins over them.

    :raises ConfigError: naming every bad key, what it got and what it accepts.
    :raises TypeError: for an override that names no setting.
    """
    normalised: dict[str, Any] = {}
    for name, value in overrides.items():
        field = _BY_NAME.get(name) or _FIELDS.get(name)
        if field is None:
            raise TypeError(f"GatewayObs() got an unknown setting {name!r}")
        normalised[field.metadata["key"]] = value

    values: dict[str, Any] = {}
    problems: list[tuple[str, Any, str]] = []
    for key, field in _FIELDS.items():
        if key in config:
            raw = config[key]
        elif key in normalised:
            raw = normalised[key]
        else:
            values[field.name] = field.default
            continue
        try:
            values[field.name] = field.metadata["parse"](raw)
        except _Invalid:
            problems.append((key, raw, field.metadata["accepts"]))
    for key in config:
        if key.startswith(PREFIX) and key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"a known key (did you mean {close[0]}?)" if close else "a known key"
            problems.append((key, config[key], hint))
    if problems:
        raise ConfigError(problems)
    return Settings(**values)
