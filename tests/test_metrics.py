"""Metrics: exact counts, bounded labels, /metrics (formats, protection), recorder, reader."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import shutil
import string
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response, abort, stream_with_context
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from flask_gateway_obs import AppError, BadRequestError, ConfigError, GatewayObs, normalize_path
from flask_gateway_obs import metrics as metrics_module
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.contracts import Recorder
from flask_gateway_obs.exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    MultiprocessReader,
    render,
    wants_openmetrics,
)
from flask_gateway_obs.labels import OTHER_METHOD, STANDARD_METHODS, UNMATCHED_ROUTE
from flask_gateway_obs.metrics import MetricsRecorder, app_metrics
from flask_gateway_obs.testing import capture_logs, metric_value

from .conftest import MakeApp, unavailable

QUIET = {
    Keys.LOG_CONFIGURE: False,
    Keys.HEALTH_CHECK_DISK: False,
    Keys.HEALTH_CHECK_MEMORY: False,
}


def gateway(make_app: MakeApp, **config: Any) -> Flask:
    """An app with the routes the tests call: 200, 400, 500, 409 (AppError), a stream."""
    app = make_app(config={**QUIET, **{getattr(Keys, k): v for k, v in config.items()}})

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.post("/items")
    def create() -> tuple[dict[str, str], int]:
        return {"created": "yes"}, 201

    @app.get("/bad")
    def bad() -> None:
        raise BadRequestError("nope")

    @app.get("/boom")
    def boom() -> None:
        raise ZeroDivisionError("secret detail")

    @app.get("/conflict")
    def conflict() -> None:
        raise AppError("taken", 409, code="taken")

    @app.get("/abort")
    def aborted() -> None:
        abort(503)

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            yield "a"
            yield "b"

        return Response(stream_with_context(chunks()))

    @app.get("/in-flight")
    def in_flight() -> dict[str, float]:
        return {"value": metric_value(app, "active_connections")}

    return app


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


# --- exact values ------------------------------------------------------------------------


def test_known_sequence_gives_exact_counts(make_app: MakeApp) -> None:
    """After 2xx, 4xx, 5xx and AppError requests every counter and _count is exact."""
    app = gateway(make_app)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/items/1").status_code == 200
    assert client.post("/items").status_code == 201
    for _ in range(2):
        assert client.get("/bad").status_code == 400
    assert client.get("/boom").status_code == 500
    assert client.get("/conflict").status_code == 409
    assert client.get("/nowhere").status_code == 404

    def count(**labels: Any) -> float:
        return metric_value(app, "http_requests_total", **labels)

    assert count(method="GET", route="/items/<int:item_id>", status=200) == 3
    assert count(method="POST", route="/items", status=201) == 1
    assert count(method="GET", route="/bad", status=400) == 2
    assert count(method="GET", route="/boom", status=500) == 1
    assert count(method="GET", route="/conflict", status=409) == 1
    assert count(method="GET", route=UNMATCHED_ROUTE, status=404) == 1
    assert count() == 9
    text = app.test_client().get("/metrics").get_data(as_text=True)
    for labels, value in samples(text, "http_request_duration_seconds_count"):
        assert value == count(**labels), labels
    assert metric_value(app, "http_request_duration_seconds_count") == 9
    assert metric_value(app, "errors_total", type="BadRequestError", source="http") == 2
    assert metric_value(app, "errors_total", type="ZeroDivisionError", source="http") == 1
    assert metric_value(app, "errors_total", type="AppError", source="http") == 1
    assert metric_value(app, "errors_total", type="NotFound", source="http") == 1
    assert metric_value(app, "errors_total") == 5
    assert metric_value(app, "active_connections") == 0


def test_every_contract_metric_is_exposed_with_help_and_type(make_app: MakeApp) -> None:
    """Each metric of the contract is in /metrics with its type once it has a value."""
    app = gateway(make_app, SERVICE_VERSION="1.2.3")
    client = app.test_client()
    client.get("/boom")
    recorder = app.extensions["gateway_obs"].recorder
    recorder.dependency("redis", "GET", 0.01, False)
    recorder.breaker_state("payments", 1)
    recorder.retry_attempt("charge", "retry")
    recorder.rate_limit_exceeded("/items")
    recorder.health_check("redis", "healthy")
    text = client.get("/metrics").get_data(as_text=True)
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["http_requests"] == "counter"
    assert types["http_request_duration_seconds"] == "histogram"
    assert types["errors"] == "counter"
    assert types["active_connections"] == "gauge"
    assert types["dependency_latency_seconds"] == "histogram"
    assert types["circuit_breaker_state"] == "gauge"
    assert types["retry_attempts"] == "counter"
    assert types["rate_limit_exceeded"] == "counter"
    assert types["health_check_status"] == "gauge"
    assert 'app_info{service="testapp",version="1.2.3"} 1.0' in text
    assert "_created" not in text.replace("process_", "")


# --- bounded labels -------------------------------------------------------------------------


def test_random_unmatched_paths_share_one_route_label(make_app: MakeApp) -> None:
    """2,000 requests to random unknown paths add exactly one route label value."""
    app = gateway(make_app)
    client = app.test_client()
    rng = random.Random(7)
    for _ in range(2000):
        path = "/" + "/".join(
            "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(1, 12)))
            for _ in range(rng.randint(1, 4))
        )
        client.get(path)
    text = client.get("/metrics").get_data(as_text=True)
    routes = {labels["route"] for labels, _ in samples(text, "http_requests_total")}
    assert routes == {UNMATCHED_ROUTE}
    assert metric_value(app, "http_requests_total", route=UNMATCHED_ROUTE) == 2000


def test_random_methods_fold_into_other(make_app: MakeApp) -> None:
    """1,000 requests with random methods give only standard methods and OTHER."""
    app = gateway(make_app)
    client = app.test_client()
    rng = random.Random(11)
    choices = [*STANDARD_METHODS, "PROPFIND", "BREW", "get", "X" * 300]
    for _ in range(1000):
        method = rng.choice([*choices, "".join(rng.choices(string.ascii_uppercase, k=6))])
        client.open("/items/1", method=method)
    text = client.get("/metrics").get_data(as_text=True)
    methods = {labels["method"] for labels, _ in samples(text, "http_requests_total")}
    assert methods <= STANDARD_METHODS | {OTHER_METHOD}
    assert OTHER_METHOD in methods
    assert metric_value(app, "http_requests_total") == 1000


def test_recorder_labels_are_capped(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recorder fed unbounded values folds label sets past the limit into 'other'."""
    monkeypatch.setattr(metrics_module, "LABEL_SET_LIMIT", 5)
    app = gateway(make_app)
    recorder = app.extensions["gateway_obs"].recorder
    with capture_logs("flask_gateway_obs.metrics") as logs:
        for i in range(50):
            recorder.retry_attempt(f"op-{i}", "retry")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    operations = {labels["operation"] for labels, _ in samples(text, "retry_attempts_total")}
    assert len(operations) == 6
    assert "other" in operations
    assert metric_value(app, "retry_attempts_total") == 50
    assert len(logs.find(level="warning")) == 1


