"""Structured logs: request-ID context, JSON and console formatters, access log, get_logger.

The request context lives in one :class:`contextvars.ContextVar`, so the threads of a
threaded server never see each other's request ID, and ``async`` views (run by Flask
through ``asgiref``, which copies the context) see their own.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, MutableMapping
from typing import IO, Any

__all__ = [
    "BoundLogger",
    "ConsoleFormatter",
    "JsonFormatter",
    "RequestContextFilter",
    "get_logger",
    "get_request_id",
    "get_trace_id",
]

LOGGER_NAME = "flask_gateway_obs"
ACCESS_LOGGER_NAME = "flask_gateway_obs.access"
REDACTED = "[REDACTED]"
#: Key fragments that mark a value as secret (matched case-insensitively, as substrings).
SECRET_FRAGMENTS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "authorization",
    "cookie",
    "session",
    "credential",
    "private_key",
)
_MAX_DEPTH = 8


# --- request context ---------------------------------------------------------------


class RequestContext:
    """What the extension knows about the request being served (one per request)."""

    __slots__ = (
        "environ",
        "finished",
        "in_flight",
        "method",
        "path",
        "request_id",
        "response_size",
        "route",
        "service",
        "start",
        "status",
        "trace_flags",
        "trace_id",
    )

    def __init__(
        self,
        request_id: str,
        service: str,
        start: float,
        environ: dict[str, Any] | None = None,
        trace_id: str | None = None,
        trace_flags: str = "01",
    ) -> None:
        self.request_id = request_id
        self.service = service
        self.start = start
        self.environ = environ if environ is not None else {}
        self.trace_id = trace_id
        self.trace_flags = trace_flags
        self.finished = False
        #: Set by the metrics observer when it counted this request as in flight.
        self.in_flight = False
        # What the response turned out to be, noted when it starts.
        self.method = "GET"
        self.path = "/"
        self.route: str | None = None
        self.status = 0  # 0 until the response starts
        self.response_size: int | None = None


current_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "flask_gateway_obs_request", default=None
)


def get_request_id() -> str | None:
    """The current request's ID, or ``None`` outside a request."""
    ctx = current_request.get()
    return ctx.request_id if ctx is not None else None


def get_trace_id() -> str | None:
    """The W3C trace-id of the current request's ``traceparent``, if one arrived."""
    ctx = current_request.get()
    return ctx.trace_id if ctx is not None else None


# --- redaction and escaping -----------------------------------------------------------


class Redactor:
    """Replaces the values of secret-looking keys, at any depth, in a copy of the data."""

    def __init__(self, extra_fragments: Iterable[str] = ()) -> None:
        self.fragments = tuple(
            dict.fromkeys(f.lower() for f in (*SECRET_FRAGMENTS, *extra_fragments) if f)
        )
        self._verdicts: dict[str, bool] = {}

    def is_secret(self, key: str) -> bool:
        """Whether ``key`` names a secret (cached per key)."""
        verdict = self._verdicts.get(key)
        if verdict is None:
            lowered = key.lower()
            verdict = any(fragment in lowered for fragment in self.fragments)
            if len(self._verdicts) < 4096:
                self._verdicts[key] = verdict
        return verdict

    def redact(self, value: Any, depth: int = 0) -> Any:
        """A JSON-ready copy of ``value`` with secret keys' values replaced.

        Mappings and anything with ``items()`` (werkzeug's ``Headers``, ``MultiDict``)
        are walked by key; a ``(key, value)`` pair whose key looks secret (a list of
        header pairs) has its value replaced; non-finite floats become strings.
        """
        if value is None or isinstance(value, (str, int, bool)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else repr(value)
        if depth >= _MAX_DEPTH:
            return "<too deep>"
        items = getattr(value, "items", None)
        if isinstance(value, Mapping) or (callable(items) and not isinstance(value, type)):
            out: dict[str, Any] = {}
            try:
                pairs = list(value.items())
            except Exception:
                return _safe_repr(value)
            for key, item in pairs:
                name = key if isinstance(key, str) else repr(key)
                out[name] = REDACTED if self.is_secret(name) else self.redact(item, depth + 1)
            return out
        if isinstance(value, (list, tuple, set, frozenset)):
            if (
                isinstance(value, tuple)
                and len(value) == 2
                and isinstance(value[0], str)
                and self.is_secret(value[0])
            ):
                return [value[0], REDACTED]
            return [self.redact(item, depth + 1) for item in value]
        return _safe_repr(value)


# Credentials in a URL: with a password, everything up to the last "@" before the line
# ends or another URL starts is masked (drivers accept unencoded "@", "/" and spaces in
# it, so over-masking is the safe side); a user name alone that looks like a token
# (https://ghp_x1y2z3@host) is masked whole.
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):"
    r"(?P<password>(?:(?![A-Za-z][A-Za-z0-9+.-]*://)[^\n])*)@"
)
_URL_USER = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^:@/\s]+@")


