"""The JSON and console formatters: one record, one line, secrets redacted."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ..core.context import (
    RequestContext,
    current_request,
    get_request_id,
    span_ids_outside_a_request,
)
from .loggers import _RESERVED, ACCESS_LOGGER_NAME
from .redaction import (
    REDACTED,
    Redactor,
    TextMasker,
    _safe_repr,
    escape_control,
    mask_url_credentials,
)
from .secrets import sweep_request_secrets

_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def _level_name(levelno: int) -> str:
    return _LEVEL_NAMES.get(levelno) or logging.getLevelName(levelno).lower()


def _message(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception:  # bad %-args: keep both parts rather than lose the record
        message = f"{_safe_repr(record.msg)} {_safe_repr(record.args)}"
    if "\x1b[" in message:  # terminal colours (werkzeug's banner) mean nothing in a log line
        message = _ANSI_SGR.sub("", message)
    return mask_url_credentials(message)


_ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")


#: ``.000`` to ``.999``: the fraction of a millisecond count, without a format spec.
_THOUSANDTHS = tuple(f".{n:03d}" for n in range(1000))


class _Timestamps:
    """ISO 8601 UTC timestamps with milliseconds, the seconds part cached."""

    __slots__ = ("_cached", "_last")

    def __init__(self) -> None:
        # One tuple, replaced whole, so that threads never see a second and a text
        # that don't belong together.
        self._cached = (-1, "")
        #: The last millisecond asked for and its text (requests come many per ms).
        self._last = (-1, "")

    def format(self, created: float) -> str:
        millis = int(created * 1000)
        last = self._last
        if last[0] == millis:
            return last[1]
        second, fraction = divmod(millis, 1000)
        cached = self._cached
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._cached = cached
        text = f"{cached[1]}{_THOUSANDTHS[fraction]}Z"
        self._last = (millis, text)
        return text


_esc = json.encoder.encode_basestring_ascii
#: Fields of every record and of the access line, which a bound field never replaces.
_ACCESS_FIELDS = frozenset(
    {
        "timestamp",
        "level",
        "logger",
        "message",
        "service",
        "request_id",
        "trace_id",
        "span_id",
        "method",
        "path",
        "route",
        "status",
        "duration_ms",
        "remote_addr",
        "user_agent",
        "response_size",
    }
)


def _opt(value: str | None) -> str:
    return "null" if value is None else _esc(value)


#: Built once: ``json.dumps(..., default=...)`` would build an encoder per call.
#: NaN and Infinity are refused (they are not JSON); the caller falls back to
#: :meth:`Redactor.redact`, which writes them as strings.
_ENCODER = json.JSONEncoder(default=_safe_repr, allow_nan=False)


class AccessFields(Protocol):
    """What an access line is made of (``duration`` in seconds). The WSGI step passes
    the request's own context, which has these fields, so no object is built per
    request; :class:`AccessEntry` is the stand-alone form."""

    method: str
    path: str
    route: str | None
    status: int
    duration: float
    remote_addr: str | None
    user_agent: str | None
    response_size: int | None


class AccessEntry:
    """The fields of one access line (``duration`` in seconds)."""

    __slots__ = (
        "duration",
        "method",
        "path",
        "remote_addr",
        "response_size",
        "route",
        "status",
        "user_agent",
    )

    def __init__(
        self,
        method: str,
        path: str,
        route: str | None,
        status: int,
        duration: float,
        remote_addr: str | None,
        user_agent: str | None,
        response_size: int | None,
    ) -> None:
        self.method = method
        self.path = path
        self.route = route
        self.status = status
        self.duration = duration
        self.remote_addr = remote_addr
        self.user_agent = user_agent
        self.response_size = response_size


def access_message(entry: AccessFields) -> str:
    """``GET /items/42 200``: the access line's message."""
    return f"{entry.method} {entry.path} {entry.status}"


