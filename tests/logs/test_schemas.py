"""GATEWAY_OBS_LOG_SCHEMA: ECS in the layout of Elastic's ecs-logging, the OpenTelemetry
log data model; redaction, one record per line and the access-log fast path in each."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import flask_gateway_obs.logs.access as access_module
from flask_gateway_obs import bind_context, get_logger
from flask_gateway_obs.config import ConfigError, Keys
from flask_gateway_obs.core.context import current_request
from flask_gateway_obs.logs.formatters import AccessEntry
from flask_gateway_obs.logs.schemas import ECS_VERSION, EcsFormatter, OtelFormatter, severity_number

from ..conftest import MakeApp, unavailable

SECRET = "canary-s3cret-value"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SPAN_ID = "00f067aa0ba902b7"
SCHEMAS = ("default", "ecs", "otel")


@contextlib.contextmanager
def our_handlers_only() -> Iterator[None]:
    """Take the test runner's capture handlers off the root logger meanwhile, so that the
    production set-up (our handler alone) and its access-log fast path are exercised.
    (pytest adds them again for each test phase: a fixture cannot do this for the test.)"""
    root = logging.getLogger()
    foreign = [h for h in root.handlers if type(h).__module__.startswith("_pytest")]
    for handler in foreign:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            root.addHandler(handler)


def get(app: Flask, path: str, **kwargs: Any) -> Any:
    """One request through the production logging set-up."""
    with our_handlers_only():
        return app.test_client().get(path, **kwargs)


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def gateway(make_app: MakeApp, schema: str, **config: Any) -> Flask:
    app = make_app({Keys.LOG_SCHEMA: schema, Keys.SERVICE_NAME: "gw", **config})

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        ctx = current_request.get()
        assert ctx is not None
        ctx.span_id = SPAN_ID  # what the tracing concern sets for the server span
        bind_context(tenant="acme", api_token=SECRET)
        get_logger("orders").info("charged", amount=12, password=SECRET)
        return {"id": item_id}

    return app


def access_of(records: list[dict[str, Any]], schema: str) -> dict[str, Any]:
    def logger(record: dict[str, Any]) -> str:
        if schema == "ecs":
            return str(record["log"]["logger"])
        if schema == "otel":
            return str(record["instrumentation_scope"]["name"])
        return str(record["logger"])

    (found,) = [r for r in records if logger(r).endswith(".access")]
    return found


# --- ECS ------------------------------------------------------------------------------


def _records() -> list[logging.LogRecord]:
    plain = logging.makeLogRecord(
        {"name": "orders", "levelno": 20, "levelname": "INFO", "msg": "charged %s", "args": (12,)}
    )
    plain.amount, plain.tenant = 12, "acme"
    warning = logging.makeLogRecord(
        {"name": "x.y", "levelno": 30, "levelname": "WARNING", "msg": "slow", "lineno": 7}
    )
    try:
        raise ValueError("bad input")
    except ValueError:
        failed = logging.getLogger("app").makeRecord(
            "app", logging.ERROR, __file__, 1, "failed", (), sys.exc_info(), "view"
        )
    return [plain, warning, failed]


def test_ecs_has_the_layout_of_elastic_ecs_logging() -> None:
    """The same records formatted by ecs-logging's StdlibFormatter and ours: every field it
    writes is in ours with the same value (the stack trace aside, ours is the whole
    traceback), @timestamp, log.level and message first."""
    try:
        import ecs_logging
    except ImportError as exc:
        unavailable(f"ecs-logging is not installed: {exc}")
        raise AssertionError from exc  # unreachable
    theirs_formatter, ours_formatter = ecs_logging.StdlibFormatter(), EcsFormatter("gw")
    for record in _records():
        theirs = json.loads(theirs_formatter.format(record))
        ours = json.loads(ours_formatter.format(record))
        assert list(ours)[:3] == list(theirs)[:3] == ["@timestamp", "log.level", "message"]
        mine, reference = flat(ours), flat(theirs)
        assert set(reference) <= set(mine), set(reference) - set(mine)
        for key, value in reference.items():
            if key != "error.stack_trace":
                assert mine[key] == value, key
        assert mine["ecs.version"] == ECS_VERSION
        assert mine["service.name"] == "gw"
    failed = flat(json.loads(ours_formatter.format(_records()[2])))
    assert failed["error.type"] == "ValueError" and "bad input" in failed["error.stack_trace"]


def test_ecs_access_line_carries_the_request_under_ecs_names(make_app: MakeApp, capsys) -> None:
    """http.*, url.path, the route under gateway, event.duration in ns, client, agent,
    trace.id, span.id, service.name; no field of the default layout left over."""
    app = gateway(make_app, "ecs")
    response = get(
        app, "/items/5?token=abc", headers={"traceparent": TRACEPARENT, "User-Agent": "probe/1"}
    )
    records = lines(capsys.readouterr().out)
    access = flat(access_of(records, "ecs"))
    assert access == {
        **access,
        "http.request.id": response.headers["X-Request-ID"],
        "http.request.method": "GET",
        "url.path": "/items/5",
        "gateway.route": "/items/<int:item_id>",
        "http.response.status_code": 200,
        "http.response.body.bytes": len(response.data),
        "client.address": "127.0.0.1",
        "user_agent.original": "probe/1",
        "trace.id": "0af7651916cd43dd8448eb211c80319c",
        "span.id": SPAN_ID,
        "service.name": "gw",
        "log.logger": "flask_gateway_obs.access",
        "ecs.version": ECS_VERSION,
        "tenant": "acme",
    }
    assert isinstance(access["event.duration"], int) and access["event.duration"] > 0
    assert not {"method", "path", "status", "duration_ms", "request_id", "timestamp"} & set(access)


def test_ecs_extra_fields_nest_at_dots_and_never_replace_ecs_fields() -> None:
    """labels.tenant nests like ecs-logging does; an extra named like an ECS object stays
    flat with a trailing underscore."""
    record = logging.makeLogRecord({"name": "a", "levelno": 20, "levelname": "INFO", "msg": "m"})
    record.__dict__.update({"labels.tenant": "acme", "service": "other", "http.request.id": "x"})
    doc = json.loads(EcsFormatter("gw").format(record))
    assert doc["labels"] == {"tenant": "acme"}
    assert doc["service"] == {"name": "gw"}
    assert doc["service_"] == "other" and doc["http.request.id_"] == "x"


# --- OpenTelemetry -------------------------------------------------------------------


def test_otel_log_data_model(make_app: MakeApp, capsys) -> None:
    """timestamp (ns), severity, body, attributes, trace_id, span_id and
    resource.service.name; the logger is the instrumentation scope."""
    app = gateway(make_app, "otel")
    before = time.time_ns()
    response = get(app, "/items/5", headers={"traceparent": TRACEPARENT})
    records = lines(capsys.readouterr().out)
    charged = next(r for r in records if r["body"] == "charged")
    assert before <= charged["timestamp"] <= time.time_ns()
    assert (charged["severity_text"], charged["severity_number"]) == ("INFO", 9)
    assert charged["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert charged["span_id"] == SPAN_ID
    assert charged["resource"]["service.name"] == "gw"
    assert charged["instrumentation_scope"] == {"name": "orders"}
    assert charged["attributes"]["amount"] == 12
    assert charged["attributes"]["http.request.id"] == response.headers["X-Request-ID"]
    access = access_of(records, "otel")["attributes"]
    assert access == {
        **access,
        "http.request.method": "GET",
        "url.path": "/items/5",
        "http.route": "/items/<int:item_id>",
        "http.response.status_code": 200,
        "client.address": "127.0.0.1",
        "tenant": "acme",
    }
    assert 0 < access["http.server.request.duration"] < 60


def test_otel_exception_attributes() -> None:
    """An exception becomes exception.type, exception.message and exception.stacktrace."""
    doc = json.loads(OtelFormatter("gw").format(_records()[2]))
    assert (doc["severity_text"], doc["severity_number"]) == ("ERROR", 17)
    attributes = doc["attributes"]
    assert attributes["exception.type"] == "ValueError"
    assert attributes["exception.message"] == "bad input"
    assert "Traceback" in attributes["exception.stacktrace"]
    assert "trace_id" not in doc  # outside a request: no trace context


@pytest.mark.parametrize(
    ("level", "number"),
    [(5, 0), (10, 5), (15, 8), (20, 9), (21, 10), (30, 13), (40, 17), (50, 21), (60, 24)],
)
def test_otel_severity_numbers(level: int, number: int) -> None:
    """Logging levels map onto OpenTelemetry's severity numbers (DEBUG 5 ... FATAL 21)."""
    assert severity_number(level) == number