def mask_url_credentials(text: str) -> str:
    """``postgresql://user:pass@host`` -> ``postgresql://user:***@host``;
    ``https://tok3n@host`` -> ``https://***@host``; ``postgresql://postgres@host`` stays."""
    if "://" not in text or "@" not in text:
        return text
    text = _URL_PASSWORD.sub(_masked_password, text)
    return _URL_USER.sub(_masked_user, text)


def _masked_user(match: re.Match[str]) -> str:
    # A user name alone is kept when it reads as a name (postgres, git); one that looks
    # like a token (long, or with digits) is masked.
    user = match[0][len(match["scheme"]) : -1]
    if len(user) >= 16 or any(c.isdigit() for c in user):
        return f"{match['scheme']}***@"
    return match[0]


def _masked_password(match: re.Match[str]) -> str:
    # With an empty password the user name is the secret (a token): mask it instead.
    if match["password"]:
        return f"{match['scheme']}{match['user']}:***@"
    return f"{match['scheme']}***:@"


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a broken __repr__ must not break logging
        return f"<unrepresentable {type(value).__name__}>"


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_control(text: str) -> str:
    """Escape control characters so that one record stays one line."""
    return text.translate(_CONTROL)


# --- formatters ------------------------------------------------------------------------

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
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


class _Timestamps:
    """ISO 8601 UTC timestamps with milliseconds, the seconds part cached."""

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        # One tuple, replaced whole, so that threads never see a second and a text
        # that don't belong together.
        self._cached = (-1, "")

    def format(self, created: float) -> str:
        second = int(created)
        cached = self._cached
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._cached = cached
        return f"{cached[1]}.{int((created - second) * 1000):03d}Z"


_esc = json.encoder.encode_basestring_ascii


def _opt(value: str | None) -> str:
    return "null" if value is None else _esc(value)


