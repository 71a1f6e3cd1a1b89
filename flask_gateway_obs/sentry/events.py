"""The hooks sentry-sdk calls: the global event processor (the request's context, only
when an event is sent) and each client's ``before_send`` (routing, duplicates, scrubbing).

Events that sentry-sdk captures on its own (log records at ERROR) during a request of an
app with a client of its own are handed over to that client and scrubbed by its rules.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import current_app, has_request_context, request

from ..core.context import current_request
from ..logs.loggers import LOGGER_NAME
from .capture import REPORTER_HINT, RESENT_HINT, hold, resend
from .clients import after_fork
from .registry import Binding, SentryProcess, active_state
from .reporter import SentryReporter, current_reporter, reporter_for, reporter_of

if TYPE_CHECKING:
    from flask import Request

__all__ = ["before_breadcrumb", "before_send", "before_send_transaction", "event_processor"]

_log = logging.getLogger("flask_gateway_obs.sentry")


def event_processor(event: Any, hint: Any) -> Any:
    """Global event processor: adds the request's context, only when an event is sent,
    and holds back the log event of the exception being handled (see :mod:`.capture`)."""
    if isinstance(hint, dict) and hint.get(RESENT_HINT):
        return event
    state = active_state()
    if state is None or not _ours(state):
        return event  # the application's own client: its events are left as they are
    if is_duplicate(event, hint):
        # dropped here, before sentry-sdk's dedupe processor remembers the exception
        # (and drops the error handler's own report of it as a duplicate)
        return None
    ctx = current_request.get()
    attached = has_request_context()
    if attached:
        reporter = reporter_of(current_app)
        req: Request | None = request._get_current_object()  # type: ignore[attr-defined]
    elif ctx is not None:
        given = hint.get(REPORTER_HINT) if isinstance(hint, dict) else None
        reporter = given if isinstance(given, SentryReporter) else reporter_for(ctx.environ)
        req = ctx.environ.get("werkzeug.request")
    else:
        return event
    if reporter is None:
        return event
    event = reporter.enrich(event, hint, req, ctx)
    if attached and ctx is not None and hold(reporter.held, reporter.binding, event, hint, ctx):
        return None
    return event


def _ours(state: SentryProcess) -> bool:
    import sentry_sdk

    client = sentry_sdk.get_client()
    return any(binding.client is client for binding in state.bindings.values())


def before_send(binding: Binding, event: Any, hint: Any) -> Any:
    """A client's ``before_send``: hand the event to the client of the app it belongs to
    (a log record of another app's request, a client inherited across a fork), drop
    duplicates, then scrub with the rules of that client (fail closed)."""
    if not (isinstance(hint, dict) and hint.get(RESENT_HINT)):
        try:
            state = active_state()
            stale = state is not None and state.forked()
            if stale:
                after_fork()  # this event came through the client of the parent
            reporter = current_reporter()
            target = reporter.binding if reporter is not None else None
            if stale or (target is not None and target is not binding):
                resend(target or binding, event, hint)
                return None
        except Exception:  # routing failed: scrub with our rules and send here
            _log.debug("Sentry routing failed", exc_info=True)
    try:
        # again here for an application's own client made first (its dedupe processor
        # then runs before ours); sentry-sdk forgets an exception dropped here
        if is_duplicate(event, hint):
            return None
    except Exception:
        _log.debug("Sentry duplicate check failed", exc_info=True)
    return binding.scrubber.before_send(event, hint)


def before_send_transaction(binding: Binding, event: Any, hint: Any) -> Any:
    """A client's ``before_send_transaction``: trim and scrub (fail closed)."""
    return binding.scrubber.before_send_transaction(event, hint)


def before_breadcrumb(binding: Binding, crumb: Any, hint: Any) -> Any:
    """A client's ``before_breadcrumb``: leave our loggers out, mask secret log arguments."""
    return binding.scrubber.before_breadcrumb(crumb, hint)


def is_duplicate(event: Any, hint: Any) -> bool:
    """Events that another path reports too, or that are ours to leave out.

    Flask reports an error that escaped its handlers through ``got_request_exception``
    (sentry-sdk's Flask integration listens) and logs it through ``app.logger``
    (the logging integration listens) before handing it to our error handler, which
    reports it: those two copies are dropped, unless the app propagates exceptions
    (testing, debug), in which case Flask re-raises instead of calling our handler and
    the signal's copy is the only report. So are events made from the extension's own
    log records: they describe conditions already in metrics and logs.
    """
    record = hint.get("log_record") if isinstance(hint, Mapping) else None
    if record is not None:
        name = getattr(record, "name", "")
        if name == LOGGER_NAME or name.startswith(LOGGER_NAME + "."):
            return True
        if getattr(record, "funcName", None) == "log_exception" and reported_here():
            return True
    exception = event.get("exception")
    values = exception.get("values") if isinstance(exception, Mapping) else None
    if values:
        for value in values:
            mechanism = value.get("mechanism") if isinstance(value, Mapping) else None
            if isinstance(mechanism, Mapping) and mechanism.get("type") == "flask":
                return reported_here()
    return False


def reported_here() -> bool:
    """Whether our error handler reports the current request's unhandled errors: its
    app reports through this adapter and does not propagate exceptions."""
    if not has_request_context():
        return False
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if reporter_of(app) is None:
        return False
    propagate = app.config.get("PROPAGATE_EXCEPTIONS")
    if propagate is None:
        propagate = app.testing or app.debug
    return not propagate
