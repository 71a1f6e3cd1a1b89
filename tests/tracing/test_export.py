"""Export under failure: requests never wait on the exporter; drops are bounded and counted."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from flask import Flask
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from flask_gateway_obs.testing import capture_logs, metric_value
from flask_gateway_obs.tracing.export import THREAD_NAME, SpanQueue
from flask_gateway_obs.tracing.spans import ServerSpan

from ..conftest import MakeApp, ManualClock, free_port
from .conftest import PUBLIC_PATH_ENV, flush
from .receiver import OtlpReceiver

REQUESTS = 60


@pytest.fixture(autouse=True)
def otel_path(monkeypatch: pytest.MonkeyPatch) -> str:
    """Export does not touch the request's context: these tests run on the fast path only."""
    monkeypatch.delenv(PUBLIC_PATH_ENV, raising=False)
    return "fast"


def _app(make_app: MakeApp, endpoint: str | None, **config: Any) -> Flask:
    base: dict[str, Any] = {"GATEWAY_OBS_METRICS_ENABLED": True, "GATEWAY_OBS_LOG_ACCESS": False}
    if endpoint is not None:
        base |= {"GATEWAY_OBS_TRACING_ENABLED": True, "GATEWAY_OBS_TRACING_OTLP_ENDPOINT": endpoint}
    app = make_app({**base, **config}, init=False)

    @app.get("/work")
    def work() -> str:
        return "ok"

    from flask_gateway_obs import GatewayObs

    GatewayObs(app)
    return app


def _medians(apps: Sequence[Flask], rounds: int = 6, per_round: int = REQUESTS // 6) -> list[float]:
    """Median seconds per request of each app, the apps taking turns round by round."""
    clients = [app.test_client() for app in apps]
    timings: list[list[float]] = [[] for _ in apps]
    for _ in range(rounds):
        for index, client in enumerate(clients):
            for _ in range(per_round):
                start = time.perf_counter()
                assert client.get("/work").status_code == 200
                timings[index].append(time.perf_counter() - start)
    return [statistics.median(t) for t in timings]


def _dropped(app: Flask, reason: str) -> float:
    return metric_value(app, "tracing_spans_dropped_total", reason=reason)


def _export_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == THREAD_NAME)


def _check_unaffected(make_app: MakeApp, endpoint: str, **config: Any) -> Flask:
    off = _app(make_app, None)
    traced = _app(make_app, endpoint, **config)
    threads_before = _export_threads()
    off_median, traced_median = _medians([off, traced])
    # Generous: tracing costs microseconds; waiting on the exporter would cost seconds.
    assert traced_median < off_median * 3
    assert _export_threads() <= threads_before + 1
    return traced


def test_receiver_down_never_slows_requests(make_app: MakeApp) -> None:
    """Endpoint refused: latency as with tracing off; every span dropped and counted."""
    traced = _check_unaffected(make_app, f"http://127.0.0.1:{free_port()}/v1/traces")
    assert flush_all(traced)
    assert _dropped(traced, "export_failed") == REQUESTS
    assert _dropped(traced, "queue_full") == 0


def test_black_holed_receiver_never_slows_requests(
    make_app: MakeApp, black_hole: tuple[str, int]
) -> None:
    """Endpoint accepts and never answers: latency unchanged; the queue bound holds and
    every span is either dropped at the queue or with its failed export."""
    host, port = black_hole
    traced = _check_unaffected(
        make_app, f"http://{host}:{port}/v1/traces", GATEWAY_OBS_TRACING_QUEUE_SIZE=5
    )
    assert flush_all(traced, 10.0)
    full, failed = _dropped(traced, "queue_full"), _dropped(traced, "export_failed")
    assert full > 0
    assert full + failed == REQUESTS


