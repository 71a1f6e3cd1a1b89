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
from flask_gateway_obs.logs.redaction import SECRET_FRAGMENTS, TextMasker

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
