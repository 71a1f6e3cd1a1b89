"""Helpers for users' own tests: capture the extension's log records, read a metric, reset."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .core.context import current_request
from .core.process import reset as _reset_process
from .logs import JsonFormatter

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["LogCapture", "capture_logs", "metric_value", "reset"]


def reset() -> None:
    """Forget every process-wide thing the extension keeps (Sentry clients, breakers used
    outside an app, shared breaker-state connections, ...) and leave no request context.

    Call it between tests (an autouse fixture) so that no test sees another's state;
    per-app state goes with the app.
    """
    _reset_process()
    current_request.set(None)


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


def metric_value(app: Flask, name: str, **labels: Any) -> float:
    """The value of metric sample ``name`` of ``app``, summed over the series whose
    labels include ``labels`` (``0.0`` when none has been recorded yet).

    Reads what ``/metrics`` would expose (in multiprocess mode, the total over
    every worker). The namespace may be left out of ``name``.

    .. code-block:: python

        client.get("/items/1")
        assert metric_value(app, "http_requests_total", route="/items/<int:item_id>",
                            status=200) == 1

    :raises KeyError: for a name that no metric of the app has.
    :raises RuntimeError: if the extension or its metrics are off on ``app``.
    """
    from .metrics import app_metrics

    return app_metrics(app).sample_value(name, {k: str(v) for k, v in labels.items()})
