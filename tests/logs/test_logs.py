"""Structured logs: JSON lines, request IDs on every line, access log, redaction, safety."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, current_app

from flask_gateway_obs import GatewayObs, get_logger, get_request_id
from flask_gateway_obs.config import Keys
from flask_gateway_obs.logs import (
    ConsoleFormatter,
    JsonFormatter,
    RequestContextFilter,
    escape_control,
    mask_url_credentials,
)

SECRET = "canary-s3cret-value"


@pytest.fixture(autouse=True)
def _only_our_handlers() -> Iterator[None]:
    """Take the test runner's own capture handlers off the root logger for these tests,
    so that the production set-up (our handler alone) and its fast path are exercised."""
    root = logging.getLogger()
    foreign = [h for h in root.handlers if type(h).__module__.startswith("_pytest")]
    for handler in foreign:
        root.removeHandler(handler)
    yield
    for handler in foreign:
        root.addHandler(handler)


def json_lines(out: str) -> list[dict[str, Any]]:
    """Every stdout line parsed as JSON (fails the test on a non-JSON line)."""
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def add_logging_routes(app: Flask) -> None:
    @app.get("/log")
    def log_view() -> dict[str, Any]:
        current_app.logger.info("from app.logger")
        logging.getLogger("some.library").warning("from a library")
        get_logger("orders", order_id=7).child(step="pay").info("charged", amount=12)
        return {"request_id": get_request_id()}


def test_json_lines_carry_the_contract_fields(make_app, capsys) -> None:
    """Every line is JSON with timestamp, level, logger, message, service and request_id."""
    app = make_app({Keys.SERVICE_NAME: "gw"})
    add_logging_routes(app)
    response = app.test_client().get("/log")
    request_id = response.headers["X-Request-ID"]
    records = json_lines(capsys.readouterr().out)
    assert {r["message"] for r in records} >= {"from app.logger", "from a library", "charged"}
    for record in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
        assert record["service"] == "gw"
        assert record["request_id"] == request_id
        assert record["level"] in {"info", "warning"}
    charged = next(r for r in records if r["message"] == "charged")
    assert charged == {**charged, "logger": "orders", "order_id": 7, "step": "pay", "amount": 12}


def test_service_defaults_to_the_import_name(make_app, capsys) -> None:
    """Without SERVICE_NAME, ``service`` is the app's import name."""
    app = make_app()
    app.test_client().get("/nowhere")
    assert json_lines(capsys.readouterr().out)[-1]["service"] == "testapp"


def test_one_access_line_per_request_with_its_fields(make_app, capsys) -> None:
    """The access line has method, path, route, status, duration, address, agent and size."""
    app = make_app()

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    response = app.test_client().get("/items/5?token=abc", headers={"User-Agent": "x" * 1000})
    access = [r for r in json_lines(capsys.readouterr().out) if r["logger"].endswith("access")]
    assert len(access) == 1
    line = access[0]
    assert line["method"] == "GET"
    assert line["path"] == "/items/5"  # never the query string
    assert line["route"] == "/items/<int:item_id>"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["remote_addr"] == "127.0.0.1"
    assert line["user_agent"] == "x" * 256
    assert line["response_size"] == len(response.data)
    assert "abc" not in json.dumps(line)


def test_access_line_is_the_same_through_any_handler_set_up(make_app, capsys) -> None:
    """With a user's handler on root too, the access line keeps the same fields."""
    app = make_app()
    app.add_url_rule("/", "i", lambda: "ok")
    client = app.test_client()
    client.get("/", headers={"X-Request-ID": "fast"})
    extra = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(extra)
    try:
        client.get("/", headers={"X-Request-ID": "slow"})
    finally:
        logging.getLogger().removeHandler(extra)
    fast, slow = json_lines(capsys.readouterr().out)
    assert fast.keys() == slow.keys()
    assert (fast["request_id"], slow["request_id"]) == ("fast", "slow")
    assert {
        k: v for k, v in fast.items() if k not in {"timestamp", "request_id", "duration_ms"}
    } == {k: v for k, v in slow.items() if k not in {"timestamp", "request_id", "duration_ms"}}


