"""Helpers for users' own tests: capture the extension's log records as dicts."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .logs import JsonFormatter

__all__ = ["LogCapture", "capture_logs"]


class LogCapture(logging.Handler):
    """Collects every record as the JSON dict the production formatter would write."""

    def __init__(self, service: str = "app") -> None:
        super().__init__(logging.DEBUG)
        self.formatter_ = JsonFormatter(service)
        self.records: list[dict[str, Any]] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.formatter_.format(record)
        self.lines.append(line)
        self.records.append(json.loads(line))

    def find(self, **fields: Any) -> list[dict[str, Any]]:
        """The records whose fields equal all of ``fields``."""
        return [r for r in self.records if all(r.get(k) == v for k, v in fields.items())]


@contextmanager
def capture_logs(logger: str | None = None, level: int = logging.DEBUG) -> Iterator[LogCapture]:
    """Capture records of ``logger`` (default: the root logger) at ``level`` and above.

    .. code-block:: python

        with capture_logs() as logs:
            client.get("/")
        assert logs.find(logger="flask_gateway_obs.access")[0]["status"] == 200
    """
    target = logging.getLogger(logger)
    capture = LogCapture()
    previous = target.level
    target.addHandler(capture)
    if target.level == logging.NOTSET or target.level > level:
        target.setLevel(level)
    try:
        yield capture
    finally:
        target.removeHandler(capture)
        target.setLevel(previous)
