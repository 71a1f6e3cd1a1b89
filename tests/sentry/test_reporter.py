"""Which errors reach Sentry, once, with the request's context; the per-request scope."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from flask import request
from werkzeug.test import EnvironBuilder

from flask_gateway_obs import (
    capture_exception,
    capture_message,
    sentry,
    set_user,
)
from flask_gateway_obs.sentry import EVENT_ID_MEMBER, EXTENSION_KEY

from ..conftest import MakeApp
from ..sentry_sink import SentrySink
from .apps import log, report, sentry_app

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
    assert report(app, "/items/0").status_code == 500  # the held event is gone with its request
    assert [e.get("logentry") for e in sink.events()][1] is None


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