def test_internal_and_excluded_paths_are_left_out_of_the_access_log(make_app, capsys) -> None:
    """The extension's own endpoints and configured paths make no access line."""
    app = make_app({Keys.LOG_ACCESS_EXCLUDE_PATHS: "/ping"})
    app.extensions["gateway_obs"].add_internal_path("/internal")
    for path in ("/ping", "/internal"):
        app.add_url_rule(path, path, lambda: "ok")
    client = app.test_client()
    client.get("/ping")
    client.get("/internal")
    client.get("/other")
    access = [r for r in json_lines(capsys.readouterr().out) if r["logger"].endswith("access")]
    assert [r["path"] for r in access] == ["/other"]


def test_internal_paths_are_logged_when_asked(make_app, capsys) -> None:
    """LOG_ACCESS_INTERNAL=True keeps the extension's own endpoints in the access log."""
    app = make_app({Keys.LOG_ACCESS_INTERNAL: True})
    app.extensions["gateway_obs"].add_internal_path("/internal")
    app.add_url_rule("/internal", "internal", lambda: "ok")
    app.test_client().get("/internal")
    access = [r for r in json_lines(capsys.readouterr().out) if r["logger"].endswith("access")]
    assert [r["path"] for r in access] == ["/internal"]


def test_access_log_can_be_turned_off(make_app, capsys) -> None:
    """LOG_ACCESS=False writes no access line."""
    app = make_app({Keys.LOG_ACCESS: False})
    app.test_client().get("/")
    assert not [r for r in json_lines(capsys.readouterr().out) if r["logger"].endswith("access")]


def test_secrets_never_reach_any_log_output(make_app, capsys) -> None:
    """Secrets in headers, cookies, extra fields and nested structures are never written."""
    app = make_app()

    @app.post("/pay")
    def pay() -> str:
        log = get_logger("pay", api_key=SECRET)
        log.info(
            "paying",
            password=SECRET,
            card={"number": "4111", "auth": {"token": SECRET, "list": [{"secret": SECRET}]}},
            headers={"Authorization": f"Bearer {SECRET}", "Cookie": f"sid={SECRET}"},
            extra={"db_password": SECRET, "session_id": SECRET},
        )
        logging.getLogger("lib").info("connecting to postgresql://u:%s@db/x", SECRET)
        return "ok"

    app.test_client().post(
        "/pay",
        headers={"Authorization": f"Bearer {SECRET}", "Cookie": f"session={SECRET}"},
        json={"password": SECRET},
    )
    out = capsys.readouterr().out
    assert SECRET not in out
    paying = next(r for r in json_lines(out) if r["message"] == "paying")
    assert paying["password"] == "[REDACTED]"
    assert paying["card"]["number"] == "4111"
    assert paying["card"]["auth"] == {"token": "[REDACTED]", "list": [{"secret": "[REDACTED]"}]}
    assert paying["headers"] == {"Authorization": "[REDACTED]", "Cookie": "[REDACTED]"}


def test_extra_redact_keys_extend_the_built_in_list(make_app, capsys) -> None:
    """LOG_REDACT_KEYS adds fragments to the secret-looking keys."""
    app = make_app({Keys.LOG_REDACT_KEYS: ["ssn"]})
    app.add_url_rule("/", "i", lambda: get_logger().info("x", user_ssn=SECRET) or "ok")
    app.test_client().get("/")
    assert SECRET not in capsys.readouterr().out