def test_hostile_label_text_still_parses(make_app: MakeApp) -> None:
    """Quotes, backslashes, newlines and 8 kB values never break the exposition."""
    app = gateway(make_app)

    @app.get('/odd/"quoted"/back\\slash')
    def odd() -> str:
        return "odd"

    client = app.test_client()
    hostile = ['/"q"', "/back\\slash", "/new%0Aline", "/x" + "y" * 8192, "/%22%5C%0A"]
    for path in hostile:
        client.get(path)
    client.get('/odd/"quoted"/back\\slash')
    recorder = app.extensions["gateway_obs"].recorder
    recorder.health_check('check "one"\\\nnext', "degraded")
    recorder.dependency("dep\n" + "z" * 8192, 'op "x"', 0.1, True)
    recorder.breaker_state("br\\", 2)
    text = client.get("/metrics").get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    routes = {s.labels["route"] for s in families["http_requests"].samples}
    assert routes == {UNMATCHED_ROUTE, '/odd/"quoted"/back\\slash'}
    checks = {s.labels["check"] for s in families["health_check_status"].samples}
    assert 'check "one"\\\nnext' in checks
    dependencies = {s.labels["dependency"] for s in families["dependency_latency_seconds"].samples}
    assert dependencies == {"dep\n" + "z" * 124}
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert list(parse_openmetrics(om.get_data(as_text=True)))
    promtool_check(text)


# --- apps side by side -------------------------------------------------------------------------


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
    from prometheus_client import REGISTRY

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
    for collector in list(metrics_module._global_collectors):
        REGISTRY.unregister(collector)
    metrics_module._global_collectors.clear()


