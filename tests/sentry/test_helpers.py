"""The public helpers never raise: a failure inside them is contained."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from flask_gateway_obs import capture_exception, capture_message, sentry, set_user
from flask_gateway_obs.sentry import helpers

from ..conftest import MakeApp
from ..sentry_sink import SentrySink
from .apps import report, sentry_app


class DetachedError(Exception):
    """What an ORM raises when a detached object's attribute is read."""


class DetachedUser:
    """A user whose attributes cannot be read any more (a detached ORM object)."""

    @property
    def id(self) -> Any:
        raise DetachedError("Instance <User> is not bound to a Session")

    @property
    def email(self) -> Any:
        raise DetachedError("Instance <User> is not bound to a Session")


class UnprintableId:
    """An id whose ``str()`` raises."""

    def __str__(self) -> str:
        raise DetachedError("cannot render")


@pytest.mark.parametrize("pii", [False, True])
@pytest.mark.parametrize(
    "user", [DetachedUser(), {"id": UnprintableId()}], ids=["detached", "unprintable-id"]
)
def test_set_user_with_an_unreadable_user_does_not_raise(
    make_app: MakeApp,
    sink: SentrySink,
    caplog: pytest.LogCaptureFixture,
    pii: bool,
    user: Any,
) -> None:
    """A user whose fields raise when read: no exception, no user set, a debug line; the
    request's error is still reported."""
    app = sentry_app(make_app, sink.dsn, SENTRY_SEND_DEFAULT_PII=pii)

    @app.get("/me")
    def me() -> Any:
        set_user(user)
        raise RuntimeError("after set_user")

    with caplog.at_level(logging.DEBUG, logger="flask_gateway_obs.sentry"):
        response = report(app, "/me")
    assert response.status_code == 500
    [event] = sink.events()
    assert "id" not in (event.get("user") or {})  # with PII, sentry-sdk adds the IP
    assert any("set_user" in r.getMessage() for r in caplog.records if r.levelname == "DEBUG")


def test_set_user_with_an_unreadable_user_outside_a_request_does_not_raise(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Outside a request too: nothing raised, nothing set on sentry-sdk's scope."""
    sentry_app(make_app, sink.dsn)
    set_user(DetachedUser())
    capture_message("job done")
    sentry.flush(timeout=5)
    [event] = sink.events()
    assert not event.get("user")


def test_capture_helpers_contain_their_own_failures(
    make_app: MakeApp, sink: SentrySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """capture_exception/capture_message return None when the adapter itself fails
    (here: finding the current app's reporter), instead of raising into the caller."""
    app = sentry_app(make_app, sink.dsn)

    def broken(state: Any) -> Any:
        raise DetachedError("reporter lookup failed")

    monkeypatch.setattr(helpers, "_current", broken)

    @app.get("/helpers")
    def view() -> dict[str, Any]:
        try:
            raise LookupError("handled here")
        except LookupError:
            exception_id = capture_exception()
        return {"exception": exception_id, "message": capture_message("hello")}

    response = app.test_client().get("/helpers")
    assert response.status_code == 200
    assert response.get_json() == {"exception": None, "message": None}
