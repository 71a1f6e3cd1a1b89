"""Dependency tracking: latency and errors per call, a client span per call through the
state's tracer, and the operation names built by normalize_path."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from flask_gateway_obs import GatewayObs, normalize_path
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.contracts import Tracer
from flask_gateway_obs.metrics import track_dependency
from flask_gateway_obs.testing import metric_value

from ..conftest import MakeApp, ManualClock
from .helpers import QUIET


def test_track_dependency_context_manager(make_app: MakeApp) -> None:
    """The with-block observes its duration; a raised error counts once and propagates."""
    clock = ManualClock()
    obs = GatewayObs()
    app = make_app(config=QUIET, init=False)
    obs.init_app(app)
    with track_dependency("payments", "POST /charges", obs=obs, clock=clock):
        clock.advance(2.0)  # a slow upstream

    def refused() -> None:
        with track_dependency("payments", "POST /charges", obs=obs, clock=clock):
            clock.advance(0.003)
            raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        refused()
    with track_dependency("payments", "POST /charges", obs=obs, clock=clock) as call:
        call.mark_failed("HTTPStatus503")

    def value(name: str, **labels: Any) -> float:
        return metric_value(app, name, dependency="payments", **labels)

    assert value("dependency_latency_seconds_count") == 3
    assert value("dependency_latency_seconds_bucket", le="1.0") == 2
    assert value("dependency_latency_seconds_bucket", le="2.5") == 3
    assert metric_value(app, "errors_total", type="ConnectionError", source="dependency") == 1
    assert metric_value(app, "errors_total", type="HTTPStatus503", source="dependency") == 1


def test_track_dependency_decorates_sync_and_async(make_app: MakeApp) -> None:
    """The decorator times each call separately, for plain and async functions."""
    clock = ManualClock()
    obs = GatewayObs()

    @track_dependency("inventory", normalize_path("/stock/42"), obs=obs, clock=clock)
    def lookup(fail: bool) -> str:
        clock.advance(0.02)
        if fail:
            raise TimeoutError
        return "ok"

    @track_dependency("inventory", "async", obs=obs, clock=clock)
    async def fetch() -> str:
        clock.advance(0.2)
        return "ok"

    assert lookup(False) == "ok"  # no app yet: runs untracked
    app = make_app(config=QUIET, init=False)
    obs.init_app(app)
    assert lookup(False) == "ok"
    with pytest.raises(TimeoutError):
        lookup(True)
    assert asyncio.run(fetch()) == "ok"
    assert lookup.__name__ == "lookup"
    assert metric_value(app, "dependency_latency_seconds_count", operation="/stock/{id}") == 2
    assert metric_value(app, "dependency_latency_seconds_sum", operation="async") == pytest.approx(
        0.2
    )
    assert metric_value(app, "errors_total", type="TimeoutError", source="dependency") == 1


def test_obs_track_dependency_counts_calls(make_app: MakeApp) -> None:
    """obs.track_dependency, as a context manager and as a decorator, counts each call."""
    obs = GatewayObs()
    app = make_app(config=QUIET, init=False)
    obs.init_app(app)

    @obs.track_dependency("inventory", "reserve")
    def reserve() -> str:
        return "reserved"

    with obs.track_dependency("payments", "POST /charges"):
        pass
    assert reserve() == "reserved"
    assert metric_value(app, "dependency_latency_seconds_count", dependency="payments") == 1
    assert metric_value(app, "dependency_latency_seconds_count", operation="reserve") == 1


def test_track_dependency_with_two_apps_needs_a_context(make_app: MakeApp) -> None:
    """One object on two apps: tracked in each app's context, silently skipped outside."""
    obs = GatewayObs()
    first, second = (make_app(config=QUIET, init=False) for _ in range(2))
    obs.init_app(first)
    obs.init_app(second)
    with obs.track_dependency("redis", "GET"):
        pass
    with second.app_context(), obs.track_dependency("redis", "GET"):
        pass
    assert metric_value(second, "dependency_latency_seconds_count") == 1
    assert metric_value(first, "dependency_latency_seconds_count") == 0


# --- client spans ------------------------------------------------------------------------


