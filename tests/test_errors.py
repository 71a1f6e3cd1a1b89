"""Errors: every error is problem+json, nothing leaks, each error reported once."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask, Response, abort, request

from flask_gateway_obs import (
    AppError,
    BadRequestError,
    CircuitOpenError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
)
from flask_gateway_obs.config import Keys
from flask_gateway_obs.errors import ErrorInfo

CONTRACT = {"type", "title", "status", "detail", "instance", "request_id", "code"}
LEAK = "db password is hunter2"


def problem(response: Any) -> dict[str, Any]:
    """The body of a problem+json response, checked against the contract."""
    assert response.mimetype == "application/problem+json"
    body = json.loads(response.data)
    assert set(body) >= CONTRACT
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


@pytest.fixture
def app(make_app) -> Flask:
    app = make_app()

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        if item_id == 0:
            raise NotFoundError("item 0 does not exist", code="item_missing")
        if item_id == 1:
            raise ValidationError("bad item", details={"name": ["required"]})
        if item_id == 2:
            raise RuntimeError(LEAK)
        if item_id == 3:
            raise AppError(LEAK, 500, is_operational=False)
        if item_id == 4:
            raise ServiceUnavailableError("payments down", retry_after=2.5)
        if item_id == 5:
            raise CircuitOpenError("payments", retry_after=30)
        if item_id == 6:
            abort(413)
        if item_id == 7:
            abort(Response("custom", status=418))
        if item_id == 8:
            raise AppError("teapot", 418, code="teapot")
        return {"id": item_id}

    @app.post("/json")
    def json_view() -> dict[str, Any]:
        return {"got": request.get_json()}

    @app.get("/async")
    async def async_view() -> dict[str, Any]:
        raise RuntimeError(LEAK)

    @app.get("/async-app-error")
    async def async_app_error() -> dict[str, Any]:
        raise ConflictError("version mismatch")

    return app


def test_unmatched_path_is_a_404_problem_with_the_path_as_instance(app: Flask) -> None:
    """A 404 from routing is problem+json with instance = the path."""
    response = app.test_client().get("/nope/x")
    body = problem(response)
    assert response.status_code == 404
    assert body["instance"] == "/nope/x"
    assert body["type"] == "about:blank" and body["title"] == "Not Found"
    assert body["code"] == "not_found"


def test_405_keeps_its_allow_header(app: Flask) -> None:
    """A 405 is problem+json and still says which methods are allowed."""
    response = app.test_client().delete("/items/9")
    problem(response)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_app_error_renders_its_message_code_and_details(app: Flask) -> None:
    """Operational AppErrors show their message, code and details."""
    client = app.test_client()
    body = problem(client.get("/items/0"))
    assert body["detail"] == "item 0 does not exist" and body["code"] == "item_missing"
    body = problem(client.get("/items/1"))
    assert body["status"] == 422 and body["errors"] == {"name": ["required"]}
    body = problem(client.get("/items/8"))
    assert body["status"] == 418 and body["code"] == "teapot"


@pytest.mark.parametrize("path", ["/items/2", "/items/3", "/async"])
def test_500_never_leaks_the_exception_text(app: Flask, path: str, capsys) -> None:
    """Unhandled and non-operational errors answer a generic 500 without text or stack."""
    response = app.test_client().get(path)
    body = problem(response)
    assert response.status_code == 500
    assert body["detail"] == "An internal error occurred."
    raw = response.get_data(as_text=True)
    assert LEAK not in raw and "Traceback" not in raw and "RuntimeError" not in raw
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    error = next(r for r in logged if r["level"] == "error")
    assert "Traceback" in error["stack"]


def test_operational_errors_log_a_warning_without_stack(app: Flask, capsys) -> None:
    """An operational AppError is logged at warning with no stack."""
    app.test_client().get("/items/0")
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    warning = next(r for r in logged if r["level"] == "warning")
    assert warning["message"] == "item 0 does not exist" and "stack" not in warning


def test_service_unavailable_and_open_circuit_carry_retry_after(app: Flask) -> None:
    """503s from ServiceUnavailableError and CircuitOpenError set Retry-After (rounded up)."""
    client = app.test_client()
    response = client.get("/items/4")
    assert problem(response)["detail"] == "payments down"
    assert response.headers["Retry-After"] == "3"
    response = client.get("/items/5")
    body = problem(response)
    assert response.status_code == 503 and body["code"] == "circuit_open"
    assert response.headers["Retry-After"] == "30"


def test_werkzeug_errors_render_as_problems(app: Flask) -> None:
    """abort(413) is a problem; abort(response) keeps the view's own response."""
    client = app.test_client()
    assert problem(client.get("/items/6"))["status"] == 413
    response = client.get("/items/7")
    assert response.status_code == 418 and response.data == b"custom"


