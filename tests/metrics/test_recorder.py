"""The recorder: each method lands in its metric, labels stay bounded, bad input is contained."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from flask_gateway_obs.metrics import MetricsRecorder, app_metrics
from flask_gateway_obs.testing import capture_logs, metric_value

from ..conftest import MakeApp
from .helpers import gateway, samples


def test_recorder_labels_are_capped(make_app: MakeApp) -> None:
    """A recorder fed unbounded values folds label sets past the limit into 'other'."""
    app = gateway(make_app)
    recorder = MetricsRecorder(app_metrics(app), label_limit=5)
    with capture_logs("flask_gateway_obs.metrics") as logs:
        for i in range(50):
            recorder.retry_attempt(f"op-{i}", "retry")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    operations = {labels["operation"] for labels, _ in samples(text, "retry_attempts_total")}
    assert len(operations) == 6
    assert "other" in operations
    assert metric_value(app, "retry_attempts_total") == 50
    warnings = logs.find(level="warning")
    assert len(warnings) == 1
    assert "retry_attempts" in warnings[0]["message"]


def test_recorder_feeds_each_metric(make_app: MakeApp) -> None:
    """Every recorder method lands in its metric with the documented values."""
    app = gateway(make_app)
    recorder = app.extensions["gateway_obs"].recorder
    assert isinstance(recorder, MetricsRecorder)
    recorder.breaker_state("payments", 1)
    recorder.breaker_state("payments", 2)
    recorder.retry_attempt("charge", "retry")
    recorder.retry_attempt("charge", "retry")
    recorder.retry_attempt("charge", "success")
    recorder.rate_limit_exceeded("/items")
    for check, status in [("redis", "healthy"), ("db", "degraded"), ("disk", "unhealthy")]:
        recorder.health_check(check, status)
    recorder.health_check("odd", "sideways")
    recorder.dependency("redis", "GET", 0.004, False)
    recorder.dependency("redis", "GET", 0.2, True)
    assert metric_value(app, "circuit_breaker_state", breaker="payments") == 2
    assert metric_value(app, "retry_attempts_total", operation="charge", outcome="retry") == 2
    assert metric_value(app, "retry_attempts_total", outcome="success") == 1
    assert metric_value(app, "rate_limit_exceeded_total", route="/items") == 1
    assert metric_value(app, "health_check_status", check="redis") == 1.0
    assert metric_value(app, "health_check_status", check="db") == 0.5
    assert metric_value(app, "health_check_status", check="disk") == 0.0
    assert metric_value(app, "health_check_status", check="odd") == 0.0
    assert metric_value(app, "dependency_latency_seconds_count", dependency="redis") == 2
    assert metric_value(app, "dependency_latency_seconds_bucket", le="0.005") == 1
    assert metric_value(app, "errors_total", type="DependencyError", source="dependency") == 1


def test_recorder_never_raises_on_bad_input(make_app: MakeApp) -> None:
    """Wrong types and odd values are contained, never raised at the caller."""
    app = gateway(make_app)
    recorder = app.extensions["gateway_obs"].recorder
    recorder.breaker_state("b", "open")  # type: ignore[arg-type]
    recorder.dependency("d", "o", "slow", False)  # type: ignore[arg-type]
    recorder.dependency("d", "o", -3.0, False)
    recorder.health_check(None, None)  # type: ignore[arg-type]
    recorder.retry_attempt(42, None)  # type: ignore[arg-type]
    recorder.error("X" * 10_000, "http")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert list(text_string_to_metric_families(text))
    assert metric_value(app, "dependency_latency_seconds_sum", dependency="d") == 0.0