def access_fields(entry: AccessFields) -> dict[str, Any]:
    """The fields as ``extra`` for an ordinary log record (``duration_ms`` to the µs)."""
    return {
        "method": entry.method,
        "path": entry.path,
        "route": entry.route,
        "status": entry.status,
        "duration_ms": round(entry.duration * 1000.0, 3),
        "remote_addr": entry.remote_addr,
        "user_agent": entry.user_agent,
        "response_size": entry.response_size,
    }


#: The fields of an error line the request's secret values are swept from.
_SWEPT_FIELDS = ("message", "exc_message", "stack", "stack_info")
#: How many texts :class:`_JsonTexts` keeps before it starts again.
_MEMO_SIZE = 512
#: Access-line templates kept per formatter (method, status, service, route).
_MAX_TEMPLATES = 4096


class _JsonTexts(dict[str, str]):
    """JSON texts of strings that repeat from request to request (client addresses,
    user agents), kept up to :data:`_MEMO_SIZE`; a miss is escaped and remembered."""

    def __missing__(self, value: str) -> str:
        text = _esc(value)
        if len(self) >= _MEMO_SIZE:
            self.clear()
        self[value] = text
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message, service, request_id, ...

    :param service: the ``service`` field outside a request (inside one, the
        request's app decides).
    :param redact_keys: key fragments added to :data:`SECRET_FRAGMENTS`.
    """

    def __init__(self, service: str = "app", redact_keys: Iterable[str] = ()) -> None:
        super().__init__()
        self.service = service
        self.redactor = Redactor(redact_keys)
        #: Masks ``key=value`` secrets in messages, exception texts, stacks and the string
        #: values of fields.
        self.masker = TextMasker(self.redactor.fragments)
        self.redactor.mask_text = self.masker.mask
        self._timestamps = _Timestamps()
        self._templates: dict[tuple[str, int, str, str | None], tuple[str, ...]] = {}
        self._texts = _JsonTexts()

    def build(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record as a dict of JSON-ready fields."""
        ctx = current_request.get()
        payload: dict[str, Any] = {
            "timestamp": self._timestamps.format(record.created),
            "level": _level_name(record.levelno),
            "logger": record.name,
            "message": self._masked_message(record),
            "service": ctx.service if ctx is not None else self.service,
            "request_id": ctx.request_id if ctx is not None else None,
        }
        redactor = self.redactor
        access = record.name == ACCESS_LOGGER_NAME
        if ctx is not None:
            if ctx.trace_id is not None:
                payload["trace_id"] = ctx.trace_id
                if ctx.span_id is not None:
                    payload["span_id"] = ctx.span_id
        else:
            ids = span_ids_outside_a_request()
            if ids is not None:
                payload["trace_id"], payload["span_id"] = ids
        for key, value in record.__dict__.items():
            if key in _RESERVED:
                continue
            if key in payload:
                if payload[key] == value:  # e.g. request_id from RequestContextFilter
                    continue
                key = f"{key}_"  # a field never replaces a standard one, nor is it lost
            if redactor.is_secret(key):
                payload[key] = REDACTED
            elif value is None or type(value) in (int, float, bool):
                payload[key] = value
            elif type(value) is str:
                # The access line's fields are written as they are, as on its fast path.
                payload[key] = value if access else self.masker.mask(value)
            else:
                payload[key] = redactor.redact(value)
        if ctx is not None and ctx.bound:
            self._add_bound(payload, ctx.bound)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            payload["exc_type"] = exc_type.__name__
            payload["exc_message"] = self.masker.mask(_safe_str(exc))
            payload["stack"] = self.masker.mask_traceback(
                "".join(traceback.format_exception(exc_type, exc, tb))
            )
        if record.stack_info:
            payload["stack_info"] = self.masker.mask_traceback(record.stack_info)
        if ctx is not None and (record.levelno >= logging.ERROR or "stack" in payload):
            # as Sentry's events: an exception's text can quote a secret under no
            # secret-looking name (the value of an X-Api-Key header)
            sweep_request_secrets(payload, _SWEPT_FIELDS, self.redactor.is_secret)
        return payload

    def _masked_message(self, record: logging.LogRecord) -> str:
        message = _message(record)
        if record.name == ACCESS_LOGGER_NAME:
            return message  # method, path and status, as on the fast path
        return self.masker.mask(message)

    def access_line(self, entry: AccessFields) -> str:
        """The JSON line of an access record, built without a ``LogRecord``.

        The same fields, in the same order, as :meth:`build` gives for the record
        that :meth:`AccessLog.write` would otherwise log; strings go through the
        json module's own C escaper, so the line is always valid JSON. What stays the
        same from request to request (method, status, service, route) comes from a
        template made once per combination; the request's ID and trace IDs need no
        escaping (they are kept only when they match their strict formats).
        """
        ctx = current_request.get()
        e = entry
        path = e.path
        if ctx is None or "@" in path or "@" in e.method:  # no request, or credentials to mask
            return self._access_line(entry, ctx)
        key = (e.method, e.status, ctx.service, e.route)
        template = self._templates.get(key)
        if template is None:
            template = self._template(key)
        opening, after_path, before_path, after_route = template
        trace_id = ctx.trace_id
        if trace_id is None:
            trace = ""
        elif ctx.span_id is None:
            trace = f'", "trace_id": "{trace_id}'
        else:
            trace = f'", "trace_id": "{trace_id}", "span_id": "{ctx.span_id}'
        micros = int(e.duration * 1_000_000)
        escaped = _esc(path)
        remote, agent, size, bound = e.remote_addr, e.user_agent, e.response_size, ctx.bound
        return "".join(
            (
                '{"timestamp": "',
                self._timestamps.format(time.time()),
                opening,
                escaped[1:-1],
                after_path,
                ctx.request_id,
                trace,
                before_path,
                escaped,
                after_route,
                str(micros // 1000),
                _THOUSANDTHS[micros % 1000],
                ', "remote_addr": ',
                "null" if remote is None else self._texts[remote],
                ', "user_agent": ',
                "null" if agent is None else self._texts[agent],
                ', "response_size": ',
                "null" if size is None else str(size),
                self._bound_json(bound) if bound else "",
                "}",
            )
        )

    def _template(self, key: tuple[str, int, str, str | None]) -> tuple[str, ...]:
        method, status, service, route = key
        escaped_method = _esc(method)
        template = (
            f'", "level": "info", "logger": "{ACCESS_LOGGER_NAME}", '
            f'"message": "{escaped_method[1:-1]} ',
            f' {status:d}", "service": {_esc(service)}, "request_id": "',
            f'", "method": {escaped_method}, "path": ',
            f', "route": {_opt(route)}, "status": {status:d}, "duration_ms": ',
        )
        return self._store(key, template)

    def _store(
        self, key: tuple[str, int, str, str | None], template: tuple[str, ...]
    ) -> tuple[str, ...]:
        """Keep an access-line template, up to :data:`_MAX_TEMPLATES` (bounded whatever
        methods clients send)."""
        if len(self._templates) < _MAX_TEMPLATES:
            self._templates[key] = template
        return template

    def _access_line(self, entry: AccessFields, ctx: RequestContext | None) -> str:
        # The general case: no template, the message masked as in build().
        if ctx is not None:
            service, request_id = ctx.service, _esc(ctx.request_id)
            trace = "" if ctx.trace_id is None else f', "trace_id": {_esc(ctx.trace_id)}'
            if ctx.span_id is not None and trace:
                trace = f'{trace}, "span_id": {_esc(ctx.span_id)}'
            bound = ctx.bound
        else:
            service, request_id, trace, bound = self.service, "null", "", None
        e = entry
        message = _esc(mask_url_credentials(access_message(e)))
        return (
            f'{{"timestamp": "{self._timestamps.format(time.time())}", "level": "info", '
            f'"logger": "{ACCESS_LOGGER_NAME}", "message": {message}, '
            f'"service": {_esc(service)}, "request_id": {request_id}{trace}, '
            f'"method": {_esc(e.method)}, "path": {_esc(e.path)}, "route": {_opt(e.route)}, '
            f'"status": {e.status:d}, "duration_ms": {round(e.duration * 1000.0, 3)!r}, '
            f'"remote_addr": {_opt(e.remote_addr)}, "user_agent": {_opt(e.user_agent)}, '
            f'"response_size": {"null" if e.response_size is None else f"{e.response_size:d}"}'
            f"{self._bound_json(bound) if bound else ''}}}"
        )

    def _add_bound(self, payload: dict[str, Any], bound: Mapping[str, Any]) -> None:
        # A bound field never replaces a standard one: it is kept under ``<name>_``.
        redactor = self.redactor
        for key, value in bound.items():
            name = key if key not in payload and key not in _ACCESS_FIELDS else f"{key}_"
            payload[name] = REDACTED if redactor.is_secret(key) else redactor.redact(value)

    def _bound_json(self, bound: Mapping[str, Any]) -> str:
        fields: dict[str, Any] = {}
        self._add_bound(fields, bound)
        text = _ENCODER.encode(fields)
        return ", " + text[1:-1] if len(text) > 2 else ""

    def format(self, record: logging.LogRecord) -> str:
        try:
            payload = self.build(record)
            try:
                return _ENCODER.encode(payload)
            except (TypeError, ValueError):  # e.g. a circular structure
                return _ENCODER.encode(self.redactor.redact(payload))
        except Exception:  # logging must never fail: emit what we safely can
            return json.dumps(
                {
                    "timestamp": self._timestamps.format(record.created),
                    "level": _level_name(record.levelno),
                    "logger": record.name,
                    "message": "unformattable log record",
                    "service": self.service,
                    "request_id": get_request_id(),
                }
            )


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return _safe_repr(value)


_COLOURS = {
    "debug": "\x1b[2m",
    "info": "\x1b[32m",
    "warning": "\x1b[33m",
    "error": "\x1b[31m",
    "critical": "\x1b[1;31m",
}
_RESET = "\x1b[0m"


class ConsoleFormatter(JsonFormatter):
    """Human-readable single-line records for development, coloured on a terminal.

    :param colour: ``None`` decides per stream (a TTY, and ``NO_COLOR`` unset).
    """

    def __init__(
        self, service: str = "app", redact_keys: Iterable[str] = (), colour: bool | None = None
    ) -> None:
        super().__init__(service, redact_keys)
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        try:
            payload = self.build(record)
            level = payload.pop("level")
            clock = payload.pop("timestamp")[11:23]
            logger_name = payload.pop("logger")
            message = payload.pop("message")
            payload.pop("service")
            stack = payload.pop("stack", None)
            fields = " ".join(
                f"{key}={_console_value(value)}"
                for key, value in payload.items()
                if value is not None
            )
            rest = f"{logger_name}: {message}"
            if fields:
                rest = f"{rest}  {fields}"
            if stack:
                rest = f"{rest}  stack={stack}"
            level_text = f"{level.upper():<8}"
            if self._use_colour():
                level_text = f"{_COLOURS.get(level, '')}{level_text}{_RESET}"
            # Escape only what came from the record, so one record stays one line.
            return f"{clock} {level_text} {escape_control(rest)}"
        except Exception:
            return escape_control(f"unformattable log record from {record.name}")

    def _use_colour(self) -> bool:
        if self.colour is not None:
            return self.colour
        return "NO_COLOR" not in os.environ and sys.stdout.isatty()


def _console_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    try:
        return json.dumps(value, default=_safe_repr)
    except (TypeError, ValueError):
        return _safe_repr(value)