def test_unencodable_values_are_logged_as_repr_without_logging_errors(make_app, capsys) -> None:
    """A value JSON can't encode (or a broken repr, or a cycle) never prints a logging error."""

    class BrokenRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    app = make_app()

    @app.get("/")
    def view() -> str:
        get_logger().info(
            "odd values",
            when=object(),
            data={(1, 2): {3, 4}},
            broken=BrokenRepr(),
            cyclic=cyclic,
            raw=b"\xff",
        )
        return "ok"

    assert app.test_client().get("/").status_code == 200
    captured = capsys.readouterr()
    assert "Logging error" not in captured.err
    records = json_lines(captured.out)
    odd = next(r for r in records if r["message"] == "odd values")
    assert odd["when"].startswith("<object object")
    assert odd["data"] == {"(1, 2)": [3, 4]}
    assert odd["broken"] == "<unrepresentable BrokenRepr>"


def test_exceptions_are_logged_with_type_message_and_stack(make_app, capsys) -> None:
    """An exception logged with exc_info has exc_type, exc_message and stack fields."""
    app = make_app()

    @app.get("/")
    def view() -> str:
        try:
            raise KeyError("missing")
        except KeyError:
            get_logger().exception("lookup failed")
        return "ok"

    app.test_client().get("/")
    record = next(r for r in json_lines(capsys.readouterr().out) if r["message"] == "lookup failed")
    assert record["exc_type"] == "KeyError"
    assert record["exc_message"] == "'missing'"
    assert "Traceback" in record["stack"] and "raise KeyError" in record["stack"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("debug", "debug"), ("warning", "warning"), ("critical", "critical"), ("fatal", "critical")],
)
def test_levels_and_fatal_alias(make_app, capsys, name: str, expected: str) -> None:
    """Each level name works in config and on loggers; fatal is critical."""
    app = make_app({Keys.LOG_LEVEL: name})
    log = get_logger("lv")
    with app.app_context():
        log.debug("d")
        getattr(log, name)("hello")
    records = [r for r in json_lines(capsys.readouterr().out) if r["logger"] == "lv"]
    assert records[-1]["level"] == expected
    assert [r["message"] for r in records] == (["d", "hello"] if name == "debug" else ["hello"])


def test_console_format_is_one_escaped_line_per_record(make_app, capsys) -> None:
    """Console output escapes CR/LF and escape codes so a record cannot forge another."""
    app = make_app({Keys.LOG_FORMAT: "console"})

    @app.get("/")
    def view() -> str:
        get_logger().warning("user said %s", "hi\nFAKE 00:00:00 ERROR injected\r\x1b[2J")
        return "ok"

    app.test_client().get("/", headers={"X-Request-ID": "req-1"})
    lines = capsys.readouterr().out.splitlines()
    warning = [line for line in lines if "user said" in line]
    assert len(warning) == 1
    assert "\\nFAKE" in warning[0] and "\\x1b[2J" in warning[0]
    assert "request_id=req-1" in warning[0]
    assert not any(line.startswith("FAKE") for line in lines)


def test_console_colour_wraps_only_the_level() -> None:
    """With colour on, the level is coloured and the message still escaped."""
    formatter = ConsoleFormatter("svc", colour=True)
    record = logging.makeLogRecord(
        {"name": "x", "levelno": logging.ERROR, "msg": "a\x1b[31mb", "args": ()}
    )
    line = formatter.format(record)
    assert "\x1b[31mERROR" in line and line.endswith("x: ab")  # the message's own colour dropped


def test_auto_format_is_console_in_debug_and_json_otherwise(capsys) -> None:
    """LOG_FORMAT=auto picks console when app.debug."""
    for debug in (True, False):
        app = Flask("auto")
        app.debug = debug
        GatewayObs(app)
        with app.app_context():
            get_logger().info("probe")
    first, second = [line for line in capsys.readouterr().out.splitlines() if "probe" in line]
    assert not first.startswith("{")
    assert json.loads(second)["message"] == "probe"


