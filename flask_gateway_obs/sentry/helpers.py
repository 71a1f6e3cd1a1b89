"""The public helpers: :func:`capture_exception`, :func:`capture_message`, :func:`set_user`.

With Sentry off each returns after one dict lookup, and importing this module imports
neither ``sentry_sdk`` nor the rest of the adapter.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core.context import current_request
from .registry import active_state, request_user

if TYPE_CHECKING:
    from .registry import Binding, SentryProcess
    from .reporter import SentryReporter

__all__ = ["capture_exception", "capture_message", "set_user"]

_USER_FIELDS = ("id", "username", "email", "ip_address")

_log = logging.getLogger("flask_gateway_obs.sentry")


def capture_exception(error: BaseException | None = None, **context: Any) -> str | None:
    """Report ``error`` (default: the exception being handled) to Sentry.

    Inside a request the event carries the request ID, route, user and request; keyword
    arguments are attached as extra data (scrubbed like the rest).

    :returns: the event id, or ``None`` if nothing was sent (Sentry off, no exception,
        sampled out, dropped by a filter).
    """
    state = active_state()
    if state is None:
        return None
    if error is None:
        error = sys.exc_info()[1]
        if error is None:
            return None
    from .capture import capture_error

    try:
        reporter, binding = _current(state)
    except Exception:  # reporting must never break the caller
        _log.debug("Sentry capture failed", exc_info=True)
        return None
    held = reporter.held if reporter is not None else None
    return capture_error(binding, error, extra=context, held=held)


def capture_message(message: str, level: str = "info", **context: Any) -> str | None:
    """Report ``message`` at ``level`` (``debug`` ... ``fatal``) to Sentry.

    :returns: the event id, or ``None`` if nothing was sent.
    """
    state = active_state()
    if state is None:
        return None
    from .capture import send

    try:
        _, binding = _current(state)
        if binding is None:
            return None
        return send(binding, {"message": message, "level": level}, None, None, context)
    except Exception:  # reporting must never break the caller
        _log.debug("Sentry capture failed", exc_info=True)
        return None


def set_user(user: Any) -> None:
    """Attach ``user`` to the events of the current request (outside one: of this context).

    ``user`` is a dict or an object with an ``id`` (or Flask-Login's ``get_id()``), or the
    id itself; ``None`` clears it. Only the id is kept unless
    ``GATEWAY_OBS_SENTRY_SEND_DEFAULT_PII`` is on, which adds ``username``, ``email`` and
    ``ip_address``. Costs a small dict per call; nothing without a DSN.

    A user that cannot be read (a field that raises, as a detached ORM object's does)
    is not set, and logged at debug level: like the rest of the reporting, this never
    raises into the caller.
    """
    state = active_state()
    if state is None:
        return
    try:
        reporter, _ = _current(state)
        data = _user_data(user, reporter.send_default_pii if reporter is not None else False)
        ctx = current_request.get()
        if ctx is not None:
            request_user.set((ctx, data) if data else None)
            return
        from sentry_sdk import Scope

        Scope.get_isolation_scope().set_user(data or None)
    except Exception:
        _log.debug("Sentry set_user failed: the user is not set", exc_info=True)


def _current(state: SentryProcess) -> tuple[SentryReporter | None, Binding | None]:
    """The current app's reporter and client; outside an app, the global client (else
    any) of the adapter."""
    from .reporter import current_reporter

    reporter = current_reporter()
    if reporter is not None:
        return reporter, reporter.binding
    for binding in state.bindings.values():
        if binding.is_global:
            return None, binding
    return None, next(iter(state.bindings.values()), None)


def _user_data(user: Any, pii: bool) -> dict[str, Any]:
    if user is None:
        return {}
    if isinstance(user, (str, int)) and not isinstance(user, bool):
        return {"id": str(user)}
    fields: dict[str, Any] = {}
    for name in _USER_FIELDS if pii else ("id",):
        if isinstance(user, Mapping):
            value = user.get(name)
        else:
            value = getattr(user, name, None)
            if value is None and name == "id" and callable(getattr(user, "get_id", None)):
                value = user.get_id()
        if value is not None:
            fields[name] = str(value)
    return fields