def test_otel_severity_numbers_are_those_of_opentelemetrys_logging_handler() -> None:
    """Every level from 0 to 60 gets the number OpenTelemetry's SDK gives it."""
    from opentelemetry.sdk._logs._internal import std_to_otel

    assert [severity_number(n) for n in range(61)] == [std_to_otel(n).value for n in range(61)]


# --- every schema ---------------------------------------------------------------------


@pytest.mark.parametrize("schema", SCHEMAS)
def test_secrets_are_redacted_in_every_schema(make_app: MakeApp, capsys, schema: str) -> None:
    """Secret keys, bound secrets and URL passwords never reach a line, in any schema."""
    app = gateway(make_app, schema)

    @app.get("/fail")
    def fail() -> str:
        raise RuntimeError(f"lost postgresql://orders:{SECRET}@db/orders")

    get(app, "/items/1")
    get(app, "/fail")
    out = capsys.readouterr().out
    assert SECRET not in out
    assert out.count("[REDACTED]") == 3  # password; the bound api_token on two lines


@pytest.mark.parametrize("schema", SCHEMAS)
def test_one_record_is_one_line_in_every_schema(make_app: MakeApp, capsys, schema: str) -> None:
    """Newlines, U+2028 and control characters in messages and paths stay inside one line."""
    app = make_app({Keys.LOG_SCHEMA: schema})

    @app.get("/x")
    def view() -> str:
        logging.getLogger("a").warning("line one\nline two\u2028three\x1b[31m")
        return "ok"

    get(app, "/x")
    get(app, "/a%0Ab\u2028")
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 3 == len(lines(out))
    assert "\u2028" not in out