def test_auto_format_follows_debug_turned_on_after_init_app(capsys) -> None:
    """app.run(debug=True) and app.debug = True come after the app is set up: auto is
    decided again at the first request (and only then); an app left out of debug keeps
    JSON lines."""
    app = Flask("auto_late")

    @app.get("/hello")
    def hello() -> str:
        get_logger().info("inside")
        return "ok"

    GatewayObs(app)
    app.debug = True
    app.test_client().get("/hello")
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert lines and not any(line.startswith("{") for line in lines)
    assert any("inside" in line for line in lines)

    plain = Flask("auto_plain")
    plain.route("/hello")(lambda: "ok")
    GatewayObs(plain)
    plain.test_client().get("/hello")
    plain.debug = True  # after the first request: decided already
    plain.test_client().get("/hello")
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 2 and all(json.loads(line)["path"] == "/hello" for line in lines)


def test_log_file_rotates(make_app, tmp_path, capsys) -> None:
    """LOG_FILE writes JSON lines and rotates at the size limit."""
    path = tmp_path / "gw.log"
    app = make_app(
        {Keys.LOG_FILE: str(path), Keys.LOG_FILE_MAX_BYTES: 2000, Keys.LOG_FILE_BACKUP_COUNT: 2}
    )
    client = app.test_client()
    for _ in range(40):
        client.get("/x")
    assert path.exists() and (tmp_path / "gw.log.1").exists()
    assert not (tmp_path / "gw.log.3").exists()
    for line in path.read_text().splitlines():
        json.loads(line)


def test_log_configure_false_leaves_logging_alone(make_app) -> None:
    """LOG_CONFIGURE=False adds no handler; the filter class still offers request_id."""
    root = logging.getLogger()
    before = list(root.handlers)
    app = make_app({Keys.LOG_CONFIGURE: False})
    assert root.handlers == before
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    handler.addFilter(RequestContextFilter())
    logger = logging.getLogger("mine")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        app.add_url_rule("/", "i", lambda: logger.info("hi") or "ok")
        response = app.test_client().get("/")
    finally:
        logger.removeHandler(handler)
    assert seen[0].request_id == response.headers["X-Request-ID"]  # type: ignore[attr-defined]


def test_a_broken_stdout_never_fails_the_request(make_app, monkeypatch, capsys) -> None:
    """Logging to a closed stream leaves the request's answer untouched."""
    app = make_app()
    app.add_url_rule("/", "i", lambda: get_logger().info("x") or "ok")

    class Closed:
        def write(self, _: str) -> int:
            raise ValueError("I/O operation on closed file")

        def flush(self) -> None:
            raise ValueError("closed")

        def isatty(self) -> bool:
            return False

    monkeypatch.setattr(sys, "stdout", Closed())
    assert app.test_client().get("/").status_code == 200
    assert "Logging error" not in capsys.readouterr().err


