"""No secret leaves the process: the scrubber, against the raw envelope bytes."""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import pytest
from flask import request

from flask_gateway_obs import (
    capture_message,
    sentry,
)
from flask_gateway_obs.sentry import Scrubber

from ..conftest import MakeApp
from ..sentry_sink import SentrySink
from .apps import log, report, sentry_app

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


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        ('secret_key: str = "sk_live_4eC39HqLy"', 'secret_key: str = "[REDACTED]"'),
        (
            'resp = get(url, auth=("ada", "pw-9f8e7d"))',
            'resp = get(url, auth=("[REDACTED]", "[REDACTED]"))',
        ),
        ('pw = getenv("DB_PASSWORD", "dflt-1a2b3c")', 'pw = getenv("DB_PASSWORD", "[REDACTED]")'),
        (
            'conf = {"api_key": "k-5d6e7f", "user": "ada"}',
            'conf = {"api_key": "[REDACTED]", "user": "[REDACTED]"}',
        ),
        ("x = compute()  # password=hunter2", "x = compute()  # password=[REDACTED]"),
        ('log.info("password reset for %s", user)', 'log.info("password reset for %s", user)'),
        ('raise ValueError("invalid token")', 'raise ValueError("invalid token")'),
    ],
)
def test_source_lines_lose_every_literal_after_a_secret_name(line: str, masked: str) -> None:
    """A literal after a secret-looking name is masked whatever the syntax (annotation,
    call argument, tuple, default of a lookup); lookup keys, prose and plain code stay."""
    frame = {"context_line": line, "pre_context": [], "post_context": []}
    assert Scrubber().scrub_event({"frames": [frame]}, {})["frames"][0]["context_line"] == masked


def test_a_secret_literal_continued_on_the_next_source_line_is_masked() -> None:
    """``API_KEY = (`` then the literal on its own line: the open bracket carries the
    secret name to the lines it continues on, and the literal is swept elsewhere too."""
    frame = {
        "pre_context": ["API_KEY = (", '    "sk_live_continued_5d6e7f"', ")"],
        "context_line": "client = connect(API_KEY)",
        "post_context": ['note = "kept"'],
        "vars": {"key": "'sk_live_continued_5d6e7f'"},
    }
    scrubbed = Scrubber().scrub_event({"frames": [frame]}, {})["frames"][0]
    assert scrubbed["pre_context"] == ["API_KEY = (", '    "[REDACTED]"', ")"]
    assert scrubbed["post_context"] == ['note = "kept"']
    assert scrubbed["vars"] == {"key": "'[REDACTED]'"}


def test_secret_literals_in_source_context_never_reach_the_wire(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """The source lines around a failing line are sent, as code, without the literals
    that follow a secret-looking name (locals off, so only the context could leak)."""
    app = sentry_app(make_app, sink.dsn, SENTRY_INCLUDE_LOCALS=False)

    @app.get("/literals")
    def literals() -> Any:
        credentials = ("ada", "lit-tuple-7c41a0b2")
        fallback = os.environ.get("GW_TEST_DB_PASSWORD", "lit-default-93e1f6")
        api_key = (
            "lit-continued-5d0c2e"
        )  # fmt: skip
        raise RuntimeError(f"literals {len(fallback + api_key)} {credentials[0]}")

    report(app, "/literals")
    [event] = sink.events()
    raw = sink.all_bytes()
    # spelt apart: these lines are in the event's source context too
    planted = ["lit-" + "tuple-7c41a0b2", "lit-" + "default-93e1f6", "lit-" + "continued-5d0c2e"]
    assert [v for v in planted if v.encode() in raw] == []
    frame = event["exception"]["values"][-1]["stacktrace"]["frames"][-1]
    lines = [line.strip() for line in frame["pre_context"]]
    assert 'fallback = os.environ.get("GW_TEST_DB_PASSWORD", "[REDACTED]")' in lines
    assert frame["context_line"].strip().startswith("raise RuntimeError(")


@pytest.mark.parametrize("pii", [False, True])
def test_values_any_scrubber_masks_are_swept_from_the_whole_event(
    make_app: MakeApp, sink: SentrySink, pii: bool
) -> None:
    """Locals named exactly password, secret and token and an argument password, put into
    the exception's text: their values appear nowhere on the wire (not in the exception
    value, nor in Flask's frames that hold the exception), whichever scrubber meets the
    names first (sentry-sdk's own would leave only ``[Filtered]`` to learn from)."""
    app = sentry_app(make_app, sink.dsn, SENTRY_SEND_DEFAULT_PII=pii)
    CANARY.clear()
    CANARY.update({name: f"v{uuid.uuid4().hex}" for name in ("pw", "sec", "tok", "arg")})

    def connect(user: str, password: str, note: str) -> None:
        raise RuntimeError(f"connect {user} failed with {password}: {note}")

    @app.get("/connect")
    def view() -> Any:
        password, secret, token = CANARY["pw"], CANARY["sec"], CANARY["tok"]
        connect("ada", CANARY["arg"], f"{password} {secret} {token}")

    report(app, "/connect")
    [event] = sink.events()
    raw = sink.all_bytes()
    assert [name for name, value in CANARY.items() if value.encode() in raw] == []
    value = event["exception"]["values"][-1]["value"]
    assert value == "connect ada failed with [REDACTED]: [REDACTED] [REDACTED] [REDACTED]"


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