@pytest.mark.parametrize("schema", SCHEMAS)
def test_access_line_takes_the_fast_path_in_every_schema(
    make_app: MakeApp, capsys, monkeypatch: pytest.MonkeyPatch, schema: str
) -> None:
    """With our handler alone, the access line is written without a LogRecord, and it is
    the line the ordinary path writes once another handler listens."""
    app = gateway(make_app, schema)
    records: list[str] = []
    real_emit = access_module.emit

    def spy(logger: logging.Logger, *args: Any) -> None:
        records.append(logger.name)
        real_emit(logger, *args)

    monkeypatch.setattr(access_module, "emit", spy)
    get(app, "/items/1", headers={"X-Request-ID": "fast", "traceparent": TRACEPARENT})
    assert records == []
    extra = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(extra)
    try:
        get(app, "/items/1", headers={"X-Request-ID": "slow", "traceparent": TRACEPARENT})
    finally:
        logging.getLogger().removeHandler(extra)
    assert records == ["flask_gateway_obs.access"]
    out = lines(capsys.readouterr().out)
    fast_line = flat(access_of(out[: len(out) // 2], schema))
    slow_line = flat(access_of(out[len(out) // 2 :], schema))
    volatile = {"timestamp", "@timestamp", "duration_ms", "event.duration"}
    volatile |= {"attributes.http.server.request.duration", "request_id", "http.request.id"}
    volatile |= {"attributes.http.request.id"}
    assert fast_line.keys() == slow_line.keys()
    assert {k: v for k, v in fast_line.items() if k not in volatile} == {
        k: v for k, v in slow_line.items() if k not in volatile
    }


def test_log_file_follows_the_schema(make_app: MakeApp, tmp_path: Path, capsys) -> None:
    """GATEWAY_OBS_LOG_FILE writes the same schema as stdout."""
    path = tmp_path / "app.log"
    app = gateway(make_app, "ecs", **{Keys.LOG_FILE: str(path)})
    get(app, "/items/1")
    for handler in logging.getLogger().handlers:
        handler.flush()
    written = lines(path.read_text())
    assert written and all(r["ecs.version"] == ECS_VERSION for r in written)
    capsys.readouterr()


def test_console_format_ignores_the_schema(make_app: MakeApp, capsys) -> None:
    """The console format is for people: the schema applies to JSON only."""
    app = make_app({Keys.LOG_SCHEMA: "otel", Keys.LOG_FORMAT: "console"})
    get(app, "/nowhere")
    out = capsys.readouterr().out
    assert "GET /nowhere 404" in out and not out.lstrip().startswith("{")


def test_unknown_schema_is_a_config_error(make_app: MakeApp) -> None:
    """A schema that does not exist fails at init_app, naming the three that do."""
    with pytest.raises(ConfigError, match="one of default, ecs, otel"):
        make_app({Keys.LOG_SCHEMA: "gelf"})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_worker_lines_carry_its_own_pid() -> None:
    """After a fork (a gunicorn worker) the fast access lines name the child's pid."""
    entry = AccessEntry("GET", "/x", "/x", 200, 0.001, "127.0.0.1", "ua", 2)
    ecs, otel = EcsFormatter("gw"), OtelFormatter("gw")
    ecs.access_line(entry), otel.access_line(entry)  # the parent's pid is cached now
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+: "multi-threaded, fork() may deadlock"; none here
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write, (ecs.access_line(entry) + "\n" + otel.access_line(entry)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        ecs_line, otel_line = (json.loads(line) for line in pipe.read().splitlines())
    os.waitpid(child, 0)
    assert ecs_line["process"]["pid"] == child != os.getpid()
    assert otel_line["resource"]["process.pid"] == child


def test_records_without_a_caller_have_no_empty_origin() -> None:
    """A record made without a caller lookup (the hot paths' emit) carries no null field."""
    record = logging.getLogger("a").makeRecord("a", logging.INFO, "(gateway)", 0, "m", (), None)
    ecs = json.loads(EcsFormatter("gw").format(record))
    assert "function" not in ecs["log"]["origin"] and None not in flat(ecs).values()
    otel = json.loads(OtelFormatter("gw").format(record))
    assert not any(key.startswith("code.") for key in otel["attributes"])


@pytest.mark.parametrize("schema", SCHEMAS)
def test_hostile_requests_keep_every_schema_one_valid_line(
    make_app: MakeApp, capsys, schema: str
) -> None:
    """Quotes, backslashes, control and non-ASCII characters in the path, agent and
    method, and credentials in the path, never break the line nor reach it unmasked."""
    app = gateway(make_app, schema)
    hostile = '/a"b\\c/%0A/\u00e9\u2028/<x>'
    get(app, hostile, environ_overrides={"HTTP_USER_AGENT": 'ua "quoted" \\ \u00fc\r\n'})
    get(app, "/go/https://user:hunter22@host/x")
    with our_handlers_only():
        app.test_client().open("/items/1", method='BR"EW\\')
    out = capsys.readouterr().out
    first, second, third = (flat(access_of([line], schema)) for line in lines(out))
    assert len(out.splitlines()) == 3
    assert hostile.replace("%0A", "\n") in first.values()
    assert 'ua "quoted" \\ \u00fc\r\n' in first.values()
    assert "hunter22" not in json.dumps([v for k, v in second.items() if "path" not in k])
    assert 'BR"EW\\' in third.values()
    assert "\u2028" not in out
