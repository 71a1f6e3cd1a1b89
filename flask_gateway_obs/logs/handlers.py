"""Handlers, filters and the root-logger set-up the extension installs."""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterable
from typing import IO

from ..core.context import current_request, span_ids_outside_a_request
from .formatters import ConsoleFormatter
from .schemas import formatter_class


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` (and ``trace_id`` when known) to every record.

    For users who keep their own logging set-up and formatters
    (``GATEWAY_OBS_LOG_CONFIGURE=False``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_request.get()
        record.request_id = ctx.request_id if ctx is not None else None
        if ctx is not None:
            if ctx.trace_id is not None:
                record.trace_id = ctx.trace_id
        else:
            ids = span_ids_outside_a_request()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


# --- handlers and set-up -------------------------------------------------------------


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]  # not generic at 3.10
    """Writes to whatever ``sys.stdout`` is at emit time; never prints logging errors."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        #: ``sys.stdout`` when it is the process's own stdout, and its descriptor.
        self._direct_stream: IO[str] | None = None
        self._direct_fd = 1

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
        """Write one pre-formatted line, as ``emit`` would.

        When ``sys.stdout`` is still the process's own stdout the line goes to its file
        descriptor in one ``write`` call, past the text and buffer layers (the line is
        ASCII JSON; whatever sits in the buffer was written earlier by ``print`` without
        a flush, and lines stay whole either way)."""
        lock = self.lock
        assert lock is not None
        lock.acquire()
        try:
            stream = sys.stdout
            if stream is self._direct_stream or (
                stream is sys.__stdout__ and stream is not None and self._use_fd(stream)
            ):
                data = (line + "\n").encode()
                written = os.write(self._direct_fd, data)
                while written < len(data):  # a pipe took part of a long line
                    data = data[written:]
                    written = os.write(self._direct_fd, data)
            else:
                stream.write(line + "\n")
                stream.flush()
        except Exception:
            pass
        finally:
            lock.release()

    def _use_fd(self, stream: IO[str]) -> bool:
        # The process's stdout, a plain text file: write to its descriptor from now on.
        try:
            if type(stream) is not io.TextIOWrapper:
                return False
            stream.flush()
            self._direct_fd = stream.fileno()
        except (OSError, ValueError):
            return False
        self._direct_stream = stream
        return True


class _RotatingFileHandler(logging.handlers.RotatingFileHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        pass


_OWNED = "_flask_gateway_obs_handler"


#: A query string in a request line that a server quotes (``/items/1?api_key=...``).
_QUERY = re.compile(r"(/[^\s?'\"]*)\?[^\s'\"]*")


class ServerAccessLineFilter(logging.Filter):
    """Drops the development server's own per-request lines (``"GET /?q=.." 200 -``):
    our access line replaces them, with the request ID and without the query string.
    Its start-up banner and its error lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if record.levelno == logging.INFO:
                return " - - [" not in record.getMessage()[:96]
            # Its error lines quote the request line: keep them, without the query string.
            message = record.getMessage()
            if "?" in message:
                record.msg, record.args = _QUERY.sub(r"\1", message), ()
        except Exception:
            pass
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
    schema: str = "default",
    log_file: str | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backup_count: int = 5,
) -> list[logging.Handler]:
    """Install our handler(s) on the root logger, replacing any we installed before.

    :param schema: the JSON layout (``default``, ``ecs`` or ``otel``) of stdout, unless
        ``console``, and of the log file.
    """
    json_formatter = formatter_class(schema)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OWNED, False):
            root.removeHandler(handler)
            handler.close()
    formatter: logging.Formatter = (
        ConsoleFormatter(service, redact_keys) if console else json_formatter(service, redact_keys)
    )
    handlers: list[logging.Handler] = [_StdoutHandler()]
    handlers[0].setFormatter(formatter)
    if log_file:
        file_handler = _RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=True
        )
        file_handler.setFormatter(json_formatter(service, redact_keys))
        handlers.append(file_handler)
    for handler in handlers:
        setattr(handler, _OWNED, True)
        root.addHandler(handler)
    root.setLevel(level)
    return handlers
