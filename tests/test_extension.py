"""The extension: init_app, per-app state, request IDs, trace context, propagation."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask import Flask, Response, g

from flask_gateway_obs import GatewayObs, get_request_id
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.context import parse_traceparent

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def is_uuid4(value: str) -> bool:
    try:
        return uuid.UUID(value).version == 4 and str(uuid.UUID(value)) == value
    except ValueError:
        return False


@pytest.fixture
def app(make_app) -> Flask:
    app = make_app()

    @app.get("/rid")
    def rid() -> dict[str, Any]:
        return {"request_id": get_request_id()}

    return app


@pytest.mark.parametrize(
    "hostile",
    [
        "abc\r\nSet-Cookie: x=1",
        "abc\nx",
        "a\x00b",
        "x" * 10_240,
        "x" * 129,
        "",
        "caf\u00e9",
        "\u00f0\u009f\u0098\u0080",  # an emoji's UTF-8 bytes as WSGI's latin-1 string
        "a b",
        "<script>",
        "../../etc/passwd",
    ],
)
def test_hostile_request_ids_are_replaced_and_never_echoed(app: Flask, hostile: str) -> None:
    """Anything but [A-Za-z0-9._-]{1,128} is replaced by a fresh UUID4."""
    response = app.test_client().get("/rid", environ_overrides={"HTTP_X_REQUEST_ID": hostile})
    echoed = response.headers["X-Request-ID"]
    assert echoed != hostile and is_uuid4(echoed)
    assert response.get_json()["request_id"] == echoed
    assert hostile not in response.get_data(as_text=True) or hostile == ""


@pytest.mark.parametrize("valid", ["abc", "A-Z_0.9", "x" * 128, str(uuid.uuid4())])
def test_valid_request_ids_are_kept(app: Flask, valid: str) -> None:
    """A valid incoming ID is kept and echoed."""
    response = app.test_client().get("/rid", headers={"X-Request-ID": valid})
    assert response.headers["X-Request-ID"] == valid
    assert response.get_json()["request_id"] == valid


def test_missing_request_id_gets_a_new_one_per_request(app: Flask) -> None:
    """Without the header each request gets its own UUID4."""
    client = app.test_client()
    first = client.get("/rid").headers["X-Request-ID"]
    second = client.get("/rid").headers["X-Request-ID"]
    assert is_uuid4(first) and is_uuid4(second) and first != second


def test_every_response_has_the_header(app: Flask) -> None:
    """Success, 404, 405, 500 and HEAD responses all carry the request ID."""

    @app.get("/crash")
    def crash() -> str:
        raise RuntimeError("x")

    client = app.test_client()
    for response in (
        client.get("/rid"),
        client.get("/missing"),
        client.post("/rid"),
        client.get("/crash"),
        client.head("/rid"),
    ):
        assert is_uuid4(response.headers["X-Request-ID"])


def test_header_name_is_configurable(make_app) -> None:
    """REQUEST_ID_HEADER changes the header read and written."""
    app = make_app({Keys.REQUEST_ID_HEADER: "X-Correlation-ID"})
    response = app.test_client().get("/", headers={"X-Correlation-ID": "corr-1"})
    assert response.headers["X-Correlation-ID"] == "corr-1"
    assert "X-Request-ID" not in response.headers


def test_request_id_survives_failing_hooks(make_app) -> None:
    """A failing user before- or after-request hook still yields a problem with the header."""
    app = make_app()

    @app.url_value_preprocessor
    def explode(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if g.get("explode", True):
            raise RuntimeError("preprocessor bug")

    response = app.test_client().get("/anything")
    assert response.status_code == 500
    body = json.loads(response.data)
    assert body["request_id"] == response.headers["X-Request-ID"]


def test_after_request_failure_still_gets_an_id(make_app) -> None:
    """An after-request hook that raises ends in a 500 problem that has the request ID."""
    app = make_app({"TESTING": False})  # testing mode would re-raise the hook's error
    app.add_url_rule("/", "index", lambda: "ok")

    @app.after_request
    def broken(response: Response) -> Response:
        raise RuntimeError("after bug")

    response = app.test_client().get("/")
    assert response.status_code == 500
    assert json.loads(response.data)["request_id"] == response.headers["X-Request-ID"]


def test_traceparent_trace_id_is_logged(app: Flask, capsys) -> None:
    """A valid traceparent's trace-id is on the request's log lines."""
    app.test_client().get("/rid", headers={"traceparent": TRACEPARENT})
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nx",
        "x" * 5000,
    ],
)
def test_malformed_traceparent_is_ignored(value: str) -> None:
    """Invalid traceparent values are ignored."""
    assert parse_traceparent(value) is None


def test_propagation_headers_carry_request_id_and_trace(make_app) -> None:
    """Outgoing headers carry the request ID and the same trace-id with a new parent."""
    obs = GatewayObs()
    app = make_app(init=False)
    obs.init_app(app)

    @app.get("/out")
    def out() -> dict[str, str]:
        return obs.propagation_headers()

    client = app.test_client()
    headers = client.get("/out", headers={"X-Request-ID": "r-1", "traceparent": TRACEPARENT})
    sent = headers.get_json()
    assert sent["X-Request-ID"] == "r-1"
    version, trace_id, parent, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert parent != "00f067aa0ba902b7" and len(parent) == 16
    assert client.get("/out").get_json().keys() == {"X-Request-ID"}
    with app.app_context():
        assert obs.propagation_headers() == {}


def test_second_init_app_on_the_same_app_raises(make_app) -> None:
    """Registering twice on one app is refused with advice."""
    app = make_app()
    with pytest.raises(RuntimeError, match=r"already registered.*once per app"):
        GatewayObs(app)


def test_two_apps_in_one_process_are_independent(make_app, capsys) -> None:
    """Two apps keep their own settings, services and request-ID headers."""
    obs = GatewayObs()
    first = Flask("first")
    second = Flask("second")
    first.config[Keys.SERVICE_NAME] = "one"
    second.config.update({Keys.SERVICE_NAME: "two", Keys.REQUEST_ID_HEADER: "X-Trace"})
    obs.init_app(first)
    obs.init_app(second)
    assert first.extensions["gateway_obs"] is not second.extensions["gateway_obs"]
    assert first.test_client().get("/").headers["X-Request-ID"]
    assert second.test_client().get("/").headers["X-Trace"]
    services = [json.loads(line)["service"] for line in capsys.readouterr().out.splitlines()]
    assert services == ["one", "two"]
    with first.app_context():
        assert obs.state().service == "one"
    with second.app_context():
        assert obs.state().service == "two"
    with pytest.raises(RuntimeError, match="app context"):
        obs.state()


def test_nothing_happens_at_import_or_construction() -> None:
    """Constructing without an app touches no app and no logging."""
    import logging

    before = list(logging.getLogger().handlers)
    GatewayObs()
    assert logging.getLogger().handlers == before


def test_streamed_response_is_finished_when_its_body_is_closed(make_app, capsys) -> None:
    """A streamed body's access line is written at close, with its request ID."""
    app = make_app()

    @app.get("/stream")
    def stream() -> Response:
        return Response(iter([b"a", b"b"]))

    response = app.test_client().get("/stream", buffered=False, headers={"X-Request-ID": "s-1"})
    assert response.headers["X-Request-ID"] == "s-1"
    assert "access" not in capsys.readouterr().out  # still streaming
    assert b"".join(response.response) == b"ab"  # type: ignore[arg-type]
    response.close()
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (line["request_id"], line["status"], line["route"]) == ("s-1", 200, "/stream")
    assert line["response_size"] is None