@pytest.fixture
def global_registry() -> Iterator[None]:
    """Leaves prometheus_client.REGISTRY without the collectors a test's apps put there."""
    from prometheus_client import REGISTRY

    yield
    for collector in list(metrics_module._global_collectors):
        REGISTRY.unregister(collector)
    metrics_module._global_collectors.clear()


def test_global_registry_two_apps_scrape_each_family_once(
    make_app: MakeApp, global_registry: None
) -> None:
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
    from prometheus_client import REGISTRY, Counter

    theirs = Counter("clash_errors_total", "theirs", registry=REGISTRY)
    try:
        with pytest.raises(RuntimeError, match="GATEWAY_OBS_METRICS_NAMESPACE"):
            gateway(make_app, METRICS_REGISTRY="global", METRICS_NAMESPACE="clash")
    finally:
        REGISTRY.unregister(theirs)
        metrics_module._global_collectors.clear()


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


# --- in-flight requests ----------------------------------------------------------------------


def test_in_flight_counts_during_and_returns_to_zero(make_app: MakeApp) -> None:
    """active_connections is 1 inside a request, and while a body streams, and back to 0
    after errors, aborts and streams (once the server closes the body)."""
    app = gateway(make_app)
    client = app.test_client()
    assert client.get("/in-flight").get_json() == {"value": 1.0}
    client.get("/boom")
    client.get("/abort")
    client.open("/items/1", method="DELETE")
    assert metric_value(app, "active_connections") == 0
    streamed = client.get("/stream", buffered=False)
    assert metric_value(app, "active_connections") == 1  # its body is still streaming
    assert b"".join(streamed.response) == b"ab"  # type: ignore[arg-type]
    streamed.close()
    assert metric_value(app, "active_connections") == 0
    unread = client.get("/stream", buffered=False)
    unread.close()  # the client hangs up before reading the body
    assert metric_value(app, "active_connections") == 0
    assert metric_value(app, "http_requests_total", route="/stream", status=200) == 2


def test_broken_metric_never_breaks_a_request(make_app: MakeApp) -> None:
    """A failure inside the observer is contained: the request still answers."""
    app = gateway(make_app)
    app.test_client().get("/items/1")
    http = app_metrics(app).http

    def broken(_: float) -> None:
        raise RuntimeError("metric store gone")

    for key in list(http._entries):
        http._entries[key] = (broken, broken, None, None)
    assert app.test_client().get("/items/1").status_code == 200


# --- recorder ----------------------------------------------------------------------------------


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


def test_metric_value_reports_unknown_names_and_sums_subsets(make_app: MakeApp) -> None:
    """metric_value sums over matching series, is 0 for none yet, and rejects unknown names."""
    app = gateway(make_app)
    assert metric_value(app, "http_requests_total", route="/items/<int:item_id>") == 0
    with pytest.raises(KeyError, match="http_request_total"):
        metric_value(app, "http_request_total")
    with pytest.raises(RuntimeError, match="not set up"):
        metric_value(Flask("bare"), "http_requests_total")


# --- dependencies ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_track_dependency_context_manager(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The with-block observes its duration; a raised error counts once and propagates."""
    clock = FakeClock()
    monkeypatch.setattr(metrics_module, "_clock", clock)
    obs = GatewayObs()
    app = make_app(config=QUIET, init=False)
    obs.init_app(app)
    with obs.track_dependency("payments", "POST /charges"):
        clock.now += 2.0  # a slow upstream

    def refused() -> None:
        with obs.track_dependency("payments", "POST /charges"):
            clock.now += 0.003
            raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        refused()
    with obs.track_dependency("payments", "POST /charges") as call:
        call.mark_failed("HTTPStatus503")

    def value(name: str, **labels: Any) -> float:
        return metric_value(app, name, dependency="payments", **labels)

    assert value("dependency_latency_seconds_count") == 3
    assert value("dependency_latency_seconds_bucket", le="1.0") == 2
    assert value("dependency_latency_seconds_bucket", le="2.5") == 3
    assert metric_value(app, "errors_total", type="ConnectionError", source="dependency") == 1
    assert metric_value(app, "errors_total", type="HTTPStatus503", source="dependency") == 1


