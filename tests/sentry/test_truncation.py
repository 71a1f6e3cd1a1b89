"""Long strings: sentry-sdk's ``max_value_length`` never lets a secret's prefix through."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from flask import request

from flask_gateway_obs.sentry.shorten import shorten

from ..conftest import MakeApp
from ..sentry_sink import SentrySink
from .apps import report, sentry_app

#: The options of the runs: sentry-sdk's default length, and a short one.
_LENGTHS = [pytest.param(None, id="sdk-default"), pytest.param(100, id="max_value_length=100")]
#: A window of this many characters of a secret found on the wire is a leak.
_WINDOW = 12


def _options(max_value_length: int | None) -> dict[str, Any]:
    if max_value_length is None:
        return {}
    return {"SENTRY_OPTIONS": {"max_value_length": max_value_length}}


def _leaks(secret: str, raw: bytes) -> list[str]:
    """Every window of ``secret`` that occurs in ``raw``."""
    windows = {secret[i : i + _WINDOW] for i in range(len(secret) - _WINDOW + 1)}
    return sorted(window for window in windows if window.encode() in raw)


def _sdk_default() -> int | None:
    from sentry_sdk.consts import DEFAULT_MAX_VALUE_LENGTH

    return DEFAULT_MAX_VALUE_LENGTH


@pytest.mark.parametrize("max_value_length", _LENGTHS)
def test_a_long_secret_header_quoted_in_the_exception_leaks_no_part(
    make_app: MakeApp, sink: SentrySink, max_value_length: int | None
) -> None:
    """A 1,300-character API key quoted in the exception text: no part of it is sent,
    though sentry-sdk shortens the text (and the header) before ``before_send``."""
    key = secrets.token_hex(650)
    app = sentry_app(make_app, sink.dsn, **_options(max_value_length))

    @app.get("/upstream")
    def upstream() -> Any:
        raise RuntimeError(f"upstream rejected {request.headers['X-Api-Key']}")

    report(app, "/upstream", headers={"X-Api-Key": key})
    [event] = sink.events()
    assert _leaks(key, sink.all_bytes()) == []
    assert event["exception"]["values"][-1]["value"] == "upstream rejected [REDACTED]"


@pytest.mark.parametrize("max_value_length", _LENGTHS)
def test_a_long_secret_local_quoted_in_another_local_leaks_no_part(
    make_app: MakeApp, sink: SentrySink, max_value_length: int | None
) -> None:
    """A long secret-named local quoted by a non-secret local (and by the exception):
    no part of it is sent."""
    app = sentry_app(make_app, sink.dsn, **_options(max_value_length))
    token = secrets.token_hex(650)

    @app.get("/job")
    def job() -> Any:
        api_token = "".join(token)  # made here: the request never saw it
        note = f"calling upstream with {api_token}"
        assert note
        raise RuntimeError(f"refused {api_token}")

    report(app, "/job")
    [event] = sink.events()
    assert _leaks(token, sink.all_bytes()) == []
    frame_vars = event["exception"]["values"][-1]["stacktrace"]["frames"][-1]["vars"]
    assert frame_vars["note"] == "'calling upstream with [REDACTED]'"


@pytest.mark.parametrize("max_value_length", _LENGTHS)
def test_long_strings_are_still_shortened_after_scrubbing(
    make_app: MakeApp, sink: SentrySink, max_value_length: int | None
) -> None:
    """Strings are cut to ``max_value_length`` (else sentry-sdk's default), with
    sentry-sdk's ``...`` and ``_meta`` annotation, once scrubbed."""
    app = sentry_app(make_app, sink.dsn, **_options(max_value_length))
    long_text = "x" * 5000

    @app.get("/long")
    def long() -> Any:
        raise RuntimeError(long_text)

    report(app, "/long")
    [event] = sink.events()
    value = event["exception"]["values"][-1]["value"]
    limit = max_value_length if max_value_length is not None else _sdk_default()
    if limit is None:
        assert value == long_text  # this sentry-sdk shortens nothing by default
        return
    assert value == "x" * (limit - 3) + "..."
    meta = event["_meta"]["exception"]["values"]["0"]["value"][""]
    assert meta == {"len": 5000, "rem": [["!limit", "x", limit - 3, limit]]}


def test_multibyte_strings_are_cut_by_bytes_on_a_code_point(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """As sentry-sdk does: a string's UTF-8 size counts, and no code point is split."""
    app = sentry_app(make_app, sink.dsn, SENTRY_OPTIONS={"max_value_length": 20})

    @app.get("/wide")
    def wide() -> Any:
        raise RuntimeError("é" * 30)

    report(app, "/wide")
    [event] = sink.events()
    assert event["exception"]["values"][-1]["value"] == "é" * 8 + "..."


def test_span_descriptions_and_keys_stay_whole_and_meta_is_merged() -> None:
    """As sentry-sdk: a span's description and mapping keys are not cut; a cut joins
    the annotations sentry-sdk already made."""
    long = "y" * 50
    event = {
        "spans": [{"description": long, "data": {long: long}}],
        "extra": {"note": long},
        "_meta": {"extra": {"note": {"": {"rem": [["!limit", "x"]]}}}},
    }
    out = shorten(event, 10)
    assert out["spans"][0]["description"] == long
    assert out["spans"][0]["data"] == {long: "y" * 7 + "..."}
    assert out["extra"]["note"] == "y" * 7 + "..."
    assert out["_meta"]["extra"]["note"][""] == {
        "len": 50,
        "rem": [["!limit", "x"], ["!limit", "x", 7, 10]],
    }
    assert shorten({"extra": {"note": long}}, None) == {"extra": {"note": long}}