def test_receiver_answering_500_is_logged_at_a_capped_rate(
    make_app: MakeApp, receiver: OtlpReceiver
) -> None:
    """A collector answering 500: spans dropped and counted, one warning for many failed
    batches, the exporter's own error lines folded into it."""
    receiver.status = 500
    with capture_logs() as logs:
        traced = _check_unaffected(make_app, receiver.endpoint)
        for _ in range(3):  # several batches, each failing
            traced.test_client().get("/work")
            assert flush_all(traced)
    assert _dropped(traced, "export_failed") == REQUESTS + 3
    assert receiver.requests >= 2
    warnings = [r for r in logs.records if r["level"] in ("warning", "error", "WARNING", "ERROR")]
    ours = [r for r in warnings if r["logger"] == "flask_gateway_obs.tracing"]
    assert len(ours) == 1
    assert "500" in ours[0]["message"]
    assert not [r for r in warnings if r["logger"].startswith("opentelemetry")]


def flush_all(app: Flask, seconds: float = 5.0) -> bool:
    """Drain the app's export queue (its drain hook); whether it finished in time."""
    from flask_gateway_obs.core.state import state_of

    state = state_of(app)
    assert state is not None
    started = time.monotonic()
    flush(app, seconds)
    return time.monotonic() - started < seconds


# --- the queue on its own, with exporters that misbehave on demand -------------------


class _Exporter(SpanExporter):
    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.result = result
        self.batches: list[list[ReadableSpan]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(list(spans))
        return self.result

    def shutdown(self) -> None:
        self.gate.set()


def _queue(
    exporter: _Exporter, size: int = 100, clock: Callable[[], float] = time.monotonic
) -> tuple[SpanQueue, list[tuple[int, str]]]:
    dropped: list[tuple[int, str]] = []
    queue = SpanQueue(
        lambda: exporter,
        size,
        lambda count, reason: dropped.append((count, reason)),
        Resource.create({"service.name": "unit"}),
        InstrumentationScope("unit"),
        clock=clock,
    )
    return queue, dropped


def _span(number: int) -> ServerSpan:
    span = ServerSpan(f"{number:032x}", f"{number:016x}", None, None, {"n": number}, 1)
    span.finish(f"span {number}", 2)
    return span


def test_full_queue_drops_new_spans_and_counts_them() -> None:
    """While the exporter is stuck the queue holds its bound; the rest are counted."""
    exporter = _Exporter()
    exporter.gate.clear()
    queue, dropped = _queue(exporter, size=3)
    queue.put(_span(1))  # starts the thread, which takes it and blocks in export
    assert exporter.entered.wait(5)
    for number in range(2, 12):
        queue.put(_span(number))
    assert sum(c for c, r in dropped if r == "queue_full") == 7
    exporter.gate.set()
    assert queue.flush(5)
    exported = [s.name for batch in exporter.batches for s in batch]
    assert len(exported) + sum(c for c, _ in dropped) == 11
    queue.shutdown()


def test_flush_is_bounded_by_its_timeout() -> None:
    """A flush while the exporter hangs gives up after its bound and says so."""
    exporter = _Exporter()
    exporter.gate.clear()
    queue, _ = _queue(exporter)
    queue.put(_span(1))
    assert queue.flush(0.2) is False
    exporter.gate.set()
    assert queue.flush(5) is True
    queue.shutdown()


def test_failures_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """Failed exports log one warning per interval (clock moved by hand), with the count."""
    clock = ManualClock()
    exporter = _Exporter(SpanExportResult.FAILURE)
    queue, dropped = _queue(exporter, clock=clock)
    with caplog.at_level(logging.WARNING, logger="flask_gateway_obs.tracing"):
        for number in range(3):
            queue.put(_span(number))
            assert queue.flush(5)
        assert len(caplog.records) == 1
        clock.advance(61)
        queue.put(_span(9))
        assert queue.flush(5)
    assert len(caplog.records) == 2
    assert "3 span(s) dropped" in caplog.records[1].getMessage()
    assert sum(c for c, r in dropped if r == "export_failed") == 4
    queue.shutdown()


def test_shutdown_stops_the_thread() -> None:
    """After shutdown the export thread ends and new spans are ignored."""
    exporter = _Exporter()
    queue, _ = _queue(exporter)
    before = _export_threads()
    queue.put(_span(1))
    assert queue.flush(5)
    assert _export_threads() == before + 1
    queue.shutdown()
    deadline = time.monotonic() + 5
    while _export_threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _export_threads() == before
    queue.put(_span(2))
    assert [s.name for batch in exporter.batches for s in batch] == ["span 1"]