def test_track_dependency_decorates_sync_and_async(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decorator times each call separately, for plain and async functions."""
    clock = FakeClock()
    monkeypatch.setattr(metrics_module, "_clock", clock)
    obs = GatewayObs()

    @obs.track_dependency("inventory", normalize_path("/stock/42"))
    def lookup(fail: bool) -> str:
        clock.now += 0.02
        if fail:
            raise TimeoutError
        return "ok"

    @obs.track_dependency("inventory", "async")
    async def fetch() -> str:
        clock.now += 0.2
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


# --- multiprocess reader -------------------------------------------------------------------------


def _write(
    path: str,
    kind: str,
    pid: int,
    entries: list[tuple[str, str, dict[str, str], float, float]],
    help_text: str = "help",
) -> None:
    store = MmapedDict(os.path.join(path, f"{kind}_{pid}.db"))
    for metric, sample, labels, value, stamp in entries:
        key = mmap_key(metric, sample, list(labels), list(labels.values()), help_text)
        store.write_value(key, value, stamp)
    store.close()


def _mp_files(path: str) -> None:
    hist = "lat"
    for pid in (101, 102, 103):
        _write(
            path,
            "counter",
            pid,
            [
                ("reqs", "reqs_total", {"route": "/a", "status": "200"}, pid * 1.0, 0.0),
                ("reqs", "reqs_total", {"route": '/b"\\', "status": "500"}, 2.0, 0.0),
            ],
        )
        _write(
            path,
            "histogram",
            pid,
            [
                (hist, "lat_sum", {"route": "/a"}, 0.5, 0.0),
                *[
                    (hist, "lat_bucket", {"route": "/a", "le": le}, float(i + pid % 2), 0.0)
                    for i, le in enumerate(["0.1", "1.0", "+Inf"])
                ],
            ],
        )
        _write(
            path,
            "summary",
            pid,
            [
                ("sz", "sz_count", {}, 3.0, 0.0),
                ("sz", "sz_sum", {}, 30.0, 0.0),
            ],
        )
        for mode in ("livesum", "max", "min", "livemostrecent", "all"):
            _write(
                path,
                f"gauge_{mode}",
                pid,
                [
                    (f"g_{mode}", f"g_{mode}", {"k": "v"}, float(pid % 7), 1000.0 + pid),
                ],
            )
    _write(path, "gauge_livemostrecent", 104, [("g_never", "g_never", {}, 5.0, 0.0)])
    # An older release with another help text: still the same series.
    _write(
        path,
        "counter",
        105,
        [("reqs", "reqs_total", {"route": "/a", "status": "200"}, 1.0, 0.0)],
        "old help",
    )


def _parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_multiprocess_reader_matches_prometheus_client(tmp_path: Any) -> None:
    """Our merge of worker files gives prometheus_client's numbers for every type and mode."""
    path = str(tmp_path)
    _mp_files(path)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    theirs = _parsed(generate_latest(registry).decode())
    reader = MultiprocessReader(path)
    ours = _parsed(render(reader.families()).decode())
    assert ours == theirs
    assert ours[("reqs_total", (("route", "/a"), ("status", "200")))] == 307
    again = _parsed(render(reader.families()).decode())  # from the cached layouts
    assert again == ours
    om = render(reader.families(), openmetrics=True).decode()
    assert {f.name for f in parse_openmetrics(om)} >= {"reqs", "lat", "sz", "g_livesum"}


def test_multiprocess_reader_follows_growth_and_dead_workers(tmp_path: Any) -> None:
    """New series, a removed live-gauge file and a truncated file are all handled."""
    path = str(tmp_path)
    _mp_files(path)
    reader = MultiprocessReader(path)
    reader.families()
    _write(
        path, "counter", 101, [("reqs", "reqs_total", {"route": "/new", "status": "201"}, 4.0, 0.0)]
    )
    os.remove(os.path.join(path, "gauge_livesum_102.db"))
    with open(os.path.join(path, "counter_999.db"), "wb") as handle:
        handle.write((4096).to_bytes(4, "little") + b"\0" * 12)  # claims more than it holds
    with capture_logs("flask_gateway_obs.metrics"):
        text = render(reader.families()).decode()
    values = _parsed(text)
    assert values[("reqs_total", (("route", "/new"), ("status", "201")))] == 4
    assert values[("g_livesum", (("k", "v"),))] == 101 % 7 + 103 % 7


def test_multiprocess_reader_rereads_a_file_written_anew_with_the_same_size(
    tmp_path: Any,
) -> None:
    """A file replaced under the same name by one of the same size with its keys in
    another order (a new process with a dead one's pid) is parsed again, not misread."""
    path = str(tmp_path)
    first = [("g", "g", {"k": "a"}, 1.0, 0.0), ("g", "g", {"k": "b"}, 2.0, 0.0)]
    _write(path, "gauge_livesum", 7, first)
    reader = MultiprocessReader(path)
    assert _parsed(render(reader.families()).decode()) == {
        ("g", (("k", "a"),)): 1.0,
        ("g", (("k", "b"),)): 2.0,
    }
    newer = tmp_path / "newer"
    newer.mkdir()
    _write(str(newer), "gauge_livesum", 7, [(*first[1][:3], 20.0, 0.0), (*first[0][:3], 10.0, 0.0)])
    old_size = os.path.getsize(os.path.join(path, "gauge_livesum_7.db"))
    assert os.path.getsize(newer / "gauge_livesum_7.db") == old_size
    os.replace(newer / "gauge_livesum_7.db", os.path.join(path, "gauge_livesum_7.db"))
    assert _parsed(render(reader.families()).decode()) == {
        ("g", (("k", "a"),)): 10.0,
        ("g", (("k", "b"),)): 20.0,
    }


MULTIPROCESS_SCRIPT = """
import sys

from flask import Flask

from flask_gateway_obs import GatewayObs

app = Flask("script")
app.config.update(
    GATEWAY_OBS_LOG_CONFIGURE=False,
    GATEWAY_OBS_HEALTH_CHECK_DISK=False,
    GATEWAY_OBS_HEALTH_CHECK_MEMORY=False,
)
GatewayObs(app)
app.add_url_rule("/x", "x", lambda: "x")
if sys.argv[1] == "serve":
    client = app.test_client()
    client.get("/x")
    print(client.get("/metrics").get_data(as_text=True))
"""


@pytest.mark.parametrize("mode", ["load", "serve"])
def test_process_in_multiprocess_mode_leaves_no_live_gauge_file(tmp_path: Any, mode: str) -> None:
    """PROMETHEUS_MULTIPROC_DIR set: a process that only loads the app writes no metric
    file; one that served requests leaves its counters and histograms, no live gauge."""
    prom = tmp_path / "prom"
    prom.mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(metrics_module.__file__)))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom), "PYTHONPATH": root}
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, mode],
        env=env,
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    kinds = sorted(name.rsplit("_", 1)[0] for name in os.listdir(prom))
    if mode == "load":
        assert kinds == []
    else:
        assert kinds == ["counter", "histogram"]
        scraped = _parsed(result.stdout)
        assert scraped[("active_connections", ())] == 0  # present, though it was idle
        assert (
            scraped[
                ("http_requests_total", (("method", "GET"), ("route", "/x"), ("status", "200")))
            ]
            == 1
        )


