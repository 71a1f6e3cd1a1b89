"""Secrets in free text (messages, exception texts, stacks) are masked in every log format,
by the same masker the Sentry scrubber uses."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from flask_gateway_obs import get_logger
from flask_gateway_obs.config import Keys
from flask_gateway_obs.logs import JsonFormatter
from flask_gateway_obs.logs.redaction import REDACTED, SECRET_FRAGMENTS, TextMasker

from ..conftest import MakeApp

PASSWORD = "hunter2-canary-pw"
API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
TOKEN = "tok-3fa9c1d2e7b4"
LITERAL = "lit-9f8e7d6c5b4a"


@pytest.fixture(autouse=True)
def _only_our_handlers() -> Iterator[None]:
    """The test runner's capture handlers off the root logger: our handler alone writes."""
    root = logging.getLogger()
    foreign = [h for h in root.handlers if type(h).__module__.startswith("_pytest")]
    for handler in foreign:
        root.removeHandler(handler)
    yield
    for handler in foreign:
        root.addHandler(handler)


def _refused(password: str, api_key: str) -> RuntimeError:
    return RuntimeError(f"login refused: password={password}")


def _failing_login(password: str) -> None:
    raise _refused(password, api_key="lit-9f8e7d6c5b4a")


def _app_that_logs(make_app: MakeApp, log_format: str) -> Any:
    app = make_app({Keys.LOG_FORMAT: log_format})

    @app.get("/login")
    def login() -> str:
        log = logging.getLogger("app.auth")
        log.info("calling upstream with api_key=%s", API_KEY)
        get_logger("app.auth").warning(f"refresh failed, token: {TOKEN}")
        try:
            _failing_login(PASSWORD)
        except RuntimeError:
            log.exception("login failed")
        return "ok"

    return app


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_key_value_secrets_never_reach_the_log_in_any_format(
    make_app: MakeApp, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    """password=..., api_key=..., token: ... in a message, in an exception's text and in
    its stack (the source line's literal included) are masked, JSON and console alike."""
    app = _app_that_logs(make_app, log_format)
    assert app.test_client().get("/login").status_code == 200
    out = capsys.readouterr().out
    assert [s for s in (PASSWORD, API_KEY, TOKEN, LITERAL) if s in out] == []
    assert "api_key=[REDACTED]" in out
    assert "password=[REDACTED]" in out
    assert "raise _refused(password, api_key=" in out  # the stack's source line, as code


def test_masked_fields_keep_what_is_not_secret(
    make_app: MakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON record keeps the message around the secret, the exception's type and the
    stack's frames; the access line is unchanged."""
    app = _app_that_logs(make_app, "json")
    app.test_client().get("/login")
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    by_message = {r["message"]: r for r in records}
    assert "calling upstream with api_key=[REDACTED]" in by_message
    assert "refresh failed, token: [REDACTED]" in by_message
    failed = by_message["login failed"]
    assert failed["exc_type"] == "RuntimeError"
    assert failed["exc_message"].startswith("login refused: password=[REDACTED]")
    assert "in _failing_login" in failed["stack"]
    assert by_message["GET /login 200"]["path"] == "/login"


@pytest.mark.parametrize(
    "text",
    [
        "token expired for user 42",
        "password reset requested by ada",
        "session closed by the client",
        "GET /api/tokens 200",
    ],
)
def test_prose_with_secret_words_is_logged_as_is(text: str) -> None:
    """A secret-looking word followed by ordinary words is prose, not a secret."""
    record = logging.makeLogRecord({"msg": text, "levelno": logging.INFO, "name": "app"})
    assert json.loads(JsonFormatter().format(record))["message"] == text


def test_logs_and_sentry_mask_text_with_one_implementation() -> None:
    """The log formatter's masker and the Sentry scrubber's give the same text."""
    from flask_gateway_obs.sentry import Scrubber

    text = f"password={PASSWORD} api_key: {API_KEY} Authorization: Bearer {TOKEN}"
    record = logging.makeLogRecord({"msg": text, "levelno": logging.INFO, "name": "app"})
    logged = json.loads(JsonFormatter().format(record))["message"]
    assert logged == TextMasker(SECRET_FRAGMENTS).mask(text)
    assert logged == Scrubber().scrub_text(text)
    assert PASSWORD not in logged and API_KEY not in logged and TOKEN not in logged


SCHEMAS = [("json", "default"), ("console", "default"), ("json", "ecs"), ("json", "otel")]


@pytest.mark.parametrize(("log_format", "schema"), SCHEMAS)
def test_a_secret_inside_a_string_literal_of_a_stack_line_is_masked(
    make_app: MakeApp, capsys: pytest.CaptureFixture[str], log_format: str, schema: str
) -> None:
    """A source line whose literal holds the secret itself (the name inside the literal,
    not before it) loses the secret in the stack too, in every format and schema."""
    app = make_app({Keys.LOG_FORMAT: log_format, Keys.LOG_SCHEMA: schema})

    @app.get("/connect")
    def connect() -> str:
        raise RuntimeError(f"refused {PASSWORD}: password=hunter2-literal-pw dbname=orders")

    @app.get("/token")
    def token() -> str:
        raise RuntimeError("invalid token 3fa9c1d2e3f4abc7")

    client = app.test_client()
    assert client.get("/connect").status_code == 500
    assert client.get("/token").status_code == 500
    out = capsys.readouterr().out
    assert "hunter2-literal-pw" not in out
    assert "3fa9c1d2e3f4abc7" not in out
    assert "password=[REDACTED] dbname=orders" in out  # the rest of the literal is kept
    assert "raise RuntimeError(" in out  # the source line is still there, as code


def test_source_lines_mask_the_secrets_of_their_own_literals() -> None:
    """The code masker: a literal after a secret-looking name is masked whole; a literal
    that holds a key=value secret loses the value only; ordinary literals stay."""
    masker = TextMasker(SECRET_FRAGMENTS)
    assert masker.mask_code(['    connect("host=db user=app password=pw-123456 dbname=o")']) == [
        '    connect("host=db user=app password=[REDACTED] dbname=o")'
    ]
    assert masker.mask_code(['    log.info("token %s", token)']) == [
        '    log.info("token %s", token)'
    ]
    assert masker.mask_code(['    connect(password="pw-123456", user="ada")']) == [
        '    connect(password="[REDACTED]", user="[REDACTED]")'
    ]
    assert masker.mask_code(['    print("hello", name)']) == ['    print("hello", name)']


@pytest.mark.parametrize(("log_format", "schema"), SCHEMAS)
def test_string_values_of_fields_lose_their_secrets_whatever_their_names(
    make_app: MakeApp, capsys: pytest.CaptureFixture[str], log_format: str, schema: str
) -> None:
    """Extra and bound fields under ordinary names are masked as messages are: URL
    credentials, key=value secrets, at any depth; the rest of each value is kept."""
    app = make_app({Keys.LOG_FORMAT: log_format, Keys.LOG_SCHEMA: schema})

    @app.get("/fields")
    def fields() -> str:
        from flask import request

        from flask_gateway_obs import bind_context

        bind_context(upstream="https://svc:bound-pw-98765@upstream.example/v1")
        get_logger("app").info(
            "connecting",
            db_url="postgresql://app:dsn-pw-12345@db/orders",
            note=f"retry with password={PASSWORD}",
            url=request.url,
            nested={"targets": ["redis://:nested-pw-5555@cache:6379/0"]},
        )
        logging.getLogger("app").info("plain", extra={"detail": f"api_key: {API_KEY}"})
        return "ok"

    assert app.test_client().get("/fields?token=query-tok-777&page=2").status_code == 200
    out = capsys.readouterr().out
    leaked = ["bound-pw-98765", "dsn-pw-12345", PASSWORD, "query-tok-777", "nested-pw-5555"]
    assert [s for s in (*leaked, API_KEY) if s in out] == []
    assert "postgresql://app:***@db/orders" in out
    assert "page=2" in out


@pytest.mark.parametrize(("log_format", "schema"), SCHEMAS)
def test_url_credentials_in_a_path_are_masked_in_every_field_of_the_access_line(
    make_app: MakeApp, capsys: pytest.CaptureFixture[str], log_format: str, schema: str
) -> None:
    """A path holding a URL with credentials (a proxy route) is logged with them masked,
    in the message and in the path field alike."""
    app = make_app({Keys.LOG_FORMAT: log_format, Keys.LOG_SCHEMA: schema})

    @app.get("/fetch/<path:target>")
    def fetch(target: str) -> str:
        return "ok"

    assert app.test_client().get("/fetch/https://admin:path-pw-4242@internal/x").status_code == 200
    out = capsys.readouterr().out
    assert "path-pw-4242" not in out
    assert "https://admin:***@internal/x" in out


@pytest.mark.parametrize(("log_format", "schema"), SCHEMAS)
def test_an_error_line_loses_the_secrets_of_its_request(
    make_app: MakeApp, capsys: pytest.CaptureFixture[str], log_format: str, schema: str
) -> None:
    """An exception quoting a secret header, cookie or query parameter under no
    secret-looking name: the error line (its message, exception text and stack) loses
    those values, as Sentry's event does; the request's other values stay."""
    app = make_app({Keys.LOG_FORMAT: log_format, Keys.LOG_SCHEMA: schema})
    app.testing = False

    @app.get("/upstream")
    def upstream() -> str:
        from flask import request

        quoted = (request.headers["X-Api-Key"], request.args["access_token"])
        logging.getLogger("app").error("rejected with %s and %s", *quoted)
        raise RuntimeError(f"upstream rejected {quoted[0]} ({request.args['page']})")

    client = app.test_client()
    client.set_cookie("sid", "cookie-value-31337")
    response = client.get(
        "/upstream?access_token=qtok9876543210&page=page-seven",
        headers={"X-Api-Key": "hk_9f8e7d6c5b4a"},
    )
    assert response.status_code == 500
    out = capsys.readouterr().out
    assert [s for s in ("hk_9f8e7d6c5b4a", "qtok9876543210") if s in out] == []
    assert "page-seven" in out
    assert "upstream rejected [REDACTED]" in out


PEM = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            ['PRIVATE_KEY = """-----BEGIN PRIVATE KEY-----', *PEM, '-----END PRIVATE KEY-----"""'],
            ['PRIVATE_KEY = """[REDACTED]', REDACTED, REDACTED, '[REDACTED]"""'],
        ),
        (
            ['    return sign(private_key="""', PEM[0], '""", blob=1)', '    x = "kept"'],
            ['    return sign(private_key="""', REDACTED, '""", blob=1)', '    x = "kept"'],
        ),
        (
            ["SECRET = '''", "abcdefghij", "'''", "z = 2"],
            ["SECRET = '''", REDACTED, "'''", "z = 2"],
        ),
        (
            ['    """Docs about tokens and', '    how they expire."""', '    return "ok"'],
            ['    """Docs about tokens and', '    how they expire."""', '    return "ok"'],
        ),
        (['API_KEY = """sk_live_abcdef123456"""'], ['API_KEY = """[REDACTED]"""']),
    ],
)
def test_triple_quoted_literals_across_source_lines_are_masked(
    lines: list[str], expected: list[str]
) -> None:
    """A triple-quoted literal after a secret-looking name (a PEM key) is masked on every
    line it spans; a docstring that only mentions tokens is prose and stays."""
    assert TextMasker(SECRET_FRAGMENTS).mask_code(lines) == expected


def test_a_pem_key_in_a_frames_source_context_never_reaches_sentry() -> None:
    """The Sentry scrubber masks a frame's source context as consecutive code lines: a
    key in a triple-quoted literal is gone from pre_context, context_line and
    post_context."""
    from flask_gateway_obs.sentry import Scrubber

    frame = {
        "filename": "app.py",
        "pre_context": ["def sign():"],
        "context_line": '    key = load(private_key="""-----BEGIN PRIVATE KEY-----',
        "post_context": [*PEM, '-----END PRIVATE KEY-----""")'],
    }
    event = {"exception": {"values": [{"stacktrace": {"frames": [frame]}}]}}
    scrubbed = Scrubber().scrub_event(event, {})
    text = json.dumps(scrubbed)
    assert [part for part in (*PEM, "BEGIN PRIVATE KEY") if part in text] == []
    assert "def sign():" in text