#: Built once: ``json.dumps(..., default=...)`` would build an encoder per call.
#: NaN and Infinity are refused (they are not JSON); the caller falls back to
#: :meth:`Redactor.redact`, which writes them as strings.
_ENCODER = json.JSONEncoder(default=_safe_repr, allow_nan=False)


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
        self._timestamps = _Timestamps()

    def build(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record as a dict of JSON-ready fields."""
        ctx = current_request.get()
        payload: dict[str, Any] = {
            "timestamp": self._timestamps.format(record.created),
            "level": _level_name(record.levelno),
            "logger": record.name,
            "message": _message(record),
            "service": ctx.service if ctx is not None else self.service,
            "request_id": ctx.request_id if ctx is not None else None,
        }
        if ctx is not None and ctx.trace_id is not None:
            payload["trace_id"] = ctx.trace_id
        redactor = self.redactor
        for key, value in record.__dict__.items():
            if key in _RESERVED or key in payload:
                continue
            if redactor.is_secret(key):
                payload[key] = REDACTED
            elif value is None or type(value) in (str, int, float, bool):
                payload[key] = value
            else:
                payload[key] = redactor.redact(value)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            payload["exc_type"] = exc_type.__name__
            payload["exc_message"] = mask_url_credentials(_safe_str(exc))
            payload["stack"] = mask_url_credentials(
                "".join(traceback.format_exception(exc_type, exc, tb))
            )
        if record.stack_info:
            payload["stack_info"] = record.stack_info
        return payload

    def access_line(self, entry: AccessEntry) -> str:
        """The JSON line of an access record, built without a ``LogRecord``.

        The same fields, in the same order, as :meth:`build` gives for the record
        that :meth:`AccessLog.write` would otherwise log; strings go through the
        json module's own C escaper, so the line is always valid JSON.
        """
        ctx = current_request.get()
        if ctx is not None:
            service, request_id = ctx.service, _esc(ctx.request_id)
            trace = "" if ctx.trace_id is None else f', "trace_id": {_esc(ctx.trace_id)}'
        else:
            service, request_id, trace = self.service, "null", ""
        e = entry
        message = _esc(mask_url_credentials(e.message))
        return (
            f'{{"timestamp": "{self._timestamps.format(time.time())}", "level": "info", '
            f'"logger": "{ACCESS_LOGGER_NAME}", "message": {message}, '
            f'"service": {_esc(service)}, "request_id": {request_id}{trace}, '
            f'"method": {_esc(e.method)}, "path": {_esc(e.path)}, "route": {_opt(e.route)}, '
            f'"status": {e.status:d}, "duration_ms": {e.duration_ms!r}, '
            f'"remote_addr": {_opt(e.remote_addr)}, "user_agent": {_opt(e.user_agent)}, '
            f'"response_size": {"null" if e.response_size is None else f"{e.response_size:d}"}}}'
        )

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


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` (and ``trace_id`` when known) to every record.

    For users who keep their own logging set-up and formatters
    (``GATEWAY_OBS_LOG_CONFIGURE=False``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_request.get()
        record.request_id = ctx.request_id if ctx is not None else None
        if ctx is not None and ctx.trace_id is not None:
            record.trace_id = ctx.trace_id
        return True


# --- handlers and set-up -------------------------------------------------------------


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]  # not generic at 3.10
    """Writes to whatever ``sys.stdout`` is at emit time; never prints logging errors."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass

    def handleError(self, record: logging.LogRecord) -> None:
        # A closed or broken stdout must not fail the request that logged.
        pass

    def write_line(self, line: str) -> None:
        """Write one pre-formatted line, as ``emit`` would."""
        with self.lock:  # type: ignore[union-attr]
            try:
                stream = sys.stdout
                stream.write(line + "\n")
                stream.flush()
            except Exception:
                pass


class _RotatingFileHandler(logging.handlers.RotatingFileHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        pass


_OWNED = "_flask_gateway_obs_handler"


class ServerAccessLineFilter(logging.Filter):
    """Drops the development server's own per-request lines (``"GET /?q=.." 200 -``):
    our access line replaces them, with the request ID and without the query string.
    Its start-up banner and its error lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        try:
            return " - - [" not in record.getMessage()[:96]
        except Exception:
            return True


def quiet_server_access_lines() -> None:
    """Install :class:`ServerAccessLineFilter` on werkzeug's logger, once."""
    server_logger = logging.getLogger("werkzeug")
    if not any(isinstance(f, ServerAccessLineFilter) for f in server_logger.filters):
        server_logger.addFilter(ServerAccessLineFilter())


def configure_logging(
    *,
    service: str,
    level: int,
    console: bool,
    redact_keys: Iterable[str] = (),
    log_file: str | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backup_count: int = 5,
) -> list[logging.Handler]:
    """Install our handler(s) on the root logger, replacing any we installed before."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OWNED, False):
            root.removeHandler(handler)
            handler.close()
    formatter: logging.Formatter = (
        ConsoleFormatter(service, redact_keys) if console else JsonFormatter(service, redact_keys)
    )
    handlers: list[logging.Handler] = [_StdoutHandler()]
    handlers[0].setFormatter(formatter)
    if log_file:
        file_handler = _RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=True
        )
        file_handler.setFormatter(JsonFormatter(service, redact_keys))
        handlers.append(file_handler)
    for handler in handlers:
        setattr(handler, _OWNED, True)
        root.addHandler(handler)
    root.setLevel(level)
    return handlers


# --- loggers ---------------------------------------------------------------------------

_LOG_KWARGS = frozenset({"exc_info", "stack_info", "stacklevel", "extra"})


class BoundLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose records carry a fixed context; keyword arguments become fields.

    ``log.info("charged", amount=12)`` logs ``amount`` as a field. ``child(**more)``
    returns a logger with the context extended.
    """

    def __init__(self, logger: logging.Logger, context: Mapping[str, Any]) -> None:
        super().__init__(logger, _safe_context(context))

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        fields = dict(self.extra or {})
        for key in [k for k in kwargs if k not in _LOG_KWARGS]:
            fields[key] = kwargs.pop(key)
        given = kwargs.get("extra")
        if given:
            fields.update(given)
        kwargs["extra"] = _safe_context(fields)
        return msg, kwargs

    def child(self, **more: Any) -> BoundLogger:
        """A logger with this one's context plus ``more``."""
        return BoundLogger(self.logger, {**(self.extra or {}), **more})

    def fatal(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Alias of :meth:`critical`."""
        self.critical(msg, *args, **kwargs)


def _safe_context(context: Mapping[str, Any]) -> dict[str, Any]:
    # LogRecord refuses extra keys that shadow its own attributes; keep them, renamed.
    return {(f"{k}_" if k in _RESERVED else k): v for k, v in context.items()}


def get_logger(name: str | None = None, **context: Any) -> BoundLogger:
    """A :class:`BoundLogger` named ``name`` (default: the extension's) with ``context``.

    Inside a request every record also carries ``request_id``.
    """
    return BoundLogger(logging.getLogger(name or LOGGER_NAME), context)


class AccessLog:
    """Writes the access line of each request.

    When the only thing listening is the extension's own JSON stdout handler (the
    usual production set-up), the line is serialised and written directly, without
    building a ``LogRecord``: that is most of the per-request cost of logging.
    Any other handler, filter or level set-up takes the ordinary logging path.
    """

    def __init__(self, fast_handler: logging.Handler | None = None) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER_NAME)
        self._parent = logging.getLogger(LOGGER_NAME)
        self._root = logging.getLogger()
        self._fast = fast_handler if isinstance(fast_handler, _StdoutHandler) else None

    def _fast_path(self) -> _StdoutHandler | None:
        fast = self._fast
        if fast is None:
            return None
        logger, parent, root_handlers = self.logger, self._parent, self._root.handlers
        if (
            len(root_handlers) == 1
            and root_handlers[0] is fast
            and not logger.handlers
            and not parent.handlers
            and logger.propagate
            and parent.propagate
            and not logger.filters
            and not parent.filters
            and not fast.filters
            and fast.level <= logging.INFO
            and type(fast.formatter) is JsonFormatter
        ):
            return fast
        return None

    def write(self, entry: AccessEntry) -> None:
        """Log one request's access line at info."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        fast = self._fast_path()
        if fast is not None:
            fast.write_line(fast.formatter.access_line(entry))  # type: ignore[union-attr]
            return
        emit(logger, logging.INFO, entry.message, entry.fields())


class AccessEntry:
    """The fields of one access line."""

    __slots__ = (
        "duration_ms",
        "message",
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
        duration_ms: float,
        remote_addr: str | None,
        user_agent: str | None,
        response_size: int | None,
    ) -> None:
        self.message = f"{method} {path} {status}"
        self.method = method
        self.path = path
        self.route = route
        self.status = status
        self.duration_ms = duration_ms
        self.remote_addr = remote_addr
        self.user_agent = user_agent
        self.response_size = response_size

    def fields(self) -> dict[str, Any]:
        """The fields as ``extra`` for an ordinary log record."""
        return {
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "remote_addr": self.remote_addr,
            "user_agent": self.user_agent,
            "response_size": self.response_size,
        }


def emit(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """Log without the caller lookup of ``Logger.info`` (for hot paths)."""
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(logger.name, level, "(gateway)", 0, msg, (), None, extra=fields)
    logger.handle(record)