# --- promtool --------------------------------------------------------------------------------


def promtool_check(text: str) -> None:
    """``promtool check metrics`` accepts ``text`` (Debian package ``prometheus``)."""
    binary = shutil.which("promtool")
    if binary is None:
        unavailable("promtool is not installed (apt-get install prometheus)")
        return
    result = subprocess.run(
        [binary, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_exposition_passes_promtool(make_app: MakeApp) -> None:
    """A populated exposition passes promtool check metrics, lint included."""
    app = gateway(make_app, SERVICE_VERSION="2.0")
    client = app.test_client()
    for path in ("/items/1", "/bad", "/boom", "/nowhere", "/conflict"):
        client.get(path)
    recorder = app.extensions["gateway_obs"].recorder
    recorder.dependency("redis", "GET", 0.01, True)
    recorder.breaker_state("payments", 1)
    recorder.retry_attempt("charge", "retry")
    recorder.rate_limit_exceeded("/items")
    recorder.health_check("redis", "degraded")
    promtool_check(client.get("/metrics").get_data(as_text=True))


def test_late_multiproc_variable_is_warned_about(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """PROMETHEUS_MULTIPROC_DIR set after prometheus_client's import: a warning, one process."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with capture_logs("flask_gateway_obs.metrics") as logs:
        app = gateway(make_app)
    assert any("imported before" in r["message"] for r in logs.records)
    app.test_client().get("/items/1")
    assert metric_value(app, "http_requests_total") == 1
    assert not os.listdir(tmp_path)


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
