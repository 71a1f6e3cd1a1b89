"""Registries: apps side by side, the global registry, a user's own collectors, metrics off."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Summary, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from flask_gateway_obs import GatewayObs
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.contracts import Recorder
from flask_gateway_obs.metrics import app_metrics
from flask_gateway_obs.testing import metric_value, reset

from ..conftest import MakeApp
from .helpers import OPENMETRICS, QUIET, gateway, promtool_check, promtool_check_openmetrics


def test_two_apps_keep_their_own_metrics(make_app: MakeApp) -> None:
    """Two apps in one process count separately and expose without collision."""
    first, second = gateway(make_app), gateway(make_app)
    first.test_client().get("/items/1")
    first.test_client().get("/items/2")
    second.test_client().get("/bad")
    assert metric_value(first, "http_requests_total") == 2
    assert metric_value(second, "http_requests_total") == 1
    assert metric_value(second, "errors_total", type="BadRequestError") == 1
    assert metric_value(first, "errors_total") == 0
    assert second.test_client().get("/metrics").status_code == 200


def test_global_registry_app_created_twice_replaces_the_first(make_app: MakeApp) -> None:
    """With the global registry a second app takes over instead of failing as a duplicate."""
    first = gateway(make_app, METRICS_REGISTRY="global", METRICS_NAMESPACE="twice")
    first.test_client().get("/items/1")
    second = gateway(make_app, METRICS_REGISTRY="global", METRICS_NAMESPACE="twice")
    second.test_client().get("/items/1")
    second.test_client().get("/items/1")
    value = REGISTRY.get_sample_value(
        "twice_http_requests_total",
        {"method": "GET", "route": "/items/<int:item_id>", "status": "200"},
    )
    assert value == 2
    assert metric_value(second, "http_requests_total") == 2
    assert b"twice_http_requests_total" in second.test_client().get("/metrics").data


def test_reset_takes_the_extensions_metrics_off_the_global_registry(make_app: MakeApp) -> None:
    """testing.reset() leaves prometheus_client.REGISTRY as it was before any app used it,
    so a user's next test can register the same names again."""
    before = {m.name for m in REGISTRY.collect()}
    gateway(make_app, METRICS_REGISTRY="global", METRICS_NAMESPACE="resettable")
    assert "resettable_http_requests" in {m.name for m in REGISTRY.collect()}
    reset()
    assert {m.name for m in REGISTRY.collect()} == before
    gateway(make_app, METRICS_REGISTRY="global", METRICS_NAMESPACE="resettable")


def test_global_registry_two_apps_scrape_each_family_once(make_app: MakeApp) -> None:
    """Two apps on the global registry: neither scrape repeats a family of the other's
    (the first app's would otherwise carry the second's too); promtool passes both."""
    first = gateway(make_app, METRICS_REGISTRY="global")
    second = gateway(make_app, METRICS_REGISTRY="global")
    first.test_client().get("/items/1")
    second.test_client().get("/bad")
    for app in (first, second):
        text = app.test_client().get("/metrics").get_data(as_text=True)
        names = [family.name for family in text_string_to_metric_families(text)]
        assert sorted(names) == sorted(set(names)), "a family appears twice"
        assert text.count("# TYPE http_requests_total counter") == 1
        assert "process_cpu_seconds_total" in text  # the registry's other collectors stay
        promtool_check(text)
    assert metric_value(first, "http_requests_total") == 1
    assert metric_value(first, "http_requests_total", route="/bad") == 0
    assert metric_value(second, "http_requests_total", route="/bad") == 1


def test_name_taken_on_a_shared_registry_is_a_clear_error(make_app: MakeApp) -> None:
    """A user metric with one of our names on the global registry fails with advice."""
    theirs = Counter("clash_errors_total", "theirs", registry=REGISTRY)
    try:
        with pytest.raises(RuntimeError, match="GATEWAY_OBS_METRICS_NAMESPACE"):
            gateway(make_app, METRICS_REGISTRY="global", METRICS_NAMESPACE="clash")
    finally:
        REGISTRY.unregister(theirs)


