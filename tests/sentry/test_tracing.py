"""Sentry tracing (transactions) and the request's trace on error events."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask import request

from flask_gateway_obs import sentry
from flask_gateway_obs.core.context import RequestContext

from ..conftest import MakeApp
from ..sentry_sink import SentrySink
from .apps import report, sentry_app


def test_tracing_transactions_carry_the_route_not_the_raw_url_and_a_request_id(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """With tracing on, a transaction's URL has the route template as its path (a token in
    the path never leaves), no query string, body or cookies, and the request_id tag."""
    app = sentry_app(
        make_app, sink.dsn, SENTRY_TRACES_SAMPLE_RATE=1.0, SENTRY_SEND_DEFAULT_PII=True
    )

    @app.post("/reset/<reset_token>")
    def reset(reset_token: str) -> Any:
        return {"ok": 1}

    token, sig, note = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    client = app.test_client()
    client.set_cookie("sid", uuid.uuid4().hex)
    response = client.post(f"/reset/{token}?sig={sig}", json={"note": note})
    sentry.flush(timeout=5)
    [transaction] = sink.wait_for("transaction", 1)
    assert transaction["transaction"] == "/reset/<reset_token>"
    assert transaction["request"]["url"] == "http://localhost/reset/<reset_token>"
    assert set(transaction["request"]) <= {"url", "method", "headers"}
    assert transaction["tags"]["request_id"] == response.headers["X-Request-ID"]
    raw = sink.all_bytes()
    assert [v for v in (token, sig, note) if v.encode() in raw] == []


def test_tracing_enables_the_flask_integration_without_double_reports(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """traces_sample_rate > 0: transactions named by route, errors still reported once,
    the extension's own endpoints not traced, transactions scrubbed."""
    app = sentry_app(make_app, sink.dsn, SENTRY_TRACES_SAMPLE_RATE=1.0)
    app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False)
    app.extensions["gateway_obs"].add_internal_path("/items/9")

    @app.after_request
    def explode(response: Any) -> Any:
        # Flask runs after_request again on the error response: fail the first pass only
        if request.path == "/items/5" and response.status_code == 200:
            raise KeyError("after-request bug")
        return response

    secret = uuid.uuid4().hex
    report(app, f"/items/0?token={secret}")
    report(app, "/items/5")
    report(app, "/items/9")
    errors = sink.events()
    assert len(errors) == 2
    assert {e["exception"]["values"][-1]["type"] for e in errors} == {"RuntimeError", "KeyError"}
    assert all(e["tags"]["request_id"] for e in errors)
    transactions = sink.wait_for("transaction", 2)
    assert {t["transaction"] for t in transactions} == {"/items/<int:item_id>"}
    assert len(transactions) == 2
    assert secret.encode() not in sink.all_bytes()


def test_one_apps_internal_paths_do_not_switch_off_tracing_in_another(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Two apps sharing a client: a path internal to the first is traced in the second."""
    first = sentry_app(make_app, sink.dsn, SENTRY_TRACES_SAMPLE_RATE=1.0)
    second = sentry_app(make_app, sink.dsn, SENTRY_TRACES_SAMPLE_RATE=1.0)
    first.extensions["gateway_obs"].add_internal_path("/items/9")
    report(first, "/items/9")
    report(second, "/items/9")
    report(first, "/items/1")
    transactions = sink.wait_for("transaction", 2)
    sentry.flush(timeout=5)
    assert len(sink.items("transaction")) == 2  # second's /items/9 and first's /items/1
    assert {t["request"]["url"] for t in transactions} == {"http://localhost/items/<int:item_id>"}


@pytest.mark.parametrize("follow", [False, True])
def test_an_incoming_sentry_trace_header_decides_sampling_only_when_trusted(
    make_app: MakeApp, sink: SentrySink, follow: bool
) -> None:
    """A caller's ``sentry-trace: ...-1`` cannot force tracing unless
    GATEWAY_OBS_SENTRY_TRACES_FOLLOW_PARENT is on."""
    app = sentry_app(
        make_app,
        sink.dsn,
        SENTRY_TRACES_SAMPLE_RATE=1e-9,
        SENTRY_TRACES_FOLLOW_PARENT=follow,
    )
    header = f"{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-1"
    report(app, "/items/1", headers={"sentry-trace": header})
    report(app, "/items/0")  # an error event, sent after any transaction of the first
    sink.wait_for("event", 1)
    assert len(sink.items("transaction")) == (1 if follow else 0)


class _SpanSetter:
    """What the tracing concern does at the start of a request: it puts the server span's
    trace id and span id on the request's context (here without OpenTelemetry)."""

    def __init__(self, trace_id: str, span_id: str) -> None:
        self.trace_id = trace_id
        self.span_id = span_id

    def request_started(self, ctx: RequestContext) -> None:
        ctx.trace_id, ctx.span_id = self.trace_id, self.span_id

    def request_finished(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("sentry_tracing", [0.0, 1.0])
def test_error_events_carry_the_requests_trace_and_span_ids(
    make_app: MakeApp, sink: SentrySink, capsys: pytest.CaptureFixture[str], sentry_tracing: float
) -> None:
    """A request whose context has a trace id and a span id (the tracing concern's server
    span): its error event carries both in contexts.trace, as its log lines do, with or
    without Sentry's own tracing."""
    app = sentry_app(make_app, sink.dsn, SENTRY_TRACES_SAMPLE_RATE=sentry_tracing)
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    app.extensions["gateway_obs"].observers.insert(0, _SpanSetter(trace_id, span_id))
    report(app, "/items/0")
    [event] = sink.events()
    assert event["contexts"]["trace"]["trace_id"] == trace_id
    assert event["contexts"]["trace"]["span_id"] == span_id
    assert "parent_span_id" not in event["contexts"]["trace"]
    assert event["tags"]["trace_id"] == trace_id
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    access = [line for line in lines if line["logger"] == "flask_gateway_obs.access"]
    assert [(a["trace_id"], a["span_id"]) for a in access] == [(trace_id, span_id)]


def test_an_incoming_traceparent_is_the_trace_of_error_events(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Without tracing, the trace id of an incoming traceparent is the event's trace id;
    the span id is the event's own (the caller's span is not the event's)."""
    app = sentry_app(make_app, sink.dsn)
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    report(app, "/items/0", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    [event] = sink.events()
    trace = event["contexts"]["trace"]
    assert trace["trace_id"] == trace_id
    assert len(trace["span_id"]) == 16 and trace["span_id"] != parent
