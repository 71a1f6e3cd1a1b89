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
import ipaddress
import json
import logging
import math
import os
import re
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
        lines = [
            f"  {key}: got {_shown(key, got)}; accepts {accepts}" for key, got, accepts in problems
        ]
        super().__init__("invalid flask-gateway-obs configuration:\n" + "\n".join(lines))


_SECRET_KEY_PARTS = ("TOKEN", "DSN", "PASSWORD", "SECRET")


def _shown(key: str, value: Any) -> str:
    """How a bad value appears in the error: secrets never, URL passwords masked."""
    if any(part in key.upper() for part in _SECRET_KEY_PARTS):
        return "'***'"
    from .logs import mask_url_credentials

    return mask_url_credentials(repr(value))


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
    # from_prefixed_env() hands "2024" over as 2024: take numbers back as text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
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


def _writable_file(value: Any) -> str:
    # Checked now: file logging otherwise fails silently on every record.
    path = _text(value)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise _Invalid
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise _Invalid
    return path


def _header_name(value: Any) -> str:
    text = _text(value)
    if not text.isascii() or not all(c.isalnum() or c == "-" for c in text):
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


_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*").fullmatch


def _metric_name(value: Any) -> str:
    text = _text(value)
    if _METRIC_NAME(text) is None:
        raise _Invalid
    return text


def _buckets(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else text.split(",")
        except ValueError:
            raise _Invalid from None
    if not isinstance(value, (list, tuple)) or not value:
        raise _Invalid
    bounds = tuple(sorted(_positive_float(v) for v in value))
    if len(set(bounds)) != len(bounds):
        raise _Invalid
    return bounds


def _networks(value: Any) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.ip_network(v, strict=False)) for v in _string_list(value))
    except ValueError:
        raise _Invalid from None


def _fraction(value: Any) -> float:
    number = _number(value)
    if not 0 <= number <= 1:
        raise _Invalid
    return number


def _callable_or_import(value: Any) -> Any:
    """A callable, or ``"package.module:name"`` naming one (imported at ``init_app``)."""
    if callable(value):
        return value
    text = _text(value)
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise _Invalid
    try:
        import importlib

        found: Any = importlib.import_module(module)
        for part in attr.split("."):
            found = getattr(found, part)
    except Exception:
        raise _Invalid from None
    if not callable(found):
        raise _Invalid
    return found


#: ``sentry_sdk.init`` options the Sentry adapter sets itself.
_SENTRY_MANAGED = frozenset(
    {
        "dsn",
        "environment",
        "release",
        "sample_rate",
        "traces_sample_rate",
        "traces_sampler",
        "send_default_pii",
        "data_collection",
        "include_local_variables",
        "max_request_body_size",
        "transport_queue_size",
        "shutdown_timeout",
        "before_send",
        "before_send_transaction",
        "before_breadcrumb",
        "default_integrations",
        "auto_enabling_integrations",
        "event_scrubber",
        "enable_tracing",
    }
)


#: What ``GATEWAY_OBS_SENTRY_DSN`` becomes when set to switch Sentry off explicitly.
SENTRY_OFF = "off"
_SENTRY_OFF_WORDS = frozenset({"", "off", "false", "none", "disabled"})


def _sentry_dsn(value: Any) -> str | None:
    # None: unset (the SENTRY_DSN environment variable applies); "" / "off" / False: off,
    # whatever the environment says (sentry_sdk.init(dsn="") means the same).
    if value is None:
        return None
    if value is False or (isinstance(value, str) and value.strip().lower() in _SENTRY_OFF_WORDS):
        return SENTRY_OFF
    return str(_url("http", "https")(value))