def test_app_raising_through_the_wsgi_step_is_still_logged(make_app, capsys) -> None:
    """An exception that escapes the wrapped WSGI app (a testing app re-raises it) still
    ends the request once and is reported once."""
    app = make_app()

    def exploding(environ: dict[str, Any], start_response: Any) -> Any:
        raise ZeroDivisionError("escaped")

    app.wsgi_app.wsgi_app = exploding  # type: ignore[attr-defined]
    with pytest.raises(ZeroDivisionError):
        app.test_client().get("/explode", headers={"X-Request-ID": "e-1"})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    access = [r for r in lines if r["logger"] == "flask_gateway_obs.access"]
    assert len(access) == 1
    assert (access[0]["request_id"], access[0]["status"], access[0]["path"]) == (
        "e-1",
        500,
        "/explode",
    )
    errors = [r for r in lines if r["level"] == "error"]
    assert [(r["request_id"], r["exc_message"]) for r in errors] == [("e-1", "escaped")]


def test_a_request_id_header_set_by_the_view_is_replaced_by_ours(make_app) -> None:
    """One X-Request-ID on the response: ours, even if a view or upstream set one."""
    app = make_app()
    app.add_url_rule("/", "i", lambda: ("ok", 200, {"x-request-id": "upstream-id"}))
    response = app.test_client().get("/", headers={"X-Request-ID": "mine"})
    assert response.headers.getlist("X-Request-ID") == ["mine"]


