"""Spans out of the process: a bounded queue, one export thread, counted drops.

:class:`SpanQueue` is an SDK ``SpanProcessor`` (client spans and the user's own spans
come through ``on_end``) that also takes the extension's server spans directly. A
request only appends to a bounded deque; the export thread batches and hands spans to
the exporter (OTLP/HTTP). When the queue is full, or an export fails (endpoint down,
black-holed, answering 500), spans are dropped and counted
(``tracing_spans_dropped_total{reason}``), and the failure is logged at most once per
interval, the exporter's own error lines folded into that one.

Fork: a worker forked from a process that already traced (gunicorn ``--preload``)
starts with an empty queue, a new thread and a new exporter (its connections are not
shared with the parent), so no span is exported twice; the parent's stay the parent's.
At exit and on drain, :meth:`SpanQueue.flush` sends what is queued within a bound.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .spans import ServerSpan

__all__ = ["THREAD_NAME", "ExporterLogFilter", "SpanQueue"]

#: Name of every export thread (the exporter's own log lines from it are folded).
THREAD_NAME = "flask-gateway-obs-span-export"
#: Seconds between two logged export failures.
LOG_INTERVAL = 60.0
_log = logging.getLogger("flask_gateway_obs.tracing")


def _env_number(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


class SpanQueue(SpanProcessor):
    """A bounded queue of finished spans and the thread that exports them.

    :param make_exporter: builds the exporter (again after a fork).
    :param max_size: spans held at most; past it new spans are dropped and counted.
    :param dropped: ``(count, reason)`` reporter of dropped spans.
    :param resource: the resource of the server spans.
    :param scope: the instrumentation scope of the server spans.
    :param clock: monotonic clock of the capped failure log (tests move it by hand).
    """

    def __init__(
        self,
        make_exporter: Callable[[], SpanExporter],
        max_size: int,
        dropped: Callable[[int, str], None],
        resource: Resource,
        scope: InstrumentationScope,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.make_exporter = make_exporter
        self.max_size = max_size
        self.dropped = dropped
        self.resource = resource
        self.scope = scope
        self.clock = clock
        # OTEL_BSP_* as the SDK's batch processor reads them.
        self.delay = _env_number("OTEL_BSP_SCHEDULE_DELAY", 5000.0) / 1000.0
        self.batch_size = int(_env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512.0))
        self.last_error: str | None = None
        #: Seconds the flush at process exit may take (a black-holed collector costs this).
        self.exit_timeout = 5.0
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._queue: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = threading.Condition(self._lock)
        self._handled = 0  # spans exported or dropped by the thread
        self._in_flight = 0  # spans of the batch being exported
        self._thread: _ExportThread | None = None
        self._exporter: SpanExporter | None = None
        self._stopped = False
        self._failures = 0  # spans lost to failed exports since the last log line
        self._logged_at: float | None = None

    # --- the request side -------------------------------------------------------------

    def put(self, span: Any) -> None:
        """Queue a finished span (a :class:`ServerSpan` or an SDK ``ReadableSpan``)."""
        if self._pid != os.getpid():
            self._reset()  # forked: the parent's queue and thread are the parent's
        if self._stopped:
            return
        queue = self._queue
        if len(queue) >= self.max_size:
            self._count_dropped(1, "queue_full")
            return
        queue.append(span)
        if self._thread is None:
            self._start()
        elif len(queue) >= self.batch_size:
            self._wake.set()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self.put(span)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            thread = self._thread = _ExportThread(self)
        thread.start()

    def _count_dropped(self, count: int, reason: str) -> None:
        try:
            self.dropped(count, reason)
        except Exception:  # the count must never break a request
            _log.debug("counting dropped spans failed", exc_info=True)

    # --- the export thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.delay)
            self._wake.clear()
            self._export_all()
            if self._stopped:
                return

    def _export_all(self) -> None:
        queue = self._queue
        while True:
            with self._lock:
                batch = [queue.popleft() for _ in range(min(len(queue), self.batch_size))]
                self._in_flight = len(batch)
            if not batch:
                return
            self._export(batch)
            with self._done:
                self._handled += len(batch)
                self._in_flight = 0
                self._done.notify_all()

    def _export(self, batch: list[Any]) -> None:
        readable: list[ReadableSpan] = []
        for span in batch:
            try:
                readable.append(
                    span.readable(self.resource, self.scope)
                    if isinstance(span, ServerSpan)
                    else span
                )
            except Exception:
                _log.debug("a span could not be converted", exc_info=True)
        try:
            exporter = self._exporter
            if exporter is None:
                exporter = self._exporter = self.make_exporter()
            result = exporter.export(readable)
            failed = result is not SpanExportResult.SUCCESS
        except Exception as error:
            self.last_error = f"{type(error).__name__}: {error}"
            failed = True
        if failed:
            self._count_dropped(len(batch), "export_failed")
            self._failures += len(batch)
            self._log_failure()

    def _log_failure(self) -> None:
        now = self.clock()
        if self._logged_at is not None and now - self._logged_at < LOG_INTERVAL:
            return
        self._logged_at = now
        lost, self._failures = self._failures, 0
        _log.warning(
            "span export failed: %d span(s) dropped since the last report (%s); "
            "requests are not affected, next report in %d s at the earliest",
            lost,
            self.last_error or "the exporter reported a failure",
            int(LOG_INTERVAL),
        )

    # --- flush and shutdown --------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Export what is queued now, waiting at most ``timeout`` seconds; whether it all went
        (exported or dropped) in time. A black-holed endpoint costs the bound, not more."""
        if self._pid != os.getpid() or self._thread is None:
            return not self._queue
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._done:
            target = self._handled + self._in_flight + len(self._queue)
            self._wake.set()
            while self._handled < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
        return True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.flush(timeout_millis / 1000.0)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush within ``timeout`` seconds, then stop the thread and the exporter."""
        if self._stopped:
            return
        if timeout > 0:
            self.flush(timeout)
        self._stopped = True
        self._wake.set()
        exporter, self._exporter = self._exporter, None
        if exporter is not None and self._pid == os.getpid():
            try:
                exporter.shutdown()
            except Exception:
                _log.debug("exporter shutdown failed", exc_info=True)


class _ExportThread(threading.Thread):
    """The export thread of one queue."""

    def __init__(self, queue: SpanQueue) -> None:
        super().__init__(target=queue._run, name=THREAD_NAME, daemon=True)
        self.span_queue = queue


class ExporterLogFilter(logging.Filter):
    """Folds the exporter's own log lines, written on an export thread, into that queue's
    capped line (as its ``last_error``) instead of one line per failed batch."""

    def filter(self, record: logging.LogRecord) -> bool:
        thread = threading.current_thread()
        if not isinstance(thread, _ExportThread):
            return True
        if record.levelno >= logging.WARNING:
            try:
                message = record.getMessage()
            except Exception:
                message = str(record.msg)
            thread.span_queue.last_error = message[:500]
        return False