def test_request_ids_never_mix_across_threads(make_app, capsys) -> None:
    """Concurrent requests in threads each log their own request ID."""
    app = make_app()

    @app.get("/slow/<rid>")
    def slow(rid: str) -> dict[str, Any]:
        time.sleep(0.01)
        get_logger().info("working", expected=rid)
        return {"seen": get_request_id()}

    results: dict[str, str] = {}

    def call(i: int) -> None:
        rid = f"thread-{i}"
        response = app.test_client().get(f"/slow/{rid}", headers={"X-Request-ID": rid})
        results[rid] = response.get_json()["seen"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(rid == seen for rid, seen in results.items()) and len(results) == 8
    for record in json_lines(capsys.readouterr().out):
        if record["message"] == "working":
            assert record["request_id"] == record["expected"]


def test_outside_a_request_request_id_is_none(make_app, capsys) -> None:
    """Records outside a request have request_id null and the configured service."""
    make_app({Keys.SERVICE_NAME: "svc"})
    get_logger().info("startup")
    record = json_lines(capsys.readouterr().out)[-1]
    assert record["request_id"] is None and record["service"] == "svc"
    assert get_request_id() is None


def test_formatters_never_raise_on_odd_records() -> None:
    """A record whose message can't be rendered still formats."""
    record = logging.makeLogRecord({"msg": "%s %s", "args": ("one",), "levelno": 20})
    assert "%s %s" in json.loads(JsonFormatter().format(record))["message"]
    assert "%s %s" in ConsoleFormatter(colour=False).format(record)


def test_helpers_mask_and_escape() -> None:
    """URL credentials are masked; control characters escaped."""
    assert mask_url_credentials("redis://:pw@h:6379/0\npostgresql://u:p@db/x") == (
        "redis://:***@h:6379/0\npostgresql://u:***@db/x"
    )
    # Unencoded "@", "/" and spaces in a password, and a token as the user name.
    for url, masked in [
        ("postgresql://app:SEK/RET@db/orders", "postgresql://app:***@db/orders"),
        ("redis://:pa ss@host", "redis://:***@host"),
        ("https://TOKEN123@github.example/x", "https://***@github.example/x"),
        ("ftp://SEKRET:@host/", "ftp://***:@host/"),
        ("https://ghp_abcdefghijklmnop@host/", "https://***@host/"),
        ("postgresql://postgres@db/x", "postgresql://postgres@db/x"),
    ]:
        assert mask_url_credentials(url) == masked
    assert mask_url_credentials("a postgresql://u:p@db/x b https://t0k@git.example/r") == (
        "a postgresql://u:***@db/x b https://***@git.example/r"
    )
    assert mask_url_credentials("see https://example.com/a and me@x.org") == (
        "see https://example.com/a and me@x.org"
    )
    assert mask_url_credentials("redis://:p@ss@host:6379/0") == "redis://:***@host:6379/0"
    assert escape_control("a\nb\rc\x00d\u2028") == "a\\nb\\rc\\x00d\\u2028"


def test_access_line_stays_valid_json_for_hostile_paths_and_agents(make_app, capsys) -> None:
    """Quotes, backslashes, control and non-ASCII characters never break the JSON line."""
    app = make_app()
    client = app.test_client()
    hostile_path = '/a"b\\c/%0A/\u00e9\u2028/<x>'
    client.get(hostile_path, headers={"User-Agent": 'ua "quoted" \\ \u00fc'})
    client.get("/t", environ_overrides={"HTTP_USER_AGENT": "a\r\nb\x00\x1b[31m"})
    first, second = json_lines(capsys.readouterr().out)
    assert first["path"] == '/a"b\\c/\n/\u00e9\u2028/<x>'
    assert first["user_agent"] == 'ua "quoted" \\ \u00fc'
    assert second["user_agent"] == "a\r\nb\x00\x1b[31m"


def test_header_objects_and_pair_lists_are_redacted(make_app, capsys) -> None:
    """werkzeug Headers, MultiDicts and lists of pairs are walked: their secrets are redacted."""
    app = make_app()

    @app.get("/")
    def view() -> str:
        from flask import request

        get_logger().info(
            "incoming",
            headers=request.headers,
            pairs=list(request.headers.items()),
            query=request.args,
        )
        return "ok"

    app.test_client().get(
        f"/?token={SECRET}&page=2",
        headers={"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET, "Accept": "a/b"},
    )
    out = capsys.readouterr().out
    assert SECRET not in out
    incoming = next(r for r in json_lines(out) if r["message"] == "incoming")
    assert incoming["headers"]["Accept"] == "a/b"
    assert ["Authorization", "[REDACTED]"] in incoming["pairs"]
    assert incoming["query"] == {"token": "[REDACTED]", "page": "2"}


def test_non_finite_numbers_still_give_valid_json(make_app, capsys) -> None:
    """NaN and Infinity are written as strings so every line stays strict JSON."""
    make_app()
    get_logger().info("ratio", ratio=float("nan"), nested={"x": float("inf")})
    line = capsys.readouterr().out.splitlines()[-1]
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert record["ratio"] == "nan" and record["nested"] == {"x": "inf"}


def test_logs_written_while_a_body_streams_keep_the_request_id(make_app, capsys) -> None:
    """A generator body logs with its request's ID, chunk after chunk."""
    app = make_app()

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[bytes]:
            for n in range(2):
                get_logger().info("chunk", n=n)
                yield b"x"

        return app.response_class(chunks())

    response = app.test_client().get("/stream", headers={"X-Request-ID": "str-1"})
    assert response.data == b"xx"
    records = json_lines(capsys.readouterr().out)
    assert [r["request_id"] for r in records if r["message"] == "chunk"] == ["str-1", "str-1"]
    assert get_request_id() is None


def test_development_server_request_lines_are_dropped_but_not_its_banner() -> None:
    """The werkzeug server's own request lines (with query strings) are filtered out."""
    from flask_gateway_obs.logs import ServerAccessLineFilter

    keep = ServerAccessLineFilter()

    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.makeLogRecord({"name": "werkzeug", "levelno": level, "msg": msg})

    line = '127.0.0.1 - - [28/Nov/2026 18:00:00] "GET /?api_key=x HTTP/1.1" 200 -'
    assert not keep.filter(record(logging.INFO, line))
    assert keep.filter(record(logging.INFO, " * Running on http://127.0.0.1:5000"))
    assert keep.filter(record(logging.ERROR, "127.0.0.1 - - [..] code 400, message Bad"))


def test_terminal_colour_codes_are_stripped_from_messages(make_app, capsys) -> None:
    """A library's coloured message (werkzeug's banner) is logged without escape codes."""
    make_app()
    logging.getLogger("werkzeug").warning("\x1b[31m\x1b[1mWARNING: dev server\x1b[0m")
    record = json_lines(capsys.readouterr().out)[-1]
    assert record["message"] == "WARNING: dev server"


def test_development_server_error_lines_lose_their_query_string() -> None:
    """The server's own error lines quote the request line: the query string is cut."""
    from flask_gateway_obs.logs import ServerAccessLineFilter

    record = logging.makeLogRecord(
        {
            "name": "werkzeug",
            "levelno": logging.ERROR,
            "msg": "code 400, message Bad request syntax (%r)",
            "args": ("GET /items/1?api_key=sk_live_canary HTTP/1.1 HTTP/1.1",),
        }
    )
    assert ServerAccessLineFilter().filter(record)
    message = record.getMessage()
    assert "sk_live_canary" not in message and "GET /items/1 HTTP/1.1" in message


def test_keyword_fields_with_logging_names_are_kept_not_raised_or_dropped(make_app, capsys) -> None:
    """level=, msg= and fields named like standard ones never raise and are never lost."""
    make_app()
    log = get_logger("orders")
    log.info("charged", level=1, msg="m", timestamp="t", service="s", request_id="r", logger="l")
    log.warning("twice", message="kept")
    records = json_lines(capsys.readouterr().out)
    charged = next(r for r in records if r["message"] == "charged")
    assert charged["level"] == "info" and charged["logger"] == "orders"
    assert {k: charged[k] for k in ("level_", "msg_", "timestamp_", "service_", "request_id_")} == {
        "level_": 1,
        "msg_": "m",
        "timestamp_": "t",
        "service_": "s",
        "request_id_": "r",
    }
    assert charged["logger_"] == "l"
    assert next(r for r in records if r["message"] == "twice")["message_"] == "kept"


def test_log_records_point_at_the_caller_not_the_logger_module() -> None:
    """A BoundLogger's records name the calling function, as logging's own do."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    target = logging.getLogger("orders.caller")
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    try:
        get_logger("orders.caller").info("here")
        get_logger("orders.caller").exception("there")
    finally:
        target.removeHandler(handler)
    assert [r.funcName for r in seen] == [
        "test_log_records_point_at_the_caller_not_the_logger_module"
    ] * 2