class FakeTracer(Tracer):
    """Keeps each client span it is asked for: its names, whether it is open, its error."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    def client_span(self, dependency: str, operation: str) -> AbstractContextManager[Any]:
        return self._span(dependency, operation)

    @contextmanager
    def _span(self, dependency: str, operation: str) -> Iterator[dict[str, Any]]:
        span: dict[str, Any] = {"name": (dependency, operation), "open": True, "error": None}
        self.spans.append(span)
        try:
            yield span
        except BaseException as exc:
            span["error"] = type(exc).__name__
            raise
        finally:
            span["open"] = False


def _traced(make_app: MakeApp, **config: Any) -> tuple[GatewayObs, Any, FakeTracer]:
    obs = GatewayObs()
    app = make_app(config={**QUIET, **config}, init=False)
    obs.init_app(app)
    tracer = FakeTracer()
    app.extensions["gateway_obs"].tracer = tracer
    return obs, app, tracer


def test_each_tracked_call_is_a_client_span(make_app: MakeApp) -> None:
    """A tracked call runs inside a client span of the state's tracer, opened before the
    call and closed after it, one per call, whether used with ``with`` or as a decorator."""
    obs, app, tracer = _traced(make_app)
    with obs.track_dependency("payments", "POST /charges"):
        assert [s["open"] for s in tracer.spans] == [True]
    assert tracer.spans == [{"name": ("payments", "POST /charges"), "open": False, "error": None}]

    @obs.track_dependency("inventory", "reserve")
    def reserve() -> bool:
        return bool(tracer.spans[-1]["open"])

    @obs.track_dependency("inventory", "fetch")
    async def fetch() -> bool:
        return bool(tracer.spans[-1]["open"])

    assert reserve() and reserve()
    assert asyncio.run(fetch())
    assert [s["name"][1] for s in tracer.spans] == ["POST /charges", "reserve", "reserve", "fetch"]
    assert not any(s["open"] for s in tracer.spans)
    assert metric_value(app, "dependency_latency_seconds_count") == 4


def test_client_span_sees_the_error_that_propagates(make_app: MakeApp) -> None:
    """An exception leaving the call reaches the span and then the caller, unchanged."""
    obs, app, tracer = _traced(make_app)
    with pytest.raises(ConnectionError, match="refused"), obs.track_dependency("payments"):
        raise ConnectionError("refused")
    assert tracer.spans[0]["error"] == "ConnectionError"
    assert metric_value(app, "errors_total", type="ConnectionError", source="dependency") == 1


def test_client_spans_with_metrics_off(make_app: MakeApp) -> None:
    """Metrics off, tracing on: the call still runs inside its client span."""
    obs, _, tracer = _traced(make_app, **{Keys.METRICS_ENABLED: False})
    with obs.track_dependency("redis", "GET"):
        pass
    assert [s["name"] for s in tracer.spans] == [("redis", "GET")]


def test_a_failing_tracer_never_breaks_the_call(make_app: MakeApp) -> None:
    """A tracer whose client span fails to open is logged, not raised; the call is timed."""

    class Broken(Tracer):
        def client_span(self, dependency: str, operation: str) -> AbstractContextManager[Any]:
            raise RuntimeError("exporter gone")

    obs, app, _ = _traced(make_app)
    app.extensions["gateway_obs"].tracer = Broken()
    with obs.track_dependency("redis", "GET"):
        pass
    assert metric_value(app, "dependency_latency_seconds_count") == 1


def test_no_span_is_asked_for_while_tracing_is_off(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default (no-op) tracer, tracking never calls into tracing at all."""
    asked: list[tuple[str, str]] = []

    def client_span(self: Tracer, dependency: str, operation: str) -> AbstractContextManager[Any]:
        asked.append((dependency, operation))
        raise AssertionError("the no-op tracer was called")

    monkeypatch.setattr(Tracer, "client_span", client_span)
    obs = GatewayObs()
    app = make_app(config=QUIET, init=False)
    obs.init_app(app)
    with obs.track_dependency("redis", "GET"):
        pass
    assert asked == []
    assert metric_value(app, "dependency_latency_seconds_count") == 1


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/users/42", "/users/{id}"),
        ("https://api.example.com:8443/users/42/orders?page=2#top", "/users/{id}/orders"),
        ("/o/9f1c0e4e-1b7a-4a53-9d5e-2f6b3c1d0a7e/items", "/o/{uuid}/items"),
        ("/blob/0123456789abcdef0123", "/blob/{hex}"),
        ("/v1/cafe", "/v1/cafe"),
        ("users/7", "/users/{id}"),
        ("", "/"),
        ("http://[bad", "/"),
        ("/" + "a/" * 500, ("/" + "a/" * 500)[:256]),
    ],
)
def test_normalize_path(given: str, expected: str) -> None:
    """IDs, UUIDs and hex tokens become placeholders; host and query go; length is capped."""
    assert normalize_path(given) == expected