def test_async_views_are_handled_the_same_way(app: Flask) -> None:
    """Errors raised in async def views get the same problem bodies."""
    response = app.test_client().get("/async-app-error")
    assert problem(response)["code"] == "conflict"
    assert response.status_code == 409


def test_users_own_errorhandler_for_a_status_still_wins(make_app) -> None:
    """A user's errorhandler(404) also catches NotFoundError (a werkzeug NotFound)."""
    app = make_app()

    @app.errorhandler(404)
    def custom(error: Exception) -> tuple[str, int]:
        return "custom 404", 404

    @app.get("/x")
    def view() -> str:
        raise NotFoundError("gone")

    client = app.test_client()
    assert client.get("/x").data == b"custom 404"
    assert client.get("/missing").data == b"custom 404"


def test_each_error_reaches_every_listener_exactly_once(app: Flask) -> None:
    """The internal error hook sees each error once; listeners may extend the body."""
    seen: list[ErrorInfo] = []

    def listener(info: ErrorInfo) -> None:
        seen.append(info)
        info.extensions["event_id"] = "abc"

    def broken(info: ErrorInfo) -> None:
        raise RuntimeError("listener bug")

    state = app.extensions["gateway_obs"]
    state.error_listeners.extend([broken, listener])
    client = app.test_client()
    body = problem(client.get("/items/2"))
    assert body["event_id"] == "abc"
    client.get("/items/0")
    client.get("/nope")
    assert [(i.status, i.operational) for i in seen] == [(500, False), (404, True), (404, True)]
    assert client.get("/items/10").status_code == 200
    assert len(seen) == 3


def test_type_base_makes_problem_types_resolvable(make_app) -> None:
    """ERROR_TYPE_BASE turns the code into a type URL."""
    app = make_app({Keys.ERROR_TYPE_BASE: "https://errors.example.com/"})
    body = problem(app.test_client().get("/missing"))
    assert body["type"] == "https://errors.example.com/not_found"


def test_error_classes_have_their_statuses() -> None:
    """Each subclass has its status and a default code; bad statuses are refused."""
    expected = {
        BadRequestError: 400,
        UnauthorizedError: 401,
        ForbiddenError: 403,
        NotFoundError: 404,
        ConflictError: 409,
        ValidationError: 422,
        ServiceUnavailableError: 503,
    }
    for cls, status in expected.items():
        error = cls("x")
        assert error.status_code == status and error.code == status and str(error) == "x"
    assert AppError("x").status_code == 500
    with pytest.raises(ValueError, match="400-599"):
        AppError("x", 200)


def test_bad_input_never_becomes_a_500(app: Flask) -> None:
    """Odd methods, huge paths and broken JSON get clear 4xx answers."""
    client = app.test_client()
    assert client.open("/items/1", method="BREW").status_code == 405
    assert client.get("/" + "a" * 10_000).status_code == 404
    assert client.post("/json", data="{bad", content_type="application/json").status_code == 400
    assert (
        client.post("/json", data=b"\xff\xfe", content_type="application/json").status_code == 400
    )


def test_error_in_an_after_request_hook_is_logged_once(make_app, capsys) -> None:
    """Flask logs an after-request failure itself (with the stack); we add no second line."""
    app = make_app({"TESTING": False})
    app.add_url_rule("/", "i", lambda: "ok")

    @app.after_request
    def broken(response: Response) -> Response:
        raise RuntimeError("after bug")

    body = problem(app.test_client().get("/"))
    assert body["code"] == "internal_error"
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    flask_lines = [r for r in records if r["message"] == "Exception on / [GET]"]
    assert len(flask_lines) == 1 and "after bug" in flask_lines[0]["stack"]
    assert not [r for r in records if r["logger"] == "flask_gateway_obs" and r["level"] == "error"]


def test_non_finite_details_still_give_strict_json(make_app) -> None:
    """NaN in an AppError's details never makes the body invalid JSON."""
    app = make_app()

    @app.get("/nan")
    def nan_view() -> str:
        raise ValidationError("bad", details={"score": float("nan")})

    response = app.test_client().get("/nan")
    body = json.loads(response.data, parse_constant=lambda c: pytest.fail(c))
    assert body["errors"] == {"score": "nan"}


def test_details_json_cannot_hold_still_answer_their_own_status(make_app) -> None:
    """Details with a tuple key or an object render as text; the error keeps its status."""
    app = make_app()

    @app.get("/odd")
    def odd_view() -> str:
        raise ValidationError("bad", details={("a", 1): "tuple key", "when": object()})

    response = app.test_client().get("/odd")
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "validation_error" and body["errors"]["('a', 1)"] == "tuple key"
    assert body["request_id"] == response.headers["X-Request-ID"]
