"""The request context: bound fields on every line of a request, and only that request."""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response

from flask_gateway_obs import bind_context, get_logger, get_request_id
from flask_gateway_obs.core.context import (
    RequestContext,
    current_request,
    new_request_id,
    valid_request_id,
)
from flask_gateway_obs.logs import JsonFormatter
from flask_gateway_obs.testing import capture_logs


@pytest.fixture(autouse=True)
def _only_our_handlers() -> Iterator[None]:
    """The production set-up (our handler alone), so the access line takes its fast path."""
    root = logging.getLogger()
    foreign = [h for h in root.handlers if type(h).__module__.startswith("_pytest")]
    for handler in foreign:
        root.removeHandler(handler)
    yield
    for handler in foreign:
        root.addHandler(handler)


def lines(out: str) -> list[dict[str, Any]]:
    """Every stdout line parsed as JSON."""
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def bound_app(make_app: Any) -> Flask:
    """An app whose views bind fields and log."""
    app: Flask = make_app()

    @app.get("/orders/<tenant>")
    def orders(tenant: str) -> dict[str, Any]:
        bind_context(tenant=tenant, api_token="sk_live_abc", status="shadow")
        get_logger("orders").info("listed")
        return {"request_id": get_request_id()}

    @app.get("/plain")
    def plain() -> str:
        get_logger("orders").info("plain")
        return "ok"

    @app.get("/stream")
    def stream() -> Response:
        bind_context(tenant="streamer")

        def chunks() -> Iterator[str]:
            get_logger("orders").info("chunk")
            yield "a"

        return Response(chunks())

    return app


def test_bound_fields_are_on_every_line_of_the_request_the_access_line_included(
    make_app: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fields bound in a view appear on its log lines and its access line, redacted."""
    app = bound_app(make_app)
    app.test_client().get("/orders/acme")
    records = lines(capsys.readouterr().out)
    listed = next(r for r in records if r["message"] == "listed")
    access = next(r for r in records if r["logger"] == "flask_gateway_obs.access")
    for record in (listed, access):
        assert record["tenant"] == "acme"
        assert record["api_token"] == "[REDACTED]"
    # a bound field never replaces a standard one
    assert access["status"] == 200 and access["status_"] == "shadow"


def test_bound_fields_are_gone_when_the_request_ends(
    make_app: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The next request on the same thread carries none of the previous one's fields."""
    app = bound_app(make_app)
    client = app.test_client()
    client.get("/orders/acme")
    capsys.readouterr()
    client.get("/plain")
    assert all("tenant" not in r for r in lines(capsys.readouterr().out))


def test_threads_never_share_bound_fields(make_app: Any) -> None:
    """Concurrent requests each keep their own tenant on their own lines."""
    app = bound_app(make_app)
    errors: list[str] = []
    with capture_logs("orders") as captured:

        def call(tenant: str) -> None:
            for _ in range(20):
                if app.test_client().get(f"/orders/{tenant}").status_code != 200:
                    errors.append(tenant)

        threads = [threading.Thread(target=call, args=(f"t{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert len(captured.records) == 80
    by_request: dict[str, set[str]] = {}
    for record in captured.records:
        by_request.setdefault(record["request_id"], set()).add(record["tenant"])
    assert all(len(tenants) == 1 for tenants in by_request.values())


def test_a_streamed_body_keeps_its_bound_fields(
    make_app: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lines written while a body streams carry the fields bound by its view."""
    app = bound_app(make_app)
    response = app.test_client().get("/stream")
    assert response.get_data() == b"a"
    chunk = next(r for r in lines(capsys.readouterr().out) if r["message"] == "chunk")
    assert chunk["tenant"] == "streamer"


def test_bind_context_outside_a_request_binds_nothing() -> None:
    """Outside a request there is nothing to bind to: no error, no field anywhere."""
    bind_context(tenant="nobody")
    formatter = JsonFormatter("svc")
    record = logging.makeLogRecord({"msg": "x", "name": "n", "levelno": 20})
    assert "tenant" not in json.loads(formatter.format(record))


def test_trace_and_span_ids_of_the_context_are_on_log_lines() -> None:
    """A context with a trace and span ID puts both on the lines written inside it."""
    ctx = RequestContext("rid", "svc", 0.0, trace_id="ab" * 16)
    ctx.span_id = "cd" * 8
    token = current_request.set(ctx)
    try:
        record = logging.makeLogRecord({"msg": "x", "name": "n", "levelno": 20})
        payload = json.loads(JsonFormatter("svc").format(record))
    finally:
        current_request.reset(token)
    assert (payload["trace_id"], payload["span_id"]) == ("ab" * 16, "cd" * 8)


def test_new_request_ids_are_distinct_uuid4_texts() -> None:
    """Generated IDs are RFC 9562 version-4 UUIDs in canonical text, never repeated."""
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert valid_request_id(text)


def test_new_request_ids_from_many_threads_never_collide() -> None:
    """Threads drawing IDs at once each get their own."""
    drawn: list[list[str]] = [[] for _ in range(8)]

    def draw(into: list[str]) -> None:
        for _ in range(500):
            into.append(new_request_id())

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [text for into in drawn for text in into]
    assert len(set(every)) == len(every) == 4000


def test_a_forked_child_never_repeats_its_parents_request_ids() -> None:
    """A child forked mid-batch (a gunicorn worker) draws fresh IDs, not the parent's next ones."""
    new_request_id()  # the parent holds a batch in progress
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.write(write, " ".join(new_request_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_request_id() for _ in range(100)}
    assert len(child) == 100
    assert not child & parent