def _sentry_options(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _Invalid from None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _Invalid
    try:
        from sentry_sdk.consts import DEFAULT_OPTIONS
    except ImportError:  # pragma: no cover - sentry-sdk is a dependency
        raise _Invalid from None
    if any(k in _SENTRY_MANAGED or k not in DEFAULT_OPTIONS for k in value):
        raise _Invalid
    return dict(value)


# resilience: per-name option dicts (GATEWAY_OBS_BREAKERS, GATEWAY_OBS_RETRY_POLICIES)


class _Problems(_Invalid):
    """Raised by a parser of a nested value; names each bad part on its own."""

    def __init__(self, problems: list[tuple[str, Any, str]]) -> None:
        super().__init__()
        self.problems = problems


def _at_least(minimum: float) -> Parser:
    def parse(value: Any) -> float:
        number = _number(value)
        if number < minimum:
            raise _Invalid
        return number

    return parse


#: option -> (parser, accepts) of one breaker in ``GATEWAY_OBS_BREAKERS`` and of
#: ``obs.circuit_breaker(name, **options)``.
BREAKER_OPTIONS: dict[str, tuple[Parser, str]] = {
    "fail_max": (_int(1), "an integer >= 1"),
    "reset_timeout": (_positive_float, "a number of seconds > 0"),
    "success_threshold": (_int(1), "an integer >= 1"),
    "half_open_max_calls": (_int(1), "an integer >= 1"),
    "timeout": (_optional(_positive_float), "a number of seconds > 0, or null"),
    "storage": (_choice("memory", "redis"), "one of memory, redis"),
}
#: option -> (parser, accepts) of one policy in ``GATEWAY_OBS_RETRY_POLICIES`` and of
#: ``obs.retry(name, **options)``.
RETRY_OPTIONS: dict[str, tuple[Parser, str]] = {
    "max_attempts": (_int(1), "an integer >= 1"),
    "base_delay": (_non_negative_float, "a number of seconds >= 0"),
    "multiplier": (_at_least(1.0), "a number >= 1"),
    "max_delay": (_non_negative_float, "a number of seconds >= 0"),
    "jitter": (_choice("full", "equal", "none"), "one of full, equal, none"),
    "deadline": (_optional(_positive_float), "a number of seconds > 0, or null"),
    "respect_retry_after": (_bool, "a boolean"),
}


def _parse_entry(
    where: str,
    entry: Mapping[Any, Any],
    options: Mapping[str, tuple[Parser, str]],
    problems: list[tuple[str, Any, str]],
) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for option, raw in entry.items():
        spec = options.get(option) if isinstance(option, str) else None
        if spec is None:
            close = difflib.get_close_matches(str(option), list(options), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append((f"{where}.{option}", raw, f"one of {', '.join(options)}{hint}"))
            continue
        parse, accepts = spec
        try:
            parsed[option] = parse(raw)
        except _Invalid:
            problems.append((f"{where}.{option}", raw, accepts))
    return parsed


def parse_options(
    where: str, entry: Mapping[str, Any], options: Mapping[str, tuple[Parser, str]]
) -> dict[str, Any]:
    """Validate keyword options given in code (e.g. ``obs.circuit_breaker("x", fail_max=3)``).

    :raises ConfigError: naming every unknown or bad option.
    """
    problems: list[tuple[str, Any, str]] = []
    parsed = _parse_entry(where, entry, options, problems)
    if problems:
        raise ConfigError(problems)
    return parsed


def _named_options(key: str, options: Mapping[str, tuple[Parser, str]]) -> Parser:
    """``{name: {option: value}}`` (or its JSON), each option checked by its own parser."""

    def parse(value: Any) -> dict[str, dict[str, Any]] | None:
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                value = json.loads(value)
            except ValueError:
                raise _Invalid from None
        if not isinstance(value, Mapping):
            raise _Invalid
        result: dict[str, dict[str, Any]] = {}
        problems: list[tuple[str, Any, str]] = []
        for name, entry in value.items():
            where = f"{PREFIX}{key}[{name!r}]"
            if not isinstance(name, str) or not name.strip():
                problems.append((where, name, "a non-empty name"))
            elif not isinstance(entry, Mapping):
                problems.append((where, entry, f"a dict with some of {', '.join(options)}"))
            else:
                result[name] = _parse_entry(where, entry, options, problems)
        if problems:
            raise _Problems(problems)
        return result

    return parse


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
        _optional(_writable_file),
        "a path to a writable file in an existing directory",
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
    # metrics
    metrics_enabled: bool = _setting(
        "METRICS_ENABLED",
        True,
        _bool,
        "a boolean",
        "collect Prometheus metrics; ``False`` turns every metric and the endpoint off",
    )
    metrics_endpoint: bool = _setting(
        "METRICS_ENDPOINT",
        True,
        _bool,
        "a boolean",
        "serve the exposition at ``GATEWAY_OBS_METRICS_PATH``",
    )
    metrics_path: str = _setting(
        "METRICS_PATH",
        "/metrics",
        _path,
        "an absolute URL path",
        "path of the exposition endpoint",
    )
    metrics_registry: str = _setting(
        "METRICS_REGISTRY",
        "app",
        _choice("app", "global"),
        "one of app, global",
        "``app``: a registry of the app's own; ``global``: ``prometheus_client.REGISTRY``",
    )
    metrics_namespace: str | None = _setting(
        "METRICS_NAMESPACE",
        None,
        _optional(_metric_name),
        "a metric name prefix: ASCII letters, digits and underscores, not starting with a digit",
        "prefix of every metric name, joined with ``_``",
    )
    metrics_buckets: tuple[float, ...] = _setting(
        "METRICS_BUCKETS",
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        _buckets,
        "a list of distinct numbers > 0 (or a comma-separated string)",
        "upper bounds in seconds of ``http_request_duration_seconds`` (``+Inf`` is added)",
    )
    metrics_dependency_buckets: tuple[float, ...] = _setting(
        "METRICS_DEPENDENCY_BUCKETS",
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        _buckets,
        "a list of distinct numbers > 0 (or a comma-separated string)",
        "upper bounds in seconds of ``dependency_latency_seconds`` (``+Inf`` is added)",
    )
    metrics_count_internal: bool = _setting(
        "METRICS_COUNT_INTERNAL",
        False,
        _bool,
        "a boolean",
        "also count requests to the health endpoints; ``/metrics`` itself is never counted",
    )
    metrics_token: str | None = _setting(
        "METRICS_TOKEN",
        None,
        _optional(_text),
        "a non-empty string",
        "when set, ``/metrics`` answers 401 unless ``Authorization: Bearer <token>`` matches",
    )
    metrics_allowed_networks: tuple[str, ...] = _setting(
        "METRICS_ALLOWED_NETWORKS",
        (),
        _networks,
        "a list of IP addresses or CIDRs (or a comma-separated string)",
        "when set, ``/metrics`` answers 403 to a client address outside these networks",
    )
    metrics_cache_seconds: float = _setting(
        "METRICS_CACHE_SECONDS",
        0.0,
        _non_negative_float,
        "a number of seconds >= 0",
        "reuse a rendered exposition for this long (per worker); 0 renders every scrape",
    )

    # sentry
    sentry_dsn: str | None = _setting(
        "SENTRY_DSN",
        None,
        _sentry_dsn,
        "a Sentry DSN (https://key@host/project-id), or '' / 'off' / False to switch Sentry off",
        "where errors are reported; unset: the ``SENTRY_DSN`` environment variable, "
        "and without either Sentry stays off; ``''`` or ``'off'`` keeps it off even when "
        "``SENTRY_DSN`` is set",
    )
    sentry_environment: str | None = _setting(
        "SENTRY_ENVIRONMENT",
        None,
        _optional(_text),
        "a non-empty string",
        "unset: ``SENTRY_ENVIRONMENT``, else ``development`` when ``app.debug`` or "
        "``app.testing``, else ``production``",
    )
    sentry_release: str | None = _setting(
        "SENTRY_RELEASE",
        None,
        _optional(_text),
        "a non-empty string",
        "unset: ``SENTRY_RELEASE``, else ``GATEWAY_OBS_SERVICE_VERSION``",
    )
    sentry_sample_rate: float = _setting(
        "SENTRY_SAMPLE_RATE",
        1.0,
        _fraction,
        "a number from 0 to 1",
        "share of error events sent",
    )
    sentry_traces_sample_rate: float = _setting(
        "SENTRY_TRACES_SAMPLE_RATE",
        0.0,
        _fraction,
        "a number from 0 to 1",
        "share of requests traced; 0 turns tracing (and sentry-sdk's Flask integration) off",
    )
    sentry_send_default_pii: bool = _setting(
        "SENTRY_SEND_DEFAULT_PII",
        False,
        _bool,
        "a boolean",
        "send the user's e-mail, name and IP address and IP headers; secrets are scrubbed "
        "either way",
    )
    sentry_include_locals: bool = _setting(
        "SENTRY_INCLUDE_LOCALS",
        True,
        _bool,
        "a boolean",
        "send the local variables of stack frames (secret-looking names scrubbed)",
    )
    sentry_max_request_body: str = _setting(
        "SENTRY_MAX_REQUEST_BODY",
        "medium",
        _choice("never", "small", "medium", "always"),
        "one of never, small, medium, always",
        "JSON and form bodies attached to events: up to 1 kB (small), 10 kB (medium)",
    )
    sentry_report_4xx: bool = _setting(
        "SENTRY_REPORT_4XX",
        False,
        _bool,
        "a boolean",
        "also report operational 4xx errors (``AppError`` and werkzeug's), as warnings",
    )
    sentry_report_operational_5xx: bool = _setting(
        "SENTRY_REPORT_OPERATIONAL_5XX",
        True,
        _bool,
        "a boolean",
        "report operational 5xx errors such as 503 from an open breaker; bugs always are",
    )
    sentry_event_id_in_body: bool = _setting(
        "SENTRY_EVENT_ID_IN_BODY",
        True,
        _bool,
        "a boolean",
        "add ``sentry_event_id`` to the problem+json body of a reported error",
    )
    sentry_denylist: tuple[str, ...] = _setting(
        "SENTRY_DENYLIST",
        (),
        _string_list,
        "a list of key fragments (or a comma-separated string)",
        "fragments added to the secret-looking names scrubbed from events "
        "(with ``GATEWAY_OBS_LOG_REDACT_KEYS``)",
    )
    sentry_queue_size: int = _setting(
        "SENTRY_QUEUE_SIZE",
        100,
        _int(1),
        "an integer >= 1",
        "events waiting to be sent; beyond it new events are dropped, never waited for",
    )
    sentry_shutdown_timeout: float = _setting(
        "SENTRY_SHUTDOWN_TIMEOUT",
        2.0,
        _non_negative_float,
        "a number of seconds >= 0",
        "longest wait for pending events at exit",
    )
    sentry_before_send: Callable[[Any, Any], Any] | None = _setting(  # noqa: RUF009 - immutable
        "SENTRY_BEFORE_SEND",
        None,
        _optional(_callable_or_import),
        "a callable or a 'package.module:name' string",
        "``(event, hint) -> event | None`` run on the scrubbed event; if it raises, "
        "the event is dropped",
    )
    sentry_options: Mapping[str, Any] | None = _setting(
        "SENTRY_OPTIONS",
        None,
        _optional(_sentry_options),
        "a dict (or JSON object) of further sentry_sdk.init options, not those set here",
        "passed to ``sentry_sdk.init`` (``integrations`` are added to ours)",
    )
    sentry_repeat_interval: float = _setting(
        "SENTRY_REPEAT_INTERVAL",
        60.0,
        _non_negative_float,
        "a number of seconds >= 0",
        "an operational 5xx (same route, code and status) is reported at most once per this "
        "many seconds; the repeats in between are counted in the next report; 0 reports each",
    )
    sentry_traces_follow_parent: bool = _setting(
        "SENTRY_TRACES_FOLLOW_PARENT",
        False,
        _bool,
        "a boolean",
        "follow the sampling decision of an incoming ``sentry-trace`` header; off, a caller "
        "cannot force its requests to be traced",
    )
    # resilience
    breaker_fail_max: int = _setting(
        "BREAKER_FAIL_MAX",
        5,
        _int(1),
        "an integer >= 1",
        "consecutive failures that open a circuit breaker",
    )
    breaker_reset_timeout: float = _setting(
        "BREAKER_RESET_TIMEOUT",
        30.0,
        _positive_float,
        "a number of seconds > 0",
        "how long an open breaker fails fast before it lets trial calls through (half-open)",
    )
    breaker_success_threshold: int = _setting(
        "BREAKER_SUCCESS_THRESHOLD",
        1,
        _int(1),
        "an integer >= 1",
        "successful trial calls that close a half-open breaker",
    )
    breaker_half_open_max_calls: int = _setting(
        "BREAKER_HALF_OPEN_MAX_CALLS",
        1,
        _int(1),
        "an integer >= 1",
        "trial calls a half-open breaker lets through at once (per process); the others fail fast",
    )
    breaker_timeout: float | None = _setting(
        "BREAKER_TIMEOUT",
        None,
        _optional(_positive_float),
        "a number of seconds > 0",
        "a call slower than this fails with 504 and counts as a failure; it runs in a worker "
        'thread and is not stopped (README: "Timeouts, honestly"); default: no timeout',
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
        _optional(_url("redis", "rediss", "unix")),
        "a redis://, rediss:// or unix:// URL",
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
        "a number of seconds > 0",
        "connect and read timeout of breaker-state calls to Redis",
    )
    breaker_redis_retry_interval: float = _setting(
        "BREAKER_REDIS_RETRY_INTERVAL",
        5.0,
        _positive_float,
        "a number of seconds > 0",
        "after a Redis error breakers use local state and try Redis again after this long",
    )
    breakers: Mapping[str, Mapping[str, Any]] | None = _setting(
        "BREAKERS",
        None,
        _named_options("BREAKERS", BREAKER_OPTIONS),
        "a dict (or JSON object) of breaker name -> {option: value}",
        "per-breaker overrides of ``fail_max``, ``reset_timeout``, ``success_threshold``, "
        "``half_open_max_calls``, ``timeout``, ``storage``",
    )
    retry_max_attempts: int = _setting(
        "RETRY_MAX_ATTEMPTS",
        3,
        _int(1),
        "an integer >= 1",
        "attempts in all, the first one included (1: no retry)",
    )
    retry_base_delay: float = _setting(
        "RETRY_BASE_DELAY",
        0.1,
        _non_negative_float,
        "a number of seconds >= 0",
        "backoff before the first retry, multiplied by ``GATEWAY_OBS_RETRY_MULTIPLIER`` "
        "for each further one",
    )
    retry_multiplier: float = _setting(
        "RETRY_MULTIPLIER",
        2.0,
        _at_least(1.0),
        "a number >= 1",
        "growth factor of the exponential backoff",
    )
    retry_max_delay: float = _setting(
        "RETRY_MAX_DELAY",
        2.0,
        _non_negative_float,
        "a number of seconds >= 0",
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
        "a number of seconds > 0, or empty for none",
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
        "a number of seconds > 0",
        "connect and read timeout of a Redis limiter storage, unless "
        "``RATELIMIT_STORAGE_OPTIONS`` sets ``socket_timeout`` / ``socket_connect_timeout``",
    )
    ratelimit_probe_interval: float = _setting(
        "RATELIMIT_PROBE_INTERVAL",
        30.0,
        _positive_float,
        "a number of seconds > 0",
        "longest wait between two checks of a limiter storage that is down (the wait starts at "
        "0.5 s and doubles)",
    )
    trusted_proxies: int = _setting(
        "TRUSTED_PROXIES",
        0,
        _int(0),
        "an integer >= 0",
        "proxies in front of the app that append to ``X-Forwarded-For``; the limiter's client is "
        "the Nth address from the right, as with werkzeug's ``ProxyFix`` (0: the socket address)",
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
    # metrics
    METRICS_ENABLED = PREFIX + "METRICS_ENABLED"
    METRICS_ENDPOINT = PREFIX + "METRICS_ENDPOINT"
    METRICS_PATH = PREFIX + "METRICS_PATH"
    METRICS_REGISTRY = PREFIX + "METRICS_REGISTRY"
    METRICS_NAMESPACE = PREFIX + "METRICS_NAMESPACE"
    METRICS_BUCKETS = PREFIX + "METRICS_BUCKETS"
    METRICS_DEPENDENCY_BUCKETS = PREFIX + "METRICS_DEPENDENCY_BUCKETS"
    METRICS_COUNT_INTERNAL = PREFIX + "METRICS_COUNT_INTERNAL"
    METRICS_TOKEN = PREFIX + "METRICS_TOKEN"
    METRICS_ALLOWED_NETWORKS = PREFIX + "METRICS_ALLOWED_NETWORKS"
    METRICS_CACHE_SECONDS = PREFIX + "METRICS_CACHE_SECONDS"

    # sentry
    SENTRY_DSN = PREFIX + "SENTRY_DSN"
    SENTRY_ENVIRONMENT = PREFIX + "SENTRY_ENVIRONMENT"
    SENTRY_RELEASE = PREFIX + "SENTRY_RELEASE"
    SENTRY_SAMPLE_RATE = PREFIX + "SENTRY_SAMPLE_RATE"
    SENTRY_TRACES_SAMPLE_RATE = PREFIX + "SENTRY_TRACES_SAMPLE_RATE"
    SENTRY_SEND_DEFAULT_PII = PREFIX + "SENTRY_SEND_DEFAULT_PII"
    SENTRY_INCLUDE_LOCALS = PREFIX + "SENTRY_INCLUDE_LOCALS"
    SENTRY_MAX_REQUEST_BODY = PREFIX + "SENTRY_MAX_REQUEST_BODY"
    SENTRY_REPORT_4XX = PREFIX + "SENTRY_REPORT_4XX"
    SENTRY_REPORT_OPERATIONAL_5XX = PREFIX + "SENTRY_REPORT_OPERATIONAL_5XX"
    SENTRY_EVENT_ID_IN_BODY = PREFIX + "SENTRY_EVENT_ID_IN_BODY"
    SENTRY_DENYLIST = PREFIX + "SENTRY_DENYLIST"
    SENTRY_QUEUE_SIZE = PREFIX + "SENTRY_QUEUE_SIZE"
    SENTRY_SHUTDOWN_TIMEOUT = PREFIX + "SENTRY_SHUTDOWN_TIMEOUT"
    SENTRY_BEFORE_SEND = PREFIX + "SENTRY_BEFORE_SEND"
    SENTRY_OPTIONS = PREFIX + "SENTRY_OPTIONS"
    SENTRY_REPEAT_INTERVAL = PREFIX + "SENTRY_REPEAT_INTERVAL"
    SENTRY_TRACES_FOLLOW_PARENT = PREFIX + "SENTRY_TRACES_FOLLOW_PARENT"
    # resilience
    BREAKER_FAIL_MAX = PREFIX + "BREAKER_FAIL_MAX"
    BREAKER_RESET_TIMEOUT = PREFIX + "BREAKER_RESET_TIMEOUT"
    BREAKER_SUCCESS_THRESHOLD = PREFIX + "BREAKER_SUCCESS_THRESHOLD"
    BREAKER_HALF_OPEN_MAX_CALLS = PREFIX + "BREAKER_HALF_OPEN_MAX_CALLS"
    BREAKER_TIMEOUT = PREFIX + "BREAKER_TIMEOUT"
    BREAKER_STORAGE = PREFIX + "BREAKER_STORAGE"
    BREAKER_REDIS_URL = PREFIX + "BREAKER_REDIS_URL"
    BREAKER_REDIS_NAMESPACE = PREFIX + "BREAKER_REDIS_NAMESPACE"
    BREAKER_REDIS_TIMEOUT = PREFIX + "BREAKER_REDIS_TIMEOUT"
    BREAKER_REDIS_RETRY_INTERVAL = PREFIX + "BREAKER_REDIS_RETRY_INTERVAL"
    BREAKERS = PREFIX + "BREAKERS"
    RETRY_MAX_ATTEMPTS = PREFIX + "RETRY_MAX_ATTEMPTS"
    RETRY_BASE_DELAY = PREFIX + "RETRY_BASE_DELAY"
    RETRY_MULTIPLIER = PREFIX + "RETRY_MULTIPLIER"
    RETRY_MAX_DELAY = PREFIX + "RETRY_MAX_DELAY"
    RETRY_JITTER = PREFIX + "RETRY_JITTER"
    RETRY_DEADLINE = PREFIX + "RETRY_DEADLINE"
    RETRY_RESPECT_RETRY_AFTER = PREFIX + "RETRY_RESPECT_RETRY_AFTER"
    RETRY_POLICIES = PREFIX + "RETRY_POLICIES"
    # ratelimit
    RATELIMIT_ENABLED = PREFIX + "RATELIMIT_ENABLED"
    RATELIMIT_FAIL_CLOSED = PREFIX + "RATELIMIT_FAIL_CLOSED"
    RATELIMIT_KEY_FUNC = PREFIX + "RATELIMIT_KEY_FUNC"
    RATELIMIT_STORAGE_TIMEOUT = PREFIX + "RATELIMIT_STORAGE_TIMEOUT"
    RATELIMIT_PROBE_INTERVAL = PREFIX + "RATELIMIT_PROBE_INTERVAL"
    TRUSTED_PROXIES = PREFIX + "TRUSTED_PROXIES"


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
        except _Problems as exc:  # a nested value names each bad part
            problems.extend(exc.problems)
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
