"""Metrics per request: exact counts, bounded labels, in-flight, what promtool accepts."""

from __future__ import annotations

import random
import string
import threading
from typing import Any

import pytest
from flask import Flask
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from flask_gateway_obs.labels import OTHER_METHOD, STANDARD_METHODS, UNMATCHED_ROUTE
from flask_gateway_obs.metrics import app_metrics
from flask_gateway_obs.testing import metric_value

from ..conftest import MakeApp
from .helpers import OPENMETRICS, gateway, promtool_check, promtool_check_openmetrics, samples

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


def test_threads_serving_at_once_lose_no_count(make_app: MakeApp) -> None:
    """Requests served by many threads at once are each counted once, and in-flight
    returns to 0 (a threaded server)."""
    app = gateway(make_app)
    per_thread, threads = 200, 6
    start = threading.Barrier(threads)

    def serve() -> None:
        client = app.test_client()
        start.wait()
        for _ in range(per_thread):
            client.get("/items/1")

    workers = [threading.Thread(target=serve) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = per_thread * threads
    assert metric_value(app, "http_requests_total", route="/items/<int:item_id>") == total
    assert metric_value(app, "http_request_duration_seconds_count", method="GET") == total
    assert metric_value(app, "active_connections") == 0


def test_broken_metric_never_breaks_a_request(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure inside the metrics observer is contained: the request still answers."""
    app = gateway(make_app)
    app.test_client().get("/items/1")

    def broken(*_: object) -> None:
        raise RuntimeError("metric store gone")

    http = app_metrics(app).http
    monkeypatch.setattr(http, "request_started", broken)
    monkeypatch.setattr(http, "request_finished", broken)
    response = app.test_client().get("/items/1")
    assert response.status_code == 200
    assert response.get_json() == {"id": 1}


def test_metric_value_reports_unknown_names_and_sums_subsets(make_app: MakeApp) -> None:
    """metric_value sums over matching series, is 0 for none yet, and rejects unknown names."""
    app = gateway(make_app)
    assert metric_value(app, "http_requests_total", route="/items/<int:item_id>") == 0
    with pytest.raises(KeyError, match="http_request_total"):
        metric_value(app, "http_request_total")
    with pytest.raises(RuntimeError, match="not set up"):
        metric_value(Flask("bare"), "http_requests_total")


# --- promtool --------------------------------------------------------------------------------


def _populated(make_app: MakeApp) -> Flask:
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
    return app


def test_exposition_passes_promtool(make_app: MakeApp) -> None:
    """A populated text exposition passes promtool check metrics, lint included."""
    app = _populated(make_app)
    promtool_check(app.test_client().get("/metrics").get_data(as_text=True))


def test_openmetrics_exposition_passes_promtool(make_app: MakeApp) -> None:
    """A populated OpenMetrics exposition passes promtool's and prometheus_client's
    OpenMetrics parsers."""
    app = _populated(make_app)
    text = app.test_client().get("/metrics", headers=OPENMETRICS).get_data(as_text=True)
    assert {f.name for f in parse_openmetrics(text)} >= {"http_requests", "app"}
    promtool_check_openmetrics(text)