@pytest.mark.parametrize("where", ["app", "global"])
def test_no_created_series_for_any_family_on_the_registry(make_app: MakeApp, where: str) -> None:
    """A user's own counter, histogram and summary on the app's registry (or the global
    one) are exposed by /metrics in both formats without ``_created`` series, as are ours."""
    app = gateway(make_app, METRICS_REGISTRY=where)
    registry = app_metrics(app).registry
    mine = [
        Counter("orders_total", "Orders placed.", ["kind"], registry=registry),
        Histogram("order_seconds", "Order time.", registry=registry),
        Summary("order_bytes", "Order size.", registry=registry),
        Gauge("queue_depth", "Queued orders.", registry=registry),
    ]
    try:
        mine[0].labels("book").inc()
        mine[1].observe(0.3)
        mine[2].observe(512)
        mine[3].set(4)
        client = app.test_client()
        client.get("/items/1")
        text = client.get("/metrics").get_data(as_text=True)
        om = client.get("/metrics", headers=OPENMETRICS).get_data(as_text=True)
        for body in (text, om):
            assert "_created" not in body
            assert 'orders_total{kind="book"} 1.0' in body
            assert "order_seconds_count 1.0" in body
            assert "order_bytes_sum 512.0" in body
            assert "queue_depth 4.0" in body
        direct = generate_latest(registry).decode()  # ours stay without them there too
        assert "http_requests_created" not in direct
        assert "http_request_duration_seconds_created" not in direct
        assert {f.name for f in parse_openmetrics(om)} >= {"orders", "order_seconds"}
        promtool_check(text)
        promtool_check_openmetrics(om)
    finally:
        for metric in mine:
            registry.unregister(metric)


def test_users_own_collector_is_exposed(make_app: MakeApp) -> None:
    """A custom collector on the app's registry shows in /metrics next to ours."""
    from prometheus_client.core import GaugeMetricFamily

    class Pool:
        def collect(self) -> list[GaugeMetricFamily]:
            return [GaugeMetricFamily("pool_connections", "Open connections.", value=3)]

    app = gateway(make_app)
    app_metrics(app).registry.register(Pool())
    assert metric_value(app, "pool_connections") == 3


def test_metrics_off_leaves_a_no_op_recorder(make_app: MakeApp) -> None:
    """METRICS_ENABLED=False: no endpoint, a no-op recorder, tracking still runs the code."""
    app = gateway(make_app, METRICS_ENABLED=False)
    state = app.extensions["gateway_obs"]
    assert type(state.recorder) is Recorder
    assert app.test_client().get("/metrics").status_code == 404
    with pytest.raises(RuntimeError, match="disabled"):
        metric_value(app, "http_requests_total")
    obs = GatewayObs()
    other = make_app(config={**QUIET, Keys.METRICS_ENABLED: False}, init=False)
    obs.init_app(other)
    with obs.track_dependency("redis", "GET"):
        pass


OFF_SCRIPT = """
import sys

from flask import Flask

from flask_gateway_obs import GatewayObs

app = Flask("off")
app.config.update(
    GATEWAY_OBS_LOG_CONFIGURE=False,
    GATEWAY_OBS_METRICS_ENABLED=False,
    GATEWAY_OBS_HEALTH_CHECK_DISK=False,
    GATEWAY_OBS_HEALTH_CHECK_MEMORY=False,
)
obs = GatewayObs(app)
with app.app_context(), obs.track_dependency("redis", "GET"):
    pass
app.test_client().get("/health/live")
print(sorted(m for m in sys.modules if m.startswith("flask_gateway_obs.metrics")))
print("prometheus_client" in sys.modules)
"""


def test_metrics_off_imports_no_prometheus_client() -> None:
    """With metrics off, an app that serves and tracks a dependency loads neither the
    metrics' collectors nor prometheus_client."""
    result = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    modules, loaded = result.stdout.splitlines()
    assert "collectors" not in modules
    assert loaded == "False"
