"""The /metrics endpoint: what it counts, paths, negotiation, gzip, config, protection."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

from flask_gateway_obs import ConfigError
from flask_gateway_obs.config import Keys
from flask_gateway_obs.labels import UNMATCHED_ROUTE
from flask_gateway_obs.metrics.exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    wants_openmetrics,
)
from flask_gateway_obs.testing import capture_logs, metric_value

from ..conftest import MakeApp
from .helpers import gateway, samples

# --- the endpoint ------------------------------------------------------------------------------


def test_own_endpoints_are_neither_counted_nor_logged(make_app: MakeApp) -> None:
    """/metrics and the health endpoints stay out of http_requests_total and the access log."""
    app = gateway(make_app)
    client = app.test_client()
    with capture_logs() as logs:
        for _ in range(3):
            assert client.get("/metrics").status_code == 200
            client.get("/health")
            client.get("/health/live")
        client.get("/items/1")
    assert metric_value(app, "http_requests_total") == 1
    assert metric_value(app, "active_connections") == 0
    paths = {r.get("path") for r in logs.find(logger="flask_gateway_obs.access")}
    assert paths == {"/items/1"}


def test_count_internal_counts_health_but_never_metrics(make_app: MakeApp) -> None:
    """METRICS_COUNT_INTERNAL counts the health endpoints; /metrics itself never."""
    app = gateway(make_app, METRICS_COUNT_INTERNAL=True)
    client = app.test_client()
    client.get("/health/live")
    client.get("/metrics")
    assert metric_value(app, "http_requests_total", route="/health/live") == 1
    assert metric_value(app, "http_requests_total", route="/metrics") == 0


@pytest.mark.parametrize("count_internal", [False, True])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "BREW"])
def test_metrics_path_is_never_counted_whatever_the_method(
    make_app: MakeApp, method: str, count_internal: bool
) -> None:
    """A wrong method on /metrics (a 405, which matches no rule) is counted neither in
    http_requests_total nor in errors_total, nor is one on a health path by default."""
    app = gateway(make_app, METRICS_COUNT_INTERNAL=count_internal)
    client = app.test_client()
    assert client.open("/metrics", method=method).status_code == 405
    assert metric_value(app, "http_requests_total") == 0
    assert metric_value(app, "errors_total") == 0
    assert metric_value(app, "active_connections") == 0
    assert client.open("/health/live", method=method).status_code == 405
    expected = 1 if count_internal else 0
    assert metric_value(app, "http_requests_total", route=UNMATCHED_ROUTE) == expected
    assert metric_value(app, "errors_total", type="MethodNotAllowed") == expected


def test_path_is_configurable_and_endpoint_can_be_off(make_app: MakeApp) -> None:
    """METRICS_PATH moves the endpoint; METRICS_ENDPOINT=False removes it, metrics stay."""
    moved = gateway(make_app, METRICS_PATH="/internal/prom/")
    client = moved.test_client()
    assert client.get("/internal/prom").status_code == 200
    assert client.get("/metrics").status_code == 404
    assert metric_value(moved, "http_requests_total", route="/internal/prom") == 0

    hidden = gateway(make_app, METRICS_ENDPOINT=False)
    hidden.test_client().get("/items/1")
    assert hidden.test_client().get("/metrics").status_code == 404
    assert metric_value(hidden, "http_requests_total", route="/items/<int:item_id>") == 1


def test_openmetrics_is_negotiated(make_app: MakeApp) -> None:
    """Accept asking for OpenMetrics 1.0.0 gets it (with # EOF); otherwise text 0.0.4."""
    app = gateway(make_app)
    client = app.test_client()
    client.get("/items/1")
    prometheus_accept = (
        "application/openmetrics-text;version=1.0.0;q=0.5,"
        "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
    )
    om = client.get("/metrics", headers={"Accept": prometheus_accept})
    assert om.headers["Content-Type"] == CONTENT_TYPE_OPENMETRICS
    body = om.get_data(as_text=True)
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(body)}
    assert families["http_requests"].type == "counter"
    assert "process_cpu_seconds" in families
    plain = client.get("/metrics")
    assert plain.headers["Content-Type"] == CONTENT_TYPE_TEXT
    assert "# EOF" not in plain.get_data(as_text=True)
    assert not wants_openmetrics("application/openmetrics-text;version=0.0.1")
    assert not wants_openmetrics("application/openmetrics-text;q=0")
    assert not wants_openmetrics("text/plain;q=1,application/openmetrics-text;q=0.5")
    assert wants_openmetrics("application/openmetrics-text")


def test_openmetrics_negotiation_ignores_case(make_app: MakeApp) -> None:
    """Media type and parameter names in Accept match whatever their case."""
    assert wants_openmetrics("Application/OpenMetrics-Text; Version=1.0.0")
    assert wants_openmetrics("APPLICATION/OPENMETRICS-TEXT")
    assert not wants_openmetrics("Application/OpenMetrics-Text; Q=0")
    assert not wants_openmetrics("Application/OpenMetrics-Text;q=0.2, Text/Plain")
    app = gateway(make_app)
    response = app.test_client().get(
        "/metrics", headers={"Accept": "Application/OpenMetrics-Text; version=1.0.0"}
    )
    assert response.headers["Content-Type"] == CONTENT_TYPE_OPENMETRICS
    assert response.get_data(as_text=True).endswith("# EOF\n")


