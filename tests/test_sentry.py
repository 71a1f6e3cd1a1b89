"""Sentry reporting against a real HTTP sink on 127.0.0.1 that reads the raw envelopes."""

from __future__ import annotations

import gc
import http.client
import logging
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, abort, request
from werkzeug.test import EnvironBuilder

from flask_gateway_obs import (
    NotFoundError,
    ServiceUnavailableError,
    ValidationError,
    capture_exception,
    capture_message,
    sentry,
    set_user,
)
from flask_gateway_obs.config import ConfigError, Keys
from flask_gateway_obs.errors import AppError
from flask_gateway_obs.sentry import EVENT_ID_MEMBER, EXTENSION_KEY, Scrubber

from .conftest import MakeApp, free_port
from .sentry_sink import SentrySink

log = logging.getLogger("tests.sentry.views")


@pytest.fixture(autouse=True)
def _isolate_sentry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """sentry_sdk is process-global: every test starts and ends with no client of ours."""
    for name in ("SENTRY_DSN", "SENTRY_ENVIRONMENT", "SENTRY_RELEASE"):
        monkeypatch.delenv(name, raising=False)
    sentry.shutdown(timeout=1)
    yield
    sentry.shutdown(timeout=1)


@pytest.fixture
def sink() -> Iterator[SentrySink]:
    """A running envelope sink; its DSN is ``sink.dsn``."""
    server = SentrySink().start()
    yield server
    server.stop()


def sentry_app(make_app: MakeApp, dsn: str, **config: Any) -> Flask:
    """An app reporting to ``dsn`` with a few routes that fail in different ways."""
    settings = {Keys.SENTRY_DSN: dsn, **{getattr(Keys, k): v for k, v in config.items()}}
    app = make_app(config=settings)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        if item_id == 0:
            raise RuntimeError("item zero is broken")
        return {"id": item_id}

    @app.get("/missing")
    def missing() -> Any:
        raise NotFoundError("no such thing")

    @app.post("/validate")
    def validate() -> Any:
        raise ValidationError("bad input", details={"field": "name"})

    @app.get("/aborted")
    def aborted() -> Any:
        abort(404)

    @app.get("/bug")
    def bug() -> Any:
        raise AppError("invariant broken", 400, is_operational=False)

    @app.get("/unavailable")
    def unavailable() -> Any:
        raise ServiceUnavailableError(retry_after=3)

    return app


def report(app: Flask, path: str, **kwargs: Any) -> Any:
    """Request ``path`` and flush, so that whatever was captured has reached the sink."""
    response = app.test_client().open(path, **kwargs)
    sentry.flush(timeout=5)
    return response


# --- capture ----------------------------------------------------------------------


def test_unhandled_exception_is_reported_once_with_request_id_and_route(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """A route that raises -> one error event tagged with the response's request ID."""
    app = sentry_app(make_app, sink.dsn)
    response = report(app, "/items/0")
    assert response.status_code == 500
    events = sink.events()
    assert len(events) == 1
    event = events[0]
    assert event["tags"]["request_id"] == response.headers["X-Request-ID"]
    assert event["transaction"] == "/items/<int:item_id>"
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    assert event["exception"]["values"][-1]["mechanism"]["handled"] is False
    assert response.get_json()[EVENT_ID_MEMBER] == event["event_id"]
    assert event["tags"]["status_code"] == "500"
    assert sink.errors == []


def test_event_id_member_can_be_left_out_of_the_body(make_app: MakeApp, sink: SentrySink) -> None:
    """GATEWAY_OBS_SENTRY_EVENT_ID_IN_BODY=False: reported, but the body says nothing."""
    app = sentry_app(make_app, sink.dsn, SENTRY_EVENT_ID_IN_BODY=False)
    response = report(app, "/items/0")
    assert EVENT_ID_MEMBER not in response.get_json()
    assert len(sink.events()) == 1


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/missing", "GET", 404),
        ("/validate", "POST", 422),
        ("/aborted", "GET", 404),
        ("/no-such-route", "GET", 404),
        ("/items/1", "DELETE", 405),
    ],
)
def test_operational_4xx_errors_are_not_reported(
    make_app: MakeApp, sink: SentrySink, path: str, method: str, status: int
) -> None:
    """Operational 4xx AppErrors and werkzeug's 4xx send nothing and add no event id."""
    app = sentry_app(make_app, sink.dsn)
    response = report(app, path, method=method)
    assert response.status_code == status
    assert EVENT_ID_MEMBER not in response.get_json()
    assert sink.events() == []


