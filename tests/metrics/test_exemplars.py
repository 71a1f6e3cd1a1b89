"""Exemplars: in OpenMetrics the duration buckets carry the trace ID of sampled requests."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.samples import Sample

from flask_gateway_obs.core.context import RequestContext

from ..conftest import MakeApp
from .helpers import OPENMETRICS, gateway, promtool_check, promtool_check_openmetrics

SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


def bucket_exemplars(text: str, family: str = "http_request_duration_seconds") -> list[Sample]:
    """The bucket samples of ``family`` that carry an exemplar, in an OpenMetrics body."""
    families = {f.name: f for f in parse_openmetrics(text)}
    return [s for s in families[family].samples if s.exemplar is not None]


@pytest.mark.parametrize("namespace", [None, "gw"])
def test_sampled_request_leaves_its_trace_id_on_a_bucket(
    make_app: MakeApp, namespace: str | None
) -> None:
    """A request with a sampled traceparent: its trace ID is the exemplar of the bucket
    its duration fell in, in OpenMetrics only; promtool accepts both formats."""
    app = gateway(make_app, METRICS_NAMESPACE=namespace)
    client = app.test_client()
    client.get("/items/1")
    client.get("/items/2", headers={"traceparent": SAMPLED})
    om = client.get("/metrics", headers=OPENMETRICS).get_data(as_text=True)
    name = f"{namespace}_http_request_duration_seconds" if namespace else None
    found = bucket_exemplars(om, name or "http_request_duration_seconds")
    assert len(found) == 1
    sample = found[0]
    assert sample.name.endswith("_bucket")
    assert sample.labels["route"] == "/items/<int:item_id>"
    assert sample.exemplar.labels == {"trace_id": SAMPLED.split("-")[1]}
    assert 0 <= sample.exemplar.value <= float(sample.labels["le"])
    assert sample.exemplar.timestamp is not None
    text = client.get("/metrics").get_data(as_text=True)
    assert "trace_id" not in text and " # " not in text
    promtool_check(text)
    promtool_check_openmetrics(om)


def test_unsampled_and_untraced_requests_leave_no_exemplar(make_app: MakeApp) -> None:
    """An unsampled traceparent (flags 00), a malformed one or none: no exemplar at all."""
    app = gateway(make_app)
    client = app.test_client()
    client.get("/items/1")
    client.get("/items/1", headers={"traceparent": UNSAMPLED})
    client.get("/items/1", headers={"traceparent": "00-xyz-00f067aa0ba902b7-01"})
    om = client.get("/metrics", headers=OPENMETRICS).get_data(as_text=True)
    assert bucket_exemplars(om) == []
    assert "trace_id" not in om


def test_the_latest_sampled_request_of_a_bucket_wins(make_app: MakeApp) -> None:
    """Each bucket keeps the exemplar of its latest sampled request, per route and method."""
    app = gateway(make_app, METRICS_BUCKETS="60")  # every request falls in le="60.0"
    client = app.test_client()
    first = "00-" + "1" * 32 + "-00f067aa0ba902b7-01"
    second = "00-" + "2" * 32 + "-00f067aa0ba902b7-03"  # sampled, with another flag set
    other_route = "00-" + "3" * 32 + "-00f067aa0ba902b7-01"
    client.get("/items/1", headers={"traceparent": first})
    client.get("/items/1", headers={"traceparent": second})
    client.post("/items", headers={"traceparent": other_route})
    om = client.get("/metrics", headers=OPENMETRICS).get_data(as_text=True)
    by_route = {
        (s.labels["method"], s.labels["route"], s.labels["le"]): s.exemplar.labels["trace_id"]
        for s in bucket_exemplars(om)
    }
    assert by_route == {
        ("GET", "/items/<int:item_id>", "60.0"): "2" * 32,
        ("POST", "/items", "60.0"): "3" * 32,
    }


class SetsTrace:
    """A request observer that gives every request a trace, as the tracing concern does."""

    def __init__(self, flags: str) -> None:
        self.flags = flags

    def request_started(self, ctx: RequestContext) -> None:
        ctx.trace_id, ctx.trace_flags = "a" * 32, self.flags

    def request_finished(self, ctx: RequestContext, *_: Any) -> None:
        """Nothing to do at the end."""


@pytest.mark.parametrize(("flags", "expected"), [("01", 1), ("00", 0)])
def test_exemplars_follow_the_request_contexts_trace(
    make_app: MakeApp, flags: str, expected: int
) -> None:
    """Whoever sets the request's trace (the tracing concern, from its server span), a
    sampled one gives an exemplar and an unsampled one none."""
    app = gateway(make_app)
    app.extensions["gateway_obs"].observers.insert(0, SetsTrace(flags))
    client = app.test_client()
    client.get("/items/1")
    found = bucket_exemplars(client.get("/metrics", headers=OPENMETRICS).get_data(as_text=True))
    assert [s.exemplar.labels["trace_id"] for s in found] == ["a" * 32] * expected


def test_exemplars_survive_the_render_cache_per_format(make_app: MakeApp) -> None:
    """With METRICS_CACHE_SECONDS the text and OpenMetrics bodies are cached apart: the
    text body never carries the OpenMetrics exemplars."""
    app = gateway(make_app, METRICS_CACHE_SECONDS=60)
    client = app.test_client()
    client.get("/items/1", headers={"traceparent": SAMPLED})
    om = client.get("/metrics", headers=OPENMETRICS).get_data(as_text=True)
    text = client.get("/metrics").get_data(as_text=True)
    assert len(bucket_exemplars(om)) == 1
    assert "trace_id" not in text