def test_gzip_when_accepted(make_app: MakeApp) -> None:
    """Accept-Encoding: gzip gets a gzipped body equal to the plain one; q=0 refuses it."""
    app = gateway(make_app)
    client = app.test_client()
    client.get("/items/1")
    zipped = client.get("/metrics", headers={"Accept-Encoding": "gzip, deflate"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"]
    plain = client.get("/metrics", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in plain.headers
    unzipped = gzip.decompress(zipped.data).decode()
    strip = [ln for ln in unzipped.splitlines() if not ln.startswith(("process_", "python_gc"))]
    plain_lines = plain.get_data(as_text=True).splitlines()
    assert strip == [ln for ln in plain_lines if not ln.startswith(("process_", "python_gc"))]


def test_namespace_prefixes_every_metric(make_app: MakeApp) -> None:
    """METRICS_NAMESPACE prefixes every name; metric_value accepts either spelling."""
    app = gateway(make_app, METRICS_NAMESPACE="gw")
    app.test_client().get("/items/1")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert "gw_http_requests_total{" in text
    assert "gw_app_info{" in text
    assert "\nhttp_requests_total" not in text
    assert metric_value(app, "http_requests_total") == 1
    assert metric_value(app, "gw_http_requests_total") == 1


def test_buckets_are_configurable(make_app: MakeApp) -> None:
    """METRICS_BUCKETS sets the duration histogram's bounds (+Inf added)."""
    app = gateway(make_app, METRICS_BUCKETS="0.2, 0.1")
    app.test_client().get("/items/1")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    bounds = {labels["le"] for labels, _ in samples(text, "http_request_duration_seconds_bucket")}
    assert bounds == {"0.1", "0.2", "+Inf"}


def test_bad_metrics_config_names_every_key(make_app: MakeApp) -> None:
    """Bad namespace, buckets and networks fail at init_app in one error."""
    with pytest.raises(ConfigError) as caught:
        make_app(
            config={
                Keys.METRICS_NAMESPACE: "my-app",
                Keys.METRICS_BUCKETS: [0.1, 0.1],
                Keys.METRICS_ALLOWED_NETWORKS: "10.0.0.0/8, not-a-net",
                Keys.METRICS_REGISTRY: "shared",
            }
        )
    keys = {key for key, _, _ in caught.value.problems}
    assert keys == {
        Keys.METRICS_NAMESPACE,
        Keys.METRICS_BUCKETS,
        Keys.METRICS_ALLOWED_NETWORKS,
        Keys.METRICS_REGISTRY,
    }


def test_render_cache_reuses_a_recent_scrape(make_app: MakeApp) -> None:
    """METRICS_CACHE_SECONDS serves the same body within the window; metric_value is live."""
    app = gateway(make_app, METRICS_CACHE_SECONDS=60)
    client = app.test_client()
    first = client.get("/metrics").data
    client.get("/items/1")
    assert client.get("/metrics").data == first
    assert metric_value(app, "http_requests_total") == 1


# --- protection ------------------------------------------------------------------------------


def test_token_protects_the_endpoint(make_app: MakeApp) -> None:
    """Missing or wrong bearer token: 401 problem+json; the right one: 200; none counted."""
    app = gateway(make_app, METRICS_TOKEN="s3cret")
    client = app.test_client()
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing.headers["Content-Type"] == "application/problem+json"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    body = missing.get_json()
    assert body["status"] == 401 and body["code"] == "unauthorized"
    assert body["request_id"] == missing.headers["X-Request-ID"]
    for header in ("Bearer wrong", "Basic s3cret", "s3cret", "Bearer ", "Bearer s3cret2"):
        assert client.get("/metrics", headers={"Authorization": header}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert b"s3cret" not in ok.data
    assert metric_value(app, "errors_total") == 0
    assert metric_value(app, "http_requests_total") == 0


def test_allowlist_protects_the_endpoint(make_app: MakeApp) -> None:
    """An address outside METRICS_ALLOWED_NETWORKS gets 403; inside (v4, v4-mapped v6) 200."""
    app = gateway(make_app, METRICS_ALLOWED_NETWORKS="10.1.0.0/16, ::1")
    client = app.test_client()

    def scrape(addr: str) -> int:
        return client.get("/metrics", environ_base={"REMOTE_ADDR": addr}).status_code

    assert scrape("10.1.2.3") == 200
    assert scrape("::ffff:10.1.2.3") == 200
    assert scrape("::1") == 200
    assert scrape("10.2.0.1") == 403
    assert scrape("127.0.0.1") == 403
    assert scrape("not-an-ip") == 403
    assert scrape("") == 403
    refused = client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.1"})
    assert refused.get_json()["code"] == "forbidden"


def test_allowlist_and_token_together(make_app: MakeApp) -> None:
    """With both set an allowed address still needs the token; a token cannot bypass 403."""
    app = gateway(make_app, METRICS_ALLOWED_NETWORKS="10.0.0.0/8", METRICS_TOKEN="t")
    client = app.test_client()
    good = {"Authorization": "Bearer t"}
    assert (
        client.get("/metrics", headers=good, environ_base={"REMOTE_ADDR": "10.0.0.5"}).status_code
        == 200
    )
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.0.0.5"}).status_code == 401
    assert (
        client.get("/metrics", headers=good, environ_base={"REMOTE_ADDR": "11.0.0.5"}).status_code
        == 403
    )


def test_refused_scrape_is_not_an_app_error(make_app: MakeApp) -> None:
    """A refused scrape logs no warning or error and reaches no error listener."""
    app = gateway(make_app, METRICS_TOKEN="t")
    heard: list[Any] = []
    app.extensions["gateway_obs"].error_listeners.append(heard.append)
    with capture_logs() as logs:
        refused = app.test_client().get("/metrics")
    assert json.loads(refused.data)["status"] == 401
    assert not [r for r in logs.records if r["level"] in ("error", "warning")]
    assert heard == []
