"""Structured logs: JSON and console formatters, redaction, the access line, get_logger.

The request context (request ID, trace IDs, bound fields) lives in
:mod:`flask_gateway_obs.core.context`; every formatter here reads it, so the threads
of a threaded server never see each other's request ID, and ``async`` views (run by
Flask through ``asgiref``, which copies the context) see their own.
"""

from __future__ import annotations

from ..core.context import RequestContext, current_request, get_request_id, get_trace_id
from .access import AccessLog
from .formatters import AccessEntry, AccessFields, ConsoleFormatter, JsonFormatter
from .handlers import (
    RequestContextFilter,
    ServerAccessLineFilter,
    configure_logging,
    quiet_server_access_lines,
)
from .loggers import ACCESS_LOGGER_NAME, LOGGER_NAME, BoundLogger, emit, get_logger
from .redaction import (
    REDACTED,
    REPORT_FRAGMENTS,
    SECRET_FRAGMENTS,
    Redactor,
    TextMasker,
    escape_control,
    mask_url_credentials,
)

__all__ = [
    "ACCESS_LOGGER_NAME",
    "LOGGER_NAME",
    "REDACTED",
    "REPORT_FRAGMENTS",
    "SECRET_FRAGMENTS",
    "AccessEntry",
    "AccessFields",
    "AccessLog",
    "BoundLogger",
    "ConsoleFormatter",
    "JsonFormatter",
    "Redactor",
    "RequestContext",
    "RequestContextFilter",
    "ServerAccessLineFilter",
    "TextMasker",
    "configure_logging",
    "current_request",
    "emit",
    "escape_control",
    "get_logger",
    "get_request_id",
    "get_trace_id",
    "mask_url_credentials",
    "quiet_server_access_lines",
]