def test_failing_teardown_hook_answers_a_problem_with_the_request_id(make_app, capsys) -> None:
    """A teardown hook that raises gives a problem+json 500, logged and counted as 500."""
    from werkzeug.test import EnvironBuilder

    app = make_app({"TESTING": False})
    app.add_url_rule("/", "i", lambda: "ok")

    @app.teardown_request
    def broken(exc: BaseException | None) -> None:
        raise RuntimeError("teardown bug")

    calls: list[tuple[str, list[tuple[str, str]], Any]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        # As a real server does: a second call is allowed with exc_info before any byte is sent.
        assert not calls or exc_info is not None
        calls.append((status, headers, exc_info))
        return lambda data: None

    environ = EnvironBuilder(path="/", headers={"X-Request-ID": "td-1"}).get_environ()
    body = b"".join(app(environ, start_response))
    status, headers, _ = calls[-1]
    assert status.startswith("500")
    assert ("Content-Type", "application/problem+json") in headers
    assert [v for k, v in headers if k == "X-Request-ID"] == ["td-1"]
    problem = json.loads(body)
    assert problem["request_id"] == "td-1" and b"teardown bug" not in body
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    access = [r for r in records if r["logger"] == "flask_gateway_obs.access"]
    assert [r["status"] for r in access] == [500]
    assert any(r.get("exc_message") == "teardown bug" for r in records)


def test_detached_context_outside_the_wsgi_step_never_leaks(make_app) -> None:
    """Errors handled in a bare test_request_context use the header's ID and leave nothing."""
    from flask_gateway_obs.errors import handle_error

    app = make_app()
    state = app.extensions["gateway_obs"]
    with app.test_request_context("/", headers={"X-Request-ID": "first"}):
        response = handle_error(state, RuntimeError("x"))
        assert json.loads(response.get_data())["request_id"] == "first"  # type: ignore[union-attr]
    assert get_request_id() is None
    with app.test_request_context("/", headers={"X-Request-ID": "second"}):
        response = handle_error(state, RuntimeError("x"))
        assert json.loads(response.get_data())["request_id"] == "second"  # type: ignore[union-attr]


def test_apps_made_by_a_factory_are_not_kept_alive(make_app) -> None:
    """The extension object holds its apps weakly."""
    import gc

    obs = GatewayObs()
    for _ in range(3):
        obs.init_app(Flask("short-lived"))
    gc.collect()
    assert obs._states == []


def test_an_error_while_a_body_streams_is_reported_once(make_app, capsys) -> None:
    """A generator that fails mid-stream is logged (with the request ID) and re-raised."""
    app = make_app()
    seen: list[Any] = []
    app.extensions["gateway_obs"].error_listeners.append(seen.append)

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Any:
            yield b"a"
            raise ValueError("mid-stream")

        return Response(chunks())

    response = app.test_client().get("/stream", buffered=False, headers={"X-Request-ID": "ms-1"})
    with pytest.raises(ValueError, match="mid-stream"):
        b"".join(response.response)  # type: ignore[arg-type]
    response.close()
    assert [type(info.error) for info in seen] == [ValueError]
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    error = next(r for r in records if r["level"] == "error")
    assert (error["request_id"], error["exc_type"]) == ("ms-1", "ValueError")
