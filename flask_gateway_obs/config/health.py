"""Keys of the health checks (``GATEWAY_OBS_HEALTH_*``) and of the drain on shutdown."""

from __future__ import annotations

import dataclasses
from typing import Any

from .metrics import MetricsKeys, MetricsSettings
from .parsers import (
    PATH_ACCEPTS,
    PREFIX,
    CrossRule,
    Parser,
    _bool,
    _choice,
    _header_name,
    _http_status,
    _int,
    _Invalid,
    _non_negative_float,
    _optional,
    _path,
    _percent,
    _positive_float,
    _setting,
    _text,
)


def _seconds_up_to(maximum: float) -> Parser:
    def parse(value: Any) -> float:
        seconds = _positive_float(value)
        if seconds > maximum:
            raise _Invalid
        return seconds

    return parse


@dataclasses.dataclass(frozen=True)
class HealthSettings:
    """Keys of the health checks (``GATEWAY_OBS_HEALTH_*``)."""

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
        PATH_ACCEPTS,
        "endpoint that runs every check",
    )
    health_live_path: str = _setting(
        "HEALTH_LIVE_PATH",
        "/health/live",
        _path,
        PATH_ACCEPTS,
        "liveness endpoint: the process alone (checks in the ``live`` group, none by default)",
    )
    health_ready_path: str = _setting(
        "HEALTH_READY_PATH",
        "/health/ready",
        _path,
        PATH_ACCEPTS,
        "readiness endpoint: the checks in the ``ready`` group (the dependencies)",
    )
    health_timeout: float = _setting(
        "HEALTH_TIMEOUT",
        2.0,
        _positive_float,
        "a number of seconds > 0 and <= 86400",
        "default time limit of each check; a check over it is unhealthy with reason ``timeout``",
    )
    health_cache_ttl: float = _setting(
        "HEALTH_CACHE_TTL",
        2.0,
        _non_negative_float,
        "a number of seconds from 0 to 86400",
        "a check's result is reused for this long in each worker process; 0 disables the cache",
    )
    health_max_workers: int = _setting(
        "HEALTH_MAX_WORKERS",
        8,
        _int(1, 256),
        "an integer from 1 to 256",
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

    # drain
    drain_flush_timeout: float = _setting(
        "DRAIN_FLUSH_TIMEOUT",
        5.0,
        _seconds_up_to(300.0),
        "a number of seconds > 0 and <= 300",
        "when the process is asked to stop, the drain hooks (Sentry's flush, span exporters) "
        "get this long in all",
    )


class HealthKeys:
    """The ``app.config`` keys of this group."""

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
    DRAIN_FLUSH_TIMEOUT = PREFIX + "DRAIN_FLUSH_TIMEOUT"


def _token_rule(settings: HealthSettings) -> list[tuple[str, Any, str]]:
    """Details shown ``when_authorized`` need a token to authorize with."""
    if settings.health_show_details == "when_authorized" and not settings.health_token:
        return [
            (HealthKeys.HEALTH_TOKEN, None, "a token when HEALTH_SHOW_DETAILS is when_authorized")
        ]
    return []


def _memory_rule(settings: HealthSettings) -> list[tuple[str, Any, str]]:
    """The memory check is degraded before it is unhealthy."""
    if settings.health_memory_degraded_percent > settings.health_memory_unhealthy_percent:
        return [
            (
                HealthKeys.HEALTH_MEMORY_DEGRADED_PERCENT,
                settings.health_memory_degraded_percent,
                "a percentage not above GATEWAY_OBS_HEALTH_MEMORY_UNHEALTHY_PERCENT",
            )
        ]
    return []


def _disk_rule(settings: HealthSettings) -> list[tuple[str, Any, str]]:
    """The disk check is degraded before it is unhealthy."""
    if settings.health_disk_degraded_percent > settings.health_disk_unhealthy_percent:
        return [
            (
                HealthKeys.HEALTH_DISK_DEGRADED_PERCENT,
                settings.health_disk_degraded_percent,
                "a percentage not above GATEWAY_OBS_HEALTH_DISK_UNHEALTHY_PERCENT",
            )
        ]
    return []


def _endpoint_path_rule(settings: HealthSettings) -> list[tuple[str, Any, str]]:
    """Every endpoint the extension serves on a path of its own: health, live, ready and
    metrics, those that are on (Settings composes both groups)."""
    paths: dict[str, str] = {}
    if settings.health_enabled:
        paths[HealthKeys.HEALTH_PATH] = settings.health_path
        paths[HealthKeys.HEALTH_LIVE_PATH] = settings.health_live_path
        paths[HealthKeys.HEALTH_READY_PATH] = settings.health_ready_path
    if (
        isinstance(settings, MetricsSettings)
        and settings.metrics_enabled
        and settings.metrics_endpoint
    ):
        paths[MetricsKeys.METRICS_PATH] = settings.metrics_path
    problems: list[tuple[str, Any, str]] = []
    owner: dict[str, str] = {}
    for key, path in paths.items():
        if path in owner:
            problems.append((key, path, f"a path distinct from {owner[path]} (the same path)"))
        else:
            owner[path] = key
    return problems


#: Rules between health keys (a token required by another key, thresholds in order) and
#: the distinct paths of the extension's endpoints; each is skipped by ``load_settings``
#: when a key it reads failed to parse.
CROSS_RULES: tuple[CrossRule, ...] = (_token_rule, _memory_rule, _disk_rule, _endpoint_path_rule)