def test_report_4xx_setting_reports_operational_4xx_as_warnings(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """GATEWAY_OBS_SENTRY_REPORT_4XX=True: a 422 is reported at warning level."""
    app = sentry_app(make_app, sink.dsn, SENTRY_REPORT_4XX=True)
    response = report(app, "/validate", method="POST")
    [event] = sink.events()
    assert event["level"] == "warning"
    assert response.get_json()[EVENT_ID_MEMBER] == event["event_id"]


def test_non_operational_app_error_is_reported_even_as_4xx(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """An AppError marked non-operational is a bug: reported whatever its status."""
    app = sentry_app(make_app, sink.dsn)
    response = report(app, "/bug")
    assert response.status_code == 400
    [event] = sink.events()
    assert event["level"] == "error"
    assert event["exception"]["values"][-1]["value"] == "invariant broken"


def test_operational_5xx_is_reported_unless_turned_off(make_app: MakeApp, sink: SentrySink) -> None:
    """A 503 ServiceUnavailableError is reported; REPORT_OPERATIONAL_5XX=False leaves it out."""
    report(sentry_app(make_app, sink.dsn), "/unavailable")
    assert len(sink.events()) == 1
    sentry.shutdown(timeout=1)
    quiet = sentry_app(make_app, sink.dsn, SENTRY_REPORT_OPERATIONAL_5XX=False)
    response = report(quiet, "/unavailable")
    assert response.status_code == 503
    assert len(sink.events()) == 1


def test_repeated_operational_5xx_is_reported_once_per_interval(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """The same operational 503 (route, code, status) is reported once per
    GATEWAY_OBS_SENTRY_REPEAT_INTERVAL; the next report counts the ones skipped. Bugs are
    never skipped; an interval of 0 reports each."""
    app = sentry_app(make_app, sink.dsn, SENTRY_REPEAT_INTERVAL=60)
    reporter = app.extensions[EXTENSION_KEY]
    now = [1000.0]
    reporter.clock = lambda: now[0]
    first = report(app, "/unavailable")
    skipped = [report(app, "/unavailable") for _ in range(3)]
    now[0] += 61
    again = report(app, "/unavailable")
    for _ in range(2):
        report(app, "/items/0")
    events = sink.events()
    unavailable = [e for e in events if e["tags"]["status_code"] == "503"]
    assert len(unavailable) == 2
    assert "repeats_not_reported" not in unavailable[0].get("extra", {})
    assert unavailable[1]["extra"]["repeats_not_reported"] == 3
    assert EVENT_ID_MEMBER in first.get_json() and EVENT_ID_MEMBER in again.get_json()
    assert all(EVENT_ID_MEMBER not in r.get_json() for r in skipped)
    assert len([e for e in events if e["tags"]["status_code"] == "500"]) == 2
    sentry.shutdown(timeout=1)
    every = sentry_app(make_app, sink.dsn, SENTRY_REPEAT_INTERVAL=0)
    for _ in range(3):
        report(every, "/unavailable")
    assert len([e for e in sink.events() if e["tags"]["status_code"] == "503"]) == 5


def test_error_escaping_after_request_is_reported_once(make_app: MakeApp, sink: SentrySink) -> None:
    """An error outside the view (after_request) goes through Flask's own logging and
    signal first; still exactly one event, and its id is in the body."""
    app = sentry_app(make_app, sink.dsn, SENTRY_ENVIRONMENT="test")
    app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False)

    @app.after_request
    def explode(response: Any) -> Any:
        # Flask runs after_request again on the error response: fail the first pass only
        if request.path == "/items/5" and response.status_code == 200:
            raise KeyError("after-request bug")
        return response

    response = report(app, "/items/5")
    assert response.status_code == 500
    [event] = sink.events()
    assert event["exception"]["values"][-1]["type"] == "KeyError"
    assert response.get_json()[EVENT_ID_MEMBER] == event["event_id"]


def test_after_request_error_is_reported_when_a_testing_app_propagates_it(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Testing app with tracing on: Flask re-raises an after_request error instead of
    calling our handler, so the Flask integration's copy is the report (not dropped)."""
    app = sentry_app(make_app, sink.dsn, SENTRY_TRACES_SAMPLE_RATE=1.0)

    @app.after_request
    def explode(response: Any) -> Any:
        if request.path == "/items/5":
            raise KeyError("after-request bug")
        return response

    with pytest.raises(KeyError):
        app.test_client().get("/items/5")
    sentry.flush(timeout=5)
    [event] = sink.events()
    assert event["exception"]["values"][-1]["type"] == "KeyError"
    assert event["tags"]["request_id"]


def test_error_escaping_flask_keeps_request_id_and_route(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """A failing teardown hook escapes Flask's handlers: its event still carries the
    request's ID, route and method (from the request step, Flask's context being gone)."""
    app = sentry_app(make_app, sink.dsn)
    app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False)

    @app.teardown_request
    def broken(error: BaseException | None) -> None:
        if request.path == "/items/3":
            raise KeyError("teardown bug")

    started: list[tuple[str, dict[str, str]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, dict(headers)))
        return lambda data: None

    body = app(EnvironBuilder(path="/items/3").get_environ(), start_response)
    b"".join(body)
    sentry.flush(timeout=5)
    [event] = sink.events()
    assert event["exception"]["values"][-1]["type"] == "KeyError"
    assert event["tags"]["request_id"] == started[0][1]["X-Request-ID"]
    assert event["transaction"] == "/items/<int:item_id>"
    assert event["request"]["method"] == "GET"


def test_logged_then_raised_exception_is_one_event_from_the_handler(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """log.exception(...); raise -> one event, the handler's (status tags, id in the body),
    carrying the log message."""
    app = sentry_app(make_app, sink.dsn)

    @app.get("/charge")
    def charge() -> Any:
        try:
            raise RuntimeError("card api down")
        except RuntimeError:
            log.exception("charge failed")
            raise

    response = report(app, "/charge")
    [event] = sink.events()
    assert event["exception"]["values"][-1]["mechanism"]["type"] == "flask_gateway_obs"
    assert event["tags"]["status_code"] == "500"
    assert event["logentry"]["formatted"] == "charge failed"
    assert response.get_json()[EVENT_ID_MEMBER] == event["event_id"]


def test_logged_and_handled_exception_is_still_reported(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """log.exception(...) for an error the view then handles: the log event is sent when
    the request ends, once."""
    app = sentry_app(make_app, sink.dsn)

    @app.get("/fallback")
    def fallback() -> Any:
        try:
            raise RuntimeError("card api down")
        except RuntimeError:
            log.exception("charge failed, using the fallback")
        return {"ok": True}

    assert report(app, "/fallback").status_code == 200
    [event] = sink.events()
    assert event["exception"]["values"][-1]["mechanism"]["type"] == "logging"
    assert event["logentry"]["formatted"] == "charge failed, using the fallback"
    assert event["transaction"] == "/fallback"
    assert sentry._held == {}


def test_user_is_attached_to_the_request_and_does_not_leak_into_the_next(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """set_user() -> only the id without PII; the next request on the thread has no user."""
    app = sentry_app(make_app, sink.dsn)
    email = f"{uuid.uuid4().hex}@example.com"

    @app.get("/me/<int:fail>")
    def me(fail: int) -> dict[str, Any]:
        if fail == 1:
            set_user({"id": 42, "email": email, "username": "ada"})
        raise RuntimeError("after set_user")

    report(app, "/me/1")
    report(app, "/me/0")
    first, second = sink.events()
    assert first["user"] == {"id": "42"}
    assert "user" not in second or not second["user"].get("id")
    assert email.encode() not in sink.all_bytes()


def test_user_carries_email_and_ip_with_pii(make_app: MakeApp, sink: SentrySink) -> None:
    """GATEWAY_OBS_SENTRY_SEND_DEFAULT_PII=True keeps the e-mail and adds the client IP."""
    app = sentry_app(make_app, sink.dsn, SENTRY_SEND_DEFAULT_PII=True)

    class User:
        id = 7
        email = "ada@example.com"

    @app.get("/me")
    def me() -> Any:
        set_user(User())
        raise RuntimeError("with user")

    report(app, "/me", headers={"X-Forwarded-For": "203.0.113.7"})
    [event] = sink.events()
    assert event["user"]["id"] == "7"
    assert event["user"]["email"] == "ada@example.com"
    assert event["user"]["ip_address"] == "127.0.0.1"
    assert event["request"]["headers"]["X-Forwarded-For"] == "203.0.113.7"


IP_HEADERS = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Real-IP": "198.51.100.9",
    "X-Original-Forwarded-For": "203.0.113.77",
    "Forwarded": "for=203.0.113.78",
    "CF-Connecting-IP": "203.0.113.79",
    "True-Client-IP": "203.0.113.80",
    "X-Cluster-Client-IP": "203.0.113.81",
    "X-Originating-IP": "203.0.113.82",
    "Fastly-Client-IP": "203.0.113.83",
    "X-Envoy-External-Address": "203.0.113.84",
}


def test_ip_headers_are_left_out_without_pii(make_app: MakeApp, sink: SentrySink) -> None:
    """Without PII, no IP header of any proxy's naming (matched by fragment) reaches Sentry."""
    app = sentry_app(make_app, sink.dsn)
    report(app, "/items/0", headers=IP_HEADERS)
    raw = sink.all_bytes()
    assert [n for n, ip in IP_HEADERS.items() if ip.split("=")[-1].encode() in raw] == []
    assert sink.events()[0]["request"]["headers"]["X-Forwarded-For"] == "[REDACTED]"


def test_breadcrumbs_hold_this_requests_logs_but_not_the_access_log(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Log lines become breadcrumbs of their own request only; access lines never do."""
    app = sentry_app(make_app, sink.dsn)

    @app.get("/step/<int:n>")
    def step(n: int) -> dict[str, Any]:
        log.info("step %d ran", n)
        if n == 2:
            raise RuntimeError("step two failed")
        return {"n": n}

    report(app, "/step/1")
    report(app, "/step/2")
    [event] = sink.events()
    crumbs = event["breadcrumbs"]["values"]
    messages = [crumb.get("message") for crumb in crumbs]
    assert "step 2 ran" in messages
    assert "step 1 ran" not in messages
    assert not [c for c in crumbs if str(c.get("category", "")).startswith("flask_gateway_obs")]


def test_sentry_sdk_scope_data_does_not_leak_into_the_next_request(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """User, tags and contexts set through sentry_sdk in one request stay on its own
    events; the next request on the same thread starts from a clean scope."""
    import sentry_sdk

    app = sentry_app(make_app, sink.dsn)

    @app.get("/login/<name>/<int:fail>")
    def login(name: str, fail: int) -> Any:
        sentry_sdk.set_user({"id": name})
        sentry_sdk.set_tag("tenant", name + "-corp")
        sentry_sdk.set_context("cart", {"owner": name})
        if fail:
            raise RuntimeError("login failed")
        return {"ok": 1}

    report(app, "/login/alice/1")
    report(app, "/login/bob/0")
    report(app, "/items/0")
    first, second = sink.events()
    assert first["tags"]["tenant"] == "alice-corp"
    assert first["contexts"]["cart"] == {"owner": "alice"}
    assert "tenant" not in second["tags"]
    assert "cart" not in second.get("contexts", {})
    assert not second.get("user")


def test_each_event_gets_the_trace_id_of_its_own_request(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Without tracing, events of different requests do not share one trace: the trace id
    comes from the request (its traceparent, else its UUID request ID)."""
    app = sentry_app(make_app, sink.dsn)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    first = report(app, "/items/0")
    report(app, "/items/0", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    one, two = sink.events()
    assert one["contexts"]["trace"]["trace_id"] == first.headers["X-Request-ID"].replace("-", "")
    assert two["contexts"]["trace"]["trace_id"] == trace_id


def test_log_records_of_the_extension_never_become_events(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """An error logged by the extension itself is not a second event; a user's is one."""
    app = sentry_app(make_app, sink.dsn)
    with app.test_request_context("/"):
        logging.getLogger("flask_gateway_obs.health").error("redis check failed")
        logging.getLogger("tests.sentry.views").error("user-level failure")
    sentry.flush(timeout=5)
    [event] = sink.events()
    assert event["logentry"]["message"] == "user-level failure"


def test_helpers_send_messages_and_exceptions_with_extra_context(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """capture_message/capture_exception return the event id; kwargs arrive as extra."""
    app = sentry_app(make_app, sink.dsn)

    @app.get("/helpers")
    def helpers() -> dict[str, Any]:
        message_id = capture_message("cache warmed", level="warning", entries=12)
        try:
            raise LookupError("handled here")
        except LookupError:
            exception_id = capture_exception(order="A-1")
        return {"message": message_id, "exception": exception_id}

    response = report(app, "/helpers")
    body = response.get_json()
    events = {event["event_id"]: event for event in sink.events()}
    message = events[body["message"]]
    assert message["message"] == "cache warmed"
    assert message["level"] == "warning"
    assert message["extra"]["entries"] == 12
    assert message["transaction"] == "/helpers"
    exception = events[body["exception"]]
    assert exception["extra"]["order"] == "A-1"
    assert exception["tags"]["request_id"] == response.headers["X-Request-ID"]
    with app.app_context():
        assert capture_exception() is None  # nothing being handled
    assert capture_message("outside any app") is not None


# --- secrets ----------------------------------------------------------------------


#: Planted secrets of the running test; a module global so no frame variable holds them all.
CANARY: dict[str, str] = {}


_CANARY_PLACES = (
    "authorization",
    "proxyauth",
    "apikey",
    "authtoken",
    "customheader",
    "cookie",
    "query",
    "pathtoken",
    "jsonnested",
    "jsonlist",
    "jsonkey",
    "local",
    "localdict",
    "logmessage",
    "logextra",
    "logparam",
    "logtoken",
    "logbearer",
    "dsn",
    "urltoken",
    "pwquoted",
    "pwsemicolon",
    "extra",
)


@pytest.mark.parametrize(("pii", "tracing"), [(False, 0.0), (True, 0.0), (False, 1.0), (True, 1.0)])
def test_canary_secrets_never_reach_the_wire(
    make_app: MakeApp, sink: SentrySink, pii: bool, tracing: float
) -> None:
    """Secrets planted in headers, cookie, query, URL path, nested JSON (values, keys,
    lists), locals, log messages and their arguments, breadcrumbs, a DSN, a URL token and
    quoted or ``;``-joined passwords in the exception: none in the raw envelope bytes,
    with or without PII, with or without tracing (transactions included)."""
    CANARY.clear()
    CANARY.update({name: f"canary{name}{uuid.uuid4().hex}" for name in _CANARY_PLACES})
    canary = CANARY
    app = sentry_app(
        make_app,
        sink.dsn,
        SENTRY_SEND_DEFAULT_PII=pii,
        SENTRY_TRACES_SAMPLE_RATE=tracing,
        SENTRY_DENYLIST=["signature"],
        SENTRY_MAX_REQUEST_BODY="always",
    )

    @app.post("/orders/<int:order_id>/reset/<reset_token>")
    def order(order_id: int, reset_token: str) -> Any:
        api_token = CANARY["local"]
        settings = {"db": {"db_password": CANARY["localdict"]}, "retries": 3}
        owners = {request.headers["X-Api-Key"]: "ada"}  # a secret as a key
        headers = dict(request.headers)
        req = request._get_current_object()  # type: ignore[attr-defined]
        log.info("calling upstream with api_key=%s", CANARY["logmessage"])
        log.warning("login refused", extra={"password": CANARY["logextra"]})
        log.warning("invalid token %s", CANARY["logtoken"])
        log.info("retrying with Bearer %s", CANARY["logbearer"])
        log.error("upstream call with api_key=%s failed", CANARY["logparam"])
        capture_message("before the failure", secret_note=CANARY["extra"])
        assert api_token and settings and owners and headers and req
        raise RuntimeError(
            f"cannot reach postgresql://app:{CANARY['dsn']}@db.internal/orders "
            f"nor https://{CANARY['urltoken']}@git.example.com/repo.git "
            f"(password='{CANARY['pwquoted']} x', password={CANARY['pwsemicolon']};z)"
        )

    client = app.test_client()
    client.set_cookie("session", canary["cookie"])
    response = client.post(
        f"/orders/7/reset/{canary['pathtoken']}?access_token={canary['query']}&page=2",
        json={
            "customer": {"name": "Ada", "card": {"client_secret": canary["jsonnested"]}},
            "items": [{"sku": "X1", "auth": {"token": canary["jsonlist"]}}],
            "token": canary["jsonkey"],
            "grants": {canary["jsonkey"]: "read"},
        },
        headers={
            "Authorization": f"Bearer {canary['authorization']}",
            "Proxy-Authorization": f"Basic {canary['proxyauth']}",
            "X-Api-Key": canary["apikey"],
            "X-Auth-Token": canary["authtoken"],
            "X-Request-Signature": canary["customheader"],
        },
    )
    assert response.status_code == 500
    sentry.flush(timeout=5)
    events = sink.wait_for("event", 3)
    assert len(events) == 3  # the message, the logged error and the exception
    if tracing:
        [transaction] = sink.wait_for("transaction", 1)
        assert transaction["request"]["url"] == (
            "http://localhost/orders/<int:order_id>/reset/<reset_token>"
        )
    raw = sink.all_bytes()
    leaked = [name for name, value in canary.items() if value.encode() in raw]
    assert leaked == [], f"secrets on the wire: {leaked}"
    # ...and the events are still useful: non-secret data is there.
    error = next(e for e in events if "exception" in e)
    assert error["request"]["query_string"] == "access_token=[REDACTED]&page=2"
    assert error["request"]["data"]["customer"]["name"] == "Ada"
    assert error["request"]["data"]["items"][0]["sku"] == "X1"
    assert "postgresql://app:***@db.internal/orders" in error["exception"]["values"][-1]["value"]
    frame_vars = error["exception"]["values"][-1]["stacktrace"]["frames"][-1]["vars"]
    assert frame_vars["order_id"] == "7"
    logged = next(e for e in events if e.get("logentry"))
    assert "params" not in logged["logentry"]
    assert logged["logentry"]["formatted"] == "upstream call with api_key=[REDACTED] failed"
    crumbs = [c.get("message") for c in error["breadcrumbs"]["values"]]
    assert "invalid token [REDACTED]" in crumbs
    assert "retrying with Bearer [REDACTED]" in crumbs


def test_a_requests_secret_is_swept_wherever_it_reappears(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """A token seen in a secret header or a secret-named URL part is removed from
    everywhere else too: a bare mention in an exception text, the URL itself."""
    app = sentry_app(make_app, sink.dsn)
    token, reset = uuid.uuid4().hex, uuid.uuid4().hex

    @app.get("/reset/<reset_token>")
    def reset_password(reset_token: str) -> Any:
        raise RuntimeError(f"upstream refused {request.headers['Authorization'][7:]}")

    report(app, f"/reset/{reset}", headers={"Authorization": f"Bearer {token}"})
    [event] = sink.events()
    assert event["exception"]["values"][-1]["value"] == "upstream refused [REDACTED]"
    assert event["request"]["url"] == "http://localhost/reset/[REDACTED]"
    assert event["transaction"] == "/reset/<reset_token>"
    raw = sink.all_bytes()
    assert token.encode() not in raw
    assert reset.encode() not in raw


def test_known_secrets_are_swept_from_mapping_keys(make_app: MakeApp, sink: SentrySink) -> None:
    """A secret used as a key (a local dict keyed by the API key, a JSON object keyed by
    a token) is masked in the key too."""
    app = sentry_app(make_app, sink.dsn, SENTRY_MAX_REQUEST_BODY="always")
    api_key, token = f"key{uuid.uuid4().hex}", f"tok{uuid.uuid4().hex}"

    @app.post("/grants")
    def grants() -> Any:
        owners = {request.headers["X-Api-Key"]: "ada"}
        assert owners
        raise RuntimeError("grant failed")

    report(
        app,
        "/grants",
        method="POST",
        headers={"X-Api-Key": api_key},
        json={"token": token, "grants": {token: "read"}},
    )
    [event] = sink.events()
    raw = sink.all_bytes()
    assert api_key.encode() not in raw
    assert token.encode() not in raw
    assert event["request"]["data"]["grants"] == {"[REDACTED]": "read"}


def test_a_value_masked_in_a_message_is_swept_everywhere_else(make_app: MakeApp) -> None:
    """Every value the key=value pattern masks joins the sweep: the same secret in a
    local variable or extra without a secret-looking name is masked too."""
    scrubber = Scrubber()
    secret = f"s3cr3t{uuid.uuid4().hex[:8]}"
    event = {
        "message": f"connect failed: password={secret}",
        "extra": {"attempt": f"tried {secret} twice"},
        "exception": {"values": [{"stacktrace": {"frames": [{"vars": {"pw": f"'{secret}'"}}]}}]},
    }
    assert secret not in repr(scrubber.scrub_event(event, {}))


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


def test_add_secret_keeps_tokens_and_skips_what_would_over_redact() -> None:
    """Bearer tokens and repr'd strings are remembered; short values and reprs are not."""
    secrets: set[str] = set()
    sentry.add_secret(secrets, "Bearer abcdef123")
    sentry.add_secret(secrets, "'quoted-secret'")
    sentry.add_secret(secrets, "12345")
    sentry.add_secret(secrets, "<Session object at 0x7f00>")
    sentry.add_secret(secrets, "a b/c")
    assert secrets == {"Bearer abcdef123", "Bearer%20abcdef123", "abcdef123", "quoted-secret"}


def test_form_bodies_are_scrubbed(make_app: MakeApp, sink: SentrySink) -> None:
    """A form body keeps ordinary fields and loses secret ones."""
    app = sentry_app(make_app, sink.dsn)
    secret = f"canary{uuid.uuid4().hex}"

    @app.post("/login")
    def login() -> Any:
        raise RuntimeError("login broke")

    report(app, "/login", method="POST", data={"user": "ada", "password": secret})
    [event] = sink.events()
    assert event["request"]["data"] == {"user": "ada", "password": "[REDACTED]"}
    assert secret.encode() not in sink.all_bytes()


def test_a_scrubber_that_raises_drops_the_event(
    make_app: MakeApp, sink: SentrySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: if scrubbing raises, nothing is sent and the request is answered;
    the same for transactions."""
    app = sentry_app(make_app, sink.dsn, SENTRY_TRACES_SAMPLE_RATE=1.0)

    def broken(self: Scrubber, event: Any, hint: Any) -> Any:
        raise ValueError("scrubber bug")

    monkeypatch.setattr(Scrubber, "scrub_event", broken)
    response = report(app, "/items/0")
    assert response.status_code == 500
    assert report(app, "/items/1").status_code == 200
    sentry.flush(timeout=5)
    assert sink.events() == []
    assert sink.items("transaction") == []


def test_user_before_send_hook_sees_scrubbed_events_and_may_drop_them(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """GATEWAY_OBS_SENTRY_BEFORE_SEND runs after scrubbing; None or an exception drops."""
    seen: list[dict[str, Any]] = []

    def hook(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        seen.append(event)
        if event.get("transaction") == "/missing":
            return None
        if event["tags"].get("status_code") == "503":
            raise RuntimeError("hook bug")
        event["tags"]["checked"] = "yes"
        return event

    app = sentry_app(make_app, sink.dsn, SENTRY_BEFORE_SEND=hook, SENTRY_REPORT_4XX=True)
    report(app, "/items/0", headers={"Authorization": "Bearer abcdefgh12345"})
    report(app, "/missing")
    report(app, "/unavailable")
    assert seen[0]["request"]["headers"]["Authorization"] == "[REDACTED]"
    [event] = sink.events()
    assert event["tags"]["checked"] == "yes"


def test_scrub_text_masks_credentials_and_secret_pairs() -> None:
    """URL credentials, key=value, header and repr forms are masked; plain text is kept."""
    scrub = Scrubber().scrub_text
    assert scrub("postgresql://app:pw123@db/x") == "postgresql://app:***@db/x"
    assert scrub("https://ghp_abc123@github.com/r") == "https://***@github.com/r"
    assert scrub("Authorization: Bearer abc.def") == "Authorization: Bearer [REDACTED]"
    assert scrub("('Authorization', 'Bearer abc')") == "('Authorization', 'Bearer [REDACTED]')"
    assert scrub("?access_token=abc&page=2") == "?access_token=[REDACTED]&page=2"
    assert scrub("host=db password=hunter2 user=x") == "host=db password=[REDACTED] user=x"
    assert scrub("{'db_password': 'hunter2'}") == "{'db_password': '[REDACTED]'}"
    assert scrub("password=[REDACTED]") == "password=[REDACTED]"
    assert scrub("order 42 shipped to Ada") == "order 42 shipped to Ada"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password='a b'", "password='[REDACTED]'"),
        ('api_key: "with spaces inside"', 'api_key: "[REDACTED]"'),
        ("password=a;b", "password=[REDACTED]"),
        ("Server=db;Password=p4ss;word;", "Server=db;Password=[REDACTED]"),
        ("password=[REDACTED]tail", "password=[REDACTED]"),
        ("dict(password=abc)", "dict(password=[REDACTED])"),
        ("Bearer eyJhbGciOi.x", "Bearer [REDACTED]"),
        ("retry with bearer abc", "retry with bearer [REDACTED]"),
        ("invalid token 3fa9c1d2e7", "invalid token [REDACTED]"),
        ("invalid token SEKRETVALUE", "invalid token [REDACTED]"),
        ("session aB9_xYz12 expired", "session [REDACTED] expired"),
    ],
)
def test_scrub_text_masks_quoted_partial_and_free_form_secrets(text: str, expected: str) -> None:
    """Quoted values whole, values with ; inside, bare Bearer tokens and a token-like word
    after a secret-looking word are masked."""
    assert Scrubber().scrub_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "token expired for user 42",
        "password reset requested by ada",
        "the session was closed by the client",
        "Authentication failed: wrong credentials",
        "csrf Token missing",
    ],
)
def test_scrub_text_leaves_ordinary_prose_alone(text: str) -> None:
    """A secret-looking word followed by ordinary words is prose, not a secret."""
    assert Scrubber().scrub_text(text) == text


def test_log_arguments_after_a_secret_word_are_masked() -> None:
    """Arguments that follow a secret-looking word in a %-template are masked; others kept;
    %d, named and %% conversions still format."""
    mask = Scrubber().mask_log_args
    assert mask("call with api_key=%s failed", ("k",)) == "call with api_key=[REDACTED] failed"
    assert mask("invalid token %s after %d tries", ("t", 3)) == (
        "invalid token [REDACTED] after 3 tries"
    )
    assert mask("%(token)s for %(user)s at 100%%", {"token": "t", "user": "ada"}) == (
        "[REDACTED] for ada at 100%"
    )
    assert mask("Bearer %r", ("t",)) == "Bearer [REDACTED]"
    assert mask("user %s logged in", ("ada",)) is None  # nothing secret: formatted as usual


def test_source_lines_keep_code_but_lose_secret_literals() -> None:
    """In source context only quoted literals after a secret name are masked."""
    scrubber = Scrubber()
    event = {
        "exception": {
            "values": [
                {
                    "stacktrace": {
                        "frames": [
                            {
                                "context_line": 'token = request.headers["X-Auth-Token"]',
                                "pre_context": ['API_KEY = "sk_live_abcdef"'],
                                "vars": {"token": "'abc'", "count": "3"},
                            }
                        ]
                    }
                }
            ]
        },
        "_meta": {"request": {"headers": {"Authorization": {"": {"rem": [["!config", "s"]]}}}}},
    }
    scrubbed = scrubber.scrub_event(event, {})
    frame = scrubbed["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert frame["context_line"] == 'token = request.headers["X-Auth-Token"]'
    assert frame["pre_context"] == ['API_KEY = "[REDACTED]"']
    assert frame["vars"] == {"token": "[REDACTED]", "count": "3"}
    assert scrubbed["_meta"] == event["_meta"]


def test_breadcrumb_hook_only_filters_and_masks_log_arguments() -> None:
    """before_breadcrumb leaves scrubbing to send time: it drops the extension's own
    records, masks the arguments a template marks secret, and drops a crumb it chokes on."""
    scrubber = Scrubber()
    crumb = {"message": "retry with token=abc123", "data": {"api_key": "k", "n": 1}}
    assert scrubber.before_breadcrumb(dict(crumb), {}) == crumb  # scrubbed when sent
    record = logging.LogRecord(
        "app", logging.INFO, __file__, 1, "invalid token %s", ("t0k3n",), None
    )
    masked = scrubber.before_breadcrumb({"message": record.getMessage()}, {"log_record": record})
    assert masked == {"message": "invalid token [REDACTED]"}
    assert scrubber.before_breadcrumb(None, {}) is None
    assert scrubber.before_breadcrumb({"category": "flask_gateway_obs.access"}, {}) is None


def test_set_user_outside_a_request_applies_to_later_captures(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Outside a request (a job, a CLI command) the user goes to sentry-sdk's scope."""
    sentry_app(make_app, sink.dsn)
    set_user("job-runner")
    capture_message("nightly job done")
    sentry.flush(timeout=5)
    [event] = sink.events()
    assert event["user"] == {"id": "job-runner"}


# --- set-up, environment, process ---------------------------------------------------


def test_without_a_dsn_nothing_is_set_up_and_helpers_are_noops(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """No DSN: no listener, no observer, no client; helpers return None."""
    import sentry_sdk

    app = sentry_app(make_app, None)
    assert EXTENSION_KEY not in app.extensions
    observers = app.extensions["gateway_obs"].observers
    assert not [o for o in observers if type(o).__module__ == sentry.__name__]
    response = report(app, "/items/0")
    assert EVENT_ID_MEMBER not in response.get_json()
    with app.test_request_context("/"):
        set_user({"id": 1})
        assert capture_message("nobody listens") is None
        assert capture_exception(RuntimeError("nobody")) is None
    assert sentry._bindings == {}
    assert not sentry_sdk.get_client().is_active()


def test_sentry_dsn_environment_variable_is_used_as_fallback(
    make_app: MakeApp, sink: SentrySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SENTRY_DSN in the environment turns reporting on when the config key is unset."""
    monkeypatch.setenv("SENTRY_DSN", sink.dsn)
    app = sentry_app(make_app, None)
    report(app, "/items/0")
    assert len(sink.events()) == 1


@pytest.mark.parametrize("off", ["off", "", " OFF ", False])
def test_dsn_off_keeps_sentry_off_despite_the_environment(
    make_app: MakeApp, sink: SentrySink, monkeypatch: pytest.MonkeyPatch, off: Any
) -> None:
    """GATEWAY_OBS_SENTRY_DSN = "off" (or "" or False) wins over SENTRY_DSN: nothing set up."""
    import sentry_sdk

    monkeypatch.setenv("SENTRY_DSN", sink.dsn)
    app = sentry_app(make_app, off)
    assert EXTENSION_KEY not in app.extensions
    assert app.extensions["gateway_obs"].settings.sentry_dsn == "off"
    response = report(app, "/items/0")
    assert EVENT_ID_MEMBER not in response.get_json()
    assert not sentry_sdk.get_client().is_active()
    assert sink.raw == []


def test_environment_and_release_fall_back_as_documented(
    make_app: MakeApp, sink: SentrySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Testing app -> development, release = service version; env vars win; keys win."""
    app = sentry_app(make_app, sink.dsn, SERVICE_VERSION="1.4.2")
    report(app, "/items/0")
    sentry.shutdown(timeout=1)
    monkeypatch.setenv("SENTRY_ENVIRONMENT", "staging")
    monkeypatch.setenv("SENTRY_RELEASE", "from-env")
    report(sentry_app(make_app, sink.dsn, SERVICE_VERSION="1.4.2"), "/items/0")
    sentry.shutdown(timeout=1)
    report(
        sentry_app(make_app, sink.dsn, SENTRY_ENVIRONMENT="eu-prod", SENTRY_RELEASE="gw@9"),
        "/items/0",
    )
    first, second, third = sink.events()
    assert (first["environment"], first["release"]) == ("development", "1.4.2")
    assert (second["environment"], second["release"]) == ("staging", "from-env")
    assert (third["environment"], third["release"]) == ("eu-prod", "gw@9")


def test_production_app_defaults_to_production_environment(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Neither debug nor testing: the environment is ``production``."""
    app = make_app(config={Keys.SENTRY_DSN: sink.dsn, "TESTING": False})
    with app.app_context():
        capture_message("hello")
    sentry.flush(timeout=5)
    assert sink.events()[0]["environment"] == "production"


def test_invalid_dsn_fails_at_init_app(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DSN without a project id (config key or env var) is a ConfigError at init_app."""
    with pytest.raises(ConfigError, match="GATEWAY_OBS_SENTRY_DSN"):
        make_app(config={Keys.SENTRY_DSN: "https://key@sentry.example.com/"})
    monkeypatch.setenv("SENTRY_DSN", "not a dsn")
    with pytest.raises(ConfigError, match="SENTRY_DSN"):
        make_app()


def test_invalid_sentry_settings_are_config_errors(make_app: MakeApp) -> None:
    """Bad rates, hooks and reserved init options are reported together."""
    with pytest.raises(ConfigError) as caught:
        make_app(
            config={
                Keys.SENTRY_SAMPLE_RATE: 1.5,
                Keys.SENTRY_BEFORE_SEND: "no.such.module:hook",
                Keys.SENTRY_OPTIONS: {"before_send": print},
                Keys.SENTRY_MAX_REQUEST_BODY: "huge",
            }
        )
    keys = {problem[0] for problem in caught.value.problems}
    assert keys == {
        Keys.SENTRY_SAMPLE_RATE,
        Keys.SENTRY_BEFORE_SEND,
        Keys.SENTRY_OPTIONS,
        Keys.SENTRY_MAX_REQUEST_BODY,
    }


def test_extra_init_options_pass_through(make_app: MakeApp, sink: SentrySink) -> None:
    """GATEWAY_OBS_SENTRY_OPTIONS reaches sentry_sdk.init (here: server_name)."""
    app = sentry_app(make_app, sink.dsn, SENTRY_OPTIONS='{"server_name": "gw-eu-1"}')
    report(app, "/items/0")
    assert sink.events()[0]["server_name"] == "gw-eu-1"


def test_two_apps_share_one_client_or_get_their_own(make_app: MakeApp) -> None:
    """Same configuration -> one client; another DSN -> a client of its own, no mixing."""
    first_sink, second_sink = SentrySink().start(), SentrySink().start()
    try:
        a = sentry_app(make_app, first_sink.dsn)
        b = sentry_app(make_app, first_sink.dsn)
        assert a.extensions[EXTENSION_KEY].binding is b.extensions[EXTENSION_KEY].binding
        c = sentry_app(make_app, second_sink.dsn)
        assert c.extensions[EXTENSION_KEY].binding is not a.extensions[EXTENSION_KEY].binding
        report(a, "/items/0")
        report(c, "/items/0")
        report(c, "/items/0")
        assert len(first_sink.events()) == 1
        assert len(second_sink.events()) == 2
    finally:
        first_sink.stop()
        second_sink.stop()


def test_apps_that_are_gone_are_not_kept_alive(make_app: MakeApp, sink: SentrySink) -> None:
    """An app factory called many times: the apps (and their reporters) can be collected."""
    refs = []
    for _ in range(5):
        app = sentry_app(make_app, sink.dsn)
        report(app, "/items/1")
        refs.append(weakref.ref(app))
        del app
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []
    assert len(sentry._reporters) == 0


def test_log_events_of_a_second_app_go_to_its_client_with_its_rules(make_app: MakeApp) -> None:
    """Two apps with different clients and denylists: a log record at ERROR in the second
    app's request reaches the second app's DSN, scrubbed by its rules; the first gets nothing."""
    first_sink, second_sink = SentrySink().start(), SentrySink().start()
    try:
        sentry_app(make_app, first_sink.dsn)
        second = sentry_app(make_app, second_sink.dsn, SENTRY_DENYLIST=["signature"])
        secret = f"sig{uuid.uuid4().hex}"

        @second.get("/webhook")
        def webhook() -> Any:
            log.error("webhook rejected", extra={"signature": secret})
            raise RuntimeError("webhook failed")

        report(second, "/webhook")
        assert first_sink.events() == []
        messages = sorted(
            e.get("logentry", {}).get("message") or e["exception"]["values"][-1]["value"]
            for e in second_sink.events()
        )
        assert messages == ["webhook failed", "webhook rejected"]
        assert secret.encode() not in second_sink.all_bytes()
    finally:
        first_sink.stop()
        second_sink.stop()


def test_a_client_initialised_by_the_application_is_left_alone(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """sentry_sdk.init() done by the app stays global; our errors go to our DSN."""
    import sentry_sdk

    own = SentrySink().start()
    try:
        sentry_sdk.init(dsn=own.dsn, default_integrations=False)
        theirs = sentry_sdk.get_client()
        app = sentry_app(make_app, sink.dsn)
        assert sentry_sdk.get_client() is theirs
        report(app, "/items/0")
        assert len(sink.events()) == 1
        theirs.flush(timeout=2)
        assert own.events() == []
    finally:
        sentry_sdk.get_client().close(timeout=1)
        sentry_sdk.get_global_scope().set_client(None)
        own.stop()


def test_a_forked_child_keeps_the_applications_own_global_client(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """The extension first, then the app's own sentry_sdk.init(): after a fork the child's
    global client is still the app's, and each side's events reach its own DSN."""
    import sentry_sdk

    own = SentrySink().start()
    try:
        app = sentry_app(make_app, sink.dsn)
        sentry_sdk.init(dsn=own.dsn, default_integrations=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork in a threaded process
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                with app.app_context():
                    capture_message("ours from the child")
                kept = sentry_sdk.get_client().dsn == own.dsn
                sentry_sdk.capture_message("theirs from the child")
                sentry_sdk.flush(timeout=5)
                sentry.flush(timeout=5)
                code = 0 if kept else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [e.get("message") for e in sink.wait_for("event", 1)] == ["ours from the child"]
        assert [e.get("message") for e in own.wait_for("event", 1)] == ["theirs from the child"]
    finally:
        sentry_sdk.get_client().close(timeout=1)
        sentry_sdk.get_global_scope().set_client(None)
        own.stop()


_EXIT_SCRIPT = """
import sys
from flask import Flask
from flask_gateway_obs import GatewayObs, capture_message

def make(dsn):
    app = Flask("exiting")
    app.config["GATEWAY_OBS_SENTRY_DSN"] = dsn
    GatewayObs(app)
    return app

first, second = make(sys.argv[1]), make(sys.argv[2])
for n in range(5):
    with second.app_context():
        capture_message(f"second {n}")
"""


def test_a_second_apps_client_is_flushed_at_exit(make_app: MakeApp) -> None:
    """A process that exits without flushing still delivers the events of an app with a
    client of its own (not only the global one's), within the shutdown timeout."""
    first_sink, second_sink = SentrySink().start(), SentrySink(delay=0.05).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")}
        subprocess.run(
            [sys.executable, "-c", _EXIT_SCRIPT, first_sink.dsn, second_sink.dsn],
            env=env,
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )
        assert len(second_sink.events()) == 5
    finally:
        first_sink.stop()
        second_sink.stop()


def test_unreachable_sentry_leaves_requests_normal(
    make_app: MakeApp, black_hole: tuple[str, int]
) -> None:
    """DSN at a closed port or a server that never answers: 200s and 500s as usual and
    each reported request far below a generous bound (nothing waits on the network);
    shutdown waits only its timeout."""
    closed = f"http://key@127.0.0.1:{free_port()}/1"
    hole = f"http://key@{black_hole[0]}:{black_hole[1]}/1"
    for dsn in (closed, hole):
        app = sentry_app(make_app, dsn, SENTRY_QUEUE_SIZE=3, SENTRY_SHUTDOWN_TIMEOUT=0.2)
        client = app.test_client()
        took = []
        for _ in range(20):
            started = time.perf_counter()
            assert client.get("/items/0").status_code == 500
            took.append(time.perf_counter() - started)
            assert client.get("/items/1").status_code == 200
        # about 3 ms each here; a capture that waited for Sentry would take 300 ms or more
        assert statistics.median(took) < 0.2
        started = time.monotonic()
        sentry.shutdown()
        assert time.monotonic() - started < 5  # bounded: the sender waits up to 30 s


_COST_SCRIPT = """
import cProfile, pstats, sys
from flask import Flask
from werkzeug.test import EnvironBuilder
from flask_gateway_obs import GatewayObs

def build(dsn):
    app = Flask("costs")
    if dsn is not None:
        app.config["GATEWAY_OBS_SENTRY_DSN"] = dsn
    GatewayObs(app)

    @app.get("/items/<int:item_id>")
    def item(item_id):
        return {"id": item_id}

    return app

def calls(app, count=200):
    environs = [EnvironBuilder(path="/items/1").get_environ() for _ in range(count + 20)]
    def call(environ):
        body = app(environ, lambda status, headers, exc_info=None: lambda data: None)
        for _ in body:
            pass
        getattr(body, "close", lambda: None)()
    for environ in environs[:20]:
        call(environ)
    profile = cProfile.Profile()
    profile.enable()
    for environ in environs[20:]:
        call(environ)
    profile.disable()
    return pstats.Stats(profile).total_calls / count

print(calls(build(sys.argv[1] if sys.argv[2] == "sentry" else None)), file=sys.stderr)
"""


def _calls_per_request(kind: str, dsn: str) -> float:
    """Python calls per request (cProfile counts are deterministic) through the WSGI
    callable of a fresh process (no sentry-sdk patches left by other tests): ``core``
    extension, or ``sentry`` reporting to ``dsn``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")}
    done = subprocess.run(
        [sys.executable, "-c", _COST_SCRIPT, dsn, kind],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
        timeout=60,
        text=True,
    )
    return float(done.stderr.strip().splitlines()[-1])


def test_sentry_without_tracing_adds_only_its_isolation_step_per_request() -> None:
    """Per request Sentry (tracing off) adds exactly its observer step over the core:
    request_started, request_finished and one ContextVar read = 3 calls (the Flask
    integration, ~800 calls, and the access log as breadcrumbs stay out)."""
    closed = f"http://key@127.0.0.1:{free_port()}/1"
    core = _calls_per_request("core", closed)
    with_sentry = _calls_per_request("sentry", closed)
    # rounded: a clock tick (the log timestamp's cache) adds a call now and then
    assert round(with_sentry - core) == 3


def test_events_queue_while_sentry_is_slow_and_the_queue_is_bounded(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Sentry holding every answer: all 20 failing requests are answered before a single
    event is delivered (capture only queues), and of the 20 at most the one in flight
    plus GATEWAY_OBS_SENTRY_QUEUE_SIZE (3) are sent; the rest are dropped."""
    app = sentry_app(make_app, sink.dsn, SENTRY_QUEUE_SIZE=3)
    client = app.test_client()
    sink.hold()
    try:
        ids = [client.get("/items/0").get_json().get(EVENT_ID_MEMBER) for _ in range(20)]
        assert all(ids)  # captured, with an id for the body
        assert sink.events() == []  # ...and yet nothing has arrived
    finally:
        sink.release()
    sentry.flush(timeout=5)
    assert 1 <= len(sink.events()) <= 4


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


def test_a_forked_child_reports_through_a_fresh_client(make_app: MakeApp, sink: SentrySink) -> None:
    """After os.fork() the child keeps the parent's client until its first event (a fork
    that never reports pays nothing), then gets its own transport; its events arrive."""
    app = sentry_app(make_app, sink.dsn)
    report(app, "/items/0")  # the parent's sender thread and connection are in use
    parent_client = app.extensions[EXTENSION_KEY].binding.client
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork in a threaded process
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            lazy = app.extensions[EXTENSION_KEY].binding.client is parent_client
            with app.app_context():
                sent = capture_message("from the child") is not None
            fresh = app.extensions[EXTENSION_KEY].binding.client is not parent_client
            sentry.flush(timeout=5)
            code = 0 if lazy and fresh and sent else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    events = sink.wait_for("event", 2)
    assert "from the child" in [e.get("message") for e in events]
    assert sentry.after_fork() is False  # the parent keeps its own client


_GUNICORN_APP = """
import os
from flask import Flask
from flask_gateway_obs import GatewayObs, capture_message

app = Flask("preloaded")
app.config["GATEWAY_OBS_SENTRY_DSN"] = os.environ["TEST_SINK_DSN"]
GatewayObs(app)

with app.app_context():
    capture_message("master loaded")  # uses the transport before the fork


@app.get("/boom/<int:n>")
def boom(n):
    raise RuntimeError(f"boom {n} in {os.getpid()}")
"""


@pytest.mark.slow
def test_gunicorn_preload_workers_deliver_events_and_stop_promptly(
    sink: SentrySink, tmp_path: Any
) -> None:
    """gunicorn --preload, 2 workers, an event sent by the master before forking: the
    workers' errors all arrive, and no worker hangs (SIGTERM stops them at once)."""
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    if not os.path.exists(gunicorn):
        pytest.skip("gunicorn is not installed")
    (tmp_path / "preloaded_app.py").write_text(textwrap.dedent(_GUNICORN_APP))
    port = free_port()
    env = {**os.environ, "TEST_SINK_DSN": sink.dsn, "PYTHONPATH": str(tmp_path)}
    hooks = ["-c", "python:flask_gateway_obs.gunicorn"]  # post_fork and worker_exit included
    command = [gunicorn, *hooks, "--preload", "-w", "2", "--graceful-timeout", "10"]
    errors = (tmp_path / "gunicorn.err").open("w")
    process = subprocess.Popen(
        [*command, "-b", f"127.0.0.1:{port}", "preloaded_app:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    try:
        _wait_for_port(port)
        for n in range(6):
            assert _status(port, f"/boom/{n}") == 500
        events = sink.wait_for("event", 7)
        messages = [e.get("message") or e["exception"]["values"][-1]["value"] for e in events]
        assert "master loaded" in messages
        assert len([m for m in messages if m.startswith("boom")]) == 6
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            # A worker hung since the fork would hold the exit for the graceful timeout.
            process.wait(timeout=8)
        finally:
            process.kill()
            process.wait()
            errors.close()


def _status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _status(port, "/items")
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"gunicorn did not listen on {port}")
