"""Sending events through a chosen client, and the hold that makes
``log.exception(...); raise`` one event.

A log record with the exception being handled becomes an event through sentry-sdk's
logging integration before the error handler reports the same exception (and
sentry-sdk's dedupe would then drop the handler's report, the one with the status tags
and the id for the response body). So that log event is held back until the request
shows whether the handler reports that exception (the two become one event) or not
(then the log event is sent as it was when the request ends).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from ..core.context import RequestContext, current_request
from .clients import after_fork
from .registry import Binding, process_state

__all__ = ["MECHANISM", "REPORTER_HINT", "RESENT_HINT", "capture_error", "hold", "release"]

#: ``mechanism.type`` of the events the adapter captures.
MECHANISM = "flask_gateway_obs"
#: The hint member naming the reporter of an event captured outside Flask's context.
REPORTER_HINT = "flask_gateway_obs_reporter"
#: The hint member of an event sent again (already enriched and routed).
RESENT_HINT = "flask_gateway_obs_resent"
#: At most this many log events are held per app at once.
MAX_HELD = 64

_log = logging.getLogger("flask_gateway_obs.sentry")

#: Held log events of one app: per request, ``(binding, error, event, hint)``.
Held = dict[RequestContext, list[tuple[Binding, BaseException, Any, Any]]]


def send(
    binding: Binding,
    event: Any,
    hint: Any,
    tags: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str | None:
    """Capture ``event`` through ``binding``'s client in a scope of its own."""
    import sentry_sdk

    state = process_state()
    if state.forked():
        after_fork()
    client = binding.client
    with sentry_sdk.new_scope() as scope:
        if sentry_sdk.get_client() is not client:
            scope.set_client(client)
        for name, value in (tags or {}).items():
            scope.set_tag(name, value)
        for name, value in (extra or {}).items():
            scope.set_extra(name, value)
        return scope.capture_event(event, hint=hint)


def resend(binding: Binding, event: Any, hint: Any) -> None:
    """Capture an event again through ``binding`` (it was already enriched)."""
    try:
        hint = dict(hint) if isinstance(hint, dict) else {}
        hint[RESENT_HINT] = True
        event.pop("breadcrumbs", None)  # the scope adds them again
        send(binding, event, hint)
    except Exception:
        _log.debug("Sentry capture failed", exc_info=True)


def capture_error(
    binding: Binding | None,
    error: BaseException,
    *,
    handled: bool = True,
    level: str | None = None,
    tags: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    reporter: Any = None,
    held: Held | None = None,
) -> str | None:
    """Send ``error``; the event id, or ``None`` if nothing was sent. A log event of the
    same error held in ``held`` (the app's) is merged into it."""
    if binding is None:
        return None
    try:
        from sentry_sdk.utils import event_from_exception

        event, hint = event_from_exception(
            error,
            client_options=binding.client.options,
            mechanism={"type": MECHANISM, "handled": handled},
        )
        if level is not None:
            event["level"] = level  # type: ignore[typeddict-item]
        if reporter is not None:
            hint[REPORTER_HINT] = reporter
        if held:
            logged = _claim(held, error)
            if logged is not None:
                _merge_log_event(event, logged)
        return send(binding, event, hint, tags, extra)
    except Exception:  # reporting must never break the request
        _log.debug("Sentry capture failed", exc_info=True)
        return None


def hold(held: Held, binding: Binding | None, event: Any, hint: Any, ctx: RequestContext) -> bool:
    """Hold back the log event of the exception being handled (see the module's text);
    whether it was held (then it is not sent now)."""
    if not isinstance(hint, dict) or binding is None:
        return False
    record = hint.get("log_record")
    exc_info = hint.get("exc_info")
    if record is None or not exc_info or getattr(record, "funcName", None) == "log_exception":
        return False
    handled = sys.exc_info()[1]
    if handled is None or exc_info[1] is not handled:
        return False  # not the exception being handled: nothing will report it
    if sum(len(items) for items in held.values()) >= MAX_HELD:
        return False
    held.setdefault(ctx, []).append((binding, handled, event, hint))
    return True


def release(held: Held, ctx: RequestContext) -> None:
    """Send the log events held during ``ctx`` that the error handler did not claim."""
    for binding, _, event, hint in held.pop(ctx, None) or ():
        resend(binding, event, hint)


def _claim(held: Held, error: BaseException) -> Any:
    """The held log event of ``error`` in this request, taken out of the hold."""
    ctx = current_request.get()
    items = held.get(ctx) if ctx is not None else None
    if not items:
        return None
    for index, item in enumerate(items):
        if item[1] is error:
            del items[index]
            if not items:
                held.pop(ctx, None)  # type: ignore[arg-type]
            return item[2]
    return None


def _merge_log_event(event: Any, logged: Any) -> None:
    for key in ("logentry", "logger"):
        if key in logged:
            event[key] = logged[key]
    extra = logged.get("extra")
    if isinstance(extra, dict) and extra:
        event.setdefault("extra", {}).update(extra)
