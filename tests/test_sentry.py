"""Sentry reporting against a real HTTP sink on 127.0.0.1 that reads the raw envelopes."""

from __future__ import annotations

import http.client
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, abort, request

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
    settings = {Keys.SENTRY_DSN: dsn, **{Keys.__dict__[k]: v for k, v in config.items()}}
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


def test_ip_headers_are_left_out_without_pii(make_app: MakeApp, sink: SentrySink) -> None:
    """Without PII, neither the client IP nor X-Forwarded-For/X-Real-IP reach Sentry."""
    app = sentry_app(make_app, sink.dsn)
    report(app, "/items/0", headers={"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "198.51.100.9"})
    raw = sink.all_bytes()
    assert b"203.0.113.7" not in raw
    assert b"198.51.100.9" not in raw


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
    "jsonnested",
    "jsonlist",
    "local",
    "localdict",
    "logmessage",
    "logextra",
    "dsn",
    "urltoken",
    "extra",
)


@pytest.mark.parametrize("pii", [False, True])
def test_canary_secrets_never_reach_the_wire(
    make_app: MakeApp, sink: SentrySink, pii: bool
) -> None:
    """Secrets planted in headers, cookie, query, nested JSON with a list, locals, log
    breadcrumbs, a DSN and a URL token in the exception: none in the raw envelope bytes."""
    CANARY.clear()
    CANARY.update({name: f"canary{name}{uuid.uuid4().hex}" for name in _CANARY_PLACES})
    canary = CANARY
    app = sentry_app(
        make_app,
        sink.dsn,
        SENTRY_SEND_DEFAULT_PII=pii,
        SENTRY_DENYLIST=["signature"],
        SENTRY_MAX_REQUEST_BODY="always",
    )

    @app.post("/orders/<int:order_id>")
    def order(order_id: int) -> Any:
        api_token = CANARY["local"]
        settings = {"db": {"db_password": CANARY["localdict"]}, "retries": 3}
        headers = dict(request.headers)
        req = request._get_current_object()  # type: ignore[attr-defined]
        log.info("calling upstream with api_key=%s", CANARY["logmessage"])
        log.warning("login refused", extra={"password": CANARY["logextra"]})
        capture_message("before the failure", secret_note=CANARY["extra"])
        assert api_token and settings and headers and req
        raise RuntimeError(
            f"cannot reach postgresql://app:{CANARY['dsn']}@db.internal/orders "
            f"nor https://{CANARY['urltoken']}@git.example.com/repo.git"
        )

    client = app.test_client()
    client.set_cookie("session", canary["cookie"])
    response = client.post(
        f"/orders/7?access_token={canary['query']}&page=2",
        json={
            "customer": {"name": "Ada", "card": {"client_secret": canary["jsonnested"]}},
            "items": [{"sku": "X1", "auth": {"token": canary["jsonlist"]}}],
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
    events = sink.events()
    assert len(events) == 2  # the message and the error
    raw = sink.all_bytes()
    leaked = [name for name, value in canary.items() if value.encode() in raw]
    assert leaked == [], f"secrets on the wire: {leaked}"
    # ...and the event is still useful: non-secret data is there.
    error = next(e for e in events if "exception" in e)
    assert error["request"]["query_string"] == "access_token=[REDACTED]&page=2"
    assert error["request"]["data"]["customer"]["name"] == "Ada"
    assert error["request"]["data"]["items"][0]["sku"] == "X1"
    assert "postgresql://app:***@db.internal/orders" in error["exception"]["values"][-1]["value"]
    frame_vars = error["exception"]["values"][-1]["stacktrace"]["frames"][-1]["vars"]
    assert frame_vars["order_id"] == "7"


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
    """Fail closed: if scrubbing raises, nothing is sent and the request is answered."""
    app = sentry_app(make_app, sink.dsn)

    def broken(self: Scrubber, event: Any, hint: Any) -> Any:
        raise ValueError("scrubber bug")

    monkeypatch.setattr(Scrubber, "scrub_event", broken)
    response = report(app, "/items/0")
    assert response.status_code == 500
    assert sink.events() == []


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


def test_breadcrumb_scrubbing_fails_closed() -> None:
    """before_breadcrumb scrubs data and messages; on error the breadcrumb is dropped."""
    scrubber = Scrubber()
    crumb = {"message": "retry with token=abc123", "data": {"api_key": "k", "n": 1}}
    assert scrubber.before_breadcrumb(crumb, {}) == {
        "message": "retry with token=[REDACTED]",
        "data": {"api_key": "[REDACTED]", "n": 1},
    }
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
    """No DSN: no listener, no client; helpers return None; the sink hears nothing."""
    app = sentry_app(make_app, "")
    assert EXTENSION_KEY not in app.extensions
    response = report(app, "/items/0")
    assert EVENT_ID_MEMBER not in response.get_json()
    with app.test_request_context("/"):
        set_user({"id": 1})
        assert capture_message("nobody listens") is None
        assert capture_exception(RuntimeError("nobody")) is None
    sentry.flush(timeout=1)
    assert sink.raw == []


def test_sentry_dsn_environment_variable_is_used_as_fallback(
    make_app: MakeApp, sink: SentrySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SENTRY_DSN in the environment turns reporting on when the config key is unset."""
    monkeypatch.setenv("SENTRY_DSN", sink.dsn)
    app = sentry_app(make_app, "")
    report(app, "/items/0")
    assert len(sink.events()) == 1


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


def test_unreachable_sentry_leaves_requests_normal_and_the_queue_bounded(
    make_app: MakeApp, black_hole: tuple[str, int]
) -> None:
    """DSN at a closed port or a server that never answers: 200s and 500s as usual,
    however many errors pile up behind a queue of 3; shutdown waits only its timeout."""
    closed = f"http://key@127.0.0.1:{free_port()}/1"
    hole = f"http://key@{black_hole[0]}:{black_hole[1]}/1"
    for dsn in (closed, hole):
        app = sentry_app(make_app, dsn, SENTRY_QUEUE_SIZE=3, SENTRY_SHUTDOWN_TIMEOUT=0.2)
        client = app.test_client()
        for _ in range(20):
            assert client.get("/items/0").status_code == 500
            assert client.get("/items/1").status_code == 200
        started = time.monotonic()
        sentry.shutdown()
        assert time.monotonic() - started < 5  # bounded: the sender waits up to 30 s


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


def test_a_forked_child_reports_through_a_fresh_client(make_app: MakeApp, sink: SentrySink) -> None:
    """After os.fork() the child gets its own transport and its events arrive."""
    app = sentry_app(make_app, sink.dsn)
    report(app, "/items/0")  # the parent's sender thread and connection are in use
    parent_client = app.extensions[EXTENSION_KEY].binding.client
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork in a threaded process
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            fresh = app.extensions[EXTENSION_KEY].binding.client is not parent_client
            with app.app_context():
                sent = capture_message("from the child") is not None
            sentry.flush(timeout=5)
            code = 0 if fresh and sent else 2
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
