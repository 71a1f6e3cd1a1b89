"""Shared keys: service, Redis and database URLs, request ID, logs, errors."""

from __future__ import annotations

import dataclasses
import logging

from .parsers import (
    PREFIX,
    _bool,
    _choice,
    _header_name,
    _int,
    _log_level,
    _optional,
    _setting,
    _string_list,
    _text,
    _url,
    _writable_file,
)
from .redis import ACCEPTS as REDIS_ACCEPTS
from .redis import redis_url


@dataclasses.dataclass(frozen=True)
class BaseSettings:
    """Shared keys: service, Redis and database URLs, request ID, logs, errors."""

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
        _optional(redis_url),
        REDIS_ACCEPTS,
        "Redis for the health check, default limiter storage and breaker state: one server, "
        "Sentinel or Cluster",
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
    log_schema: str = _setting(
        "LOG_SCHEMA",
        "default",
        _choice("default", "ecs", "otel"),
        "one of default, ecs, otel",
        "field layout of JSON lines: ours, Elastic Common Schema (``ecs-logging``'s), or the "
        "OpenTelemetry log data model",
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
        _int(0, 65_536),
        "an integer from 0 to 65536",
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
        _int(1, 2**40),
        "an integer from 1 to 1099511627776",
        "size at which the log file rotates",
    )
    log_file_backup_count: int = _setting(
        "LOG_FILE_BACKUP_COUNT",
        5,
        _int(0, 1_000),
        "an integer from 0 to 1000",
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


class BaseKeys:
    """The ``app.config`` keys of this group."""

    SERVICE_NAME = PREFIX + "SERVICE_NAME"
    SERVICE_VERSION = PREFIX + "SERVICE_VERSION"
    REDIS_URL = PREFIX + "REDIS_URL"
    DATABASE_URL = PREFIX + "DATABASE_URL"
    REQUEST_ID_HEADER = PREFIX + "REQUEST_ID_HEADER"
    LOG_LEVEL = PREFIX + "LOG_LEVEL"
    LOG_FORMAT = PREFIX + "LOG_FORMAT"
    LOG_SCHEMA = PREFIX + "LOG_SCHEMA"
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
