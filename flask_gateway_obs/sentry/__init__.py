"""Sentry error reporting: a thin adapter over ``sentry_sdk``.

Set up by ``init_app`` only when a DSN is configured (``GATEWAY_OBS_SENTRY_DSN``, else
the ``SENTRY_DSN`` environment variable; ``"off"`` or ``""`` keeps it off); otherwise
the helpers are cheap no-ops and ``sentry_sdk`` is not even imported. Every name here is
loaded on first use:

- :mod:`.helpers`: ``capture_exception``, ``capture_message``, ``set_user``;
- :mod:`.setup`: ``init_app`` and the client options;
- :mod:`.scrubber`: ``Scrubber``, which every event passes through (fails closed);
- :mod:`.reporter`: ``SentryReporter`` (one per app), the per-request step, the drain;
- :mod:`.events`: the hooks sentry-sdk calls; :mod:`.capture`: sending, the log-event hold;
- :mod:`.clients`: the clients (one per configuration), fork, flush, ``shutdown``;
- :mod:`.registry`: the process-wide state, in :mod:`flask_gateway_obs.core.process`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_getattr

if TYPE_CHECKING:
    from .clients import after_fork, flush, shutdown
    from .helpers import capture_exception, capture_message, set_user
    from .registry import EXTENSION_KEY
    from .reporter import EVENT_ID_MEMBER, SentryReporter
    from .scrubber import PII_FRAGMENTS, Scrubber, add_secret
    from .setup import init_app, resolve_dsn

__all__ = [
    "EVENT_ID_MEMBER",
    "EXTENSION_KEY",
    "PII_FRAGMENTS",
    "Scrubber",
    "SentryReporter",
    "add_secret",
    "after_fork",
    "capture_exception",
    "capture_message",
    "flush",
    "init_app",
    "resolve_dsn",
    "set_user",
    "shutdown",
]

#: Public names by the module that defines them.
_LAZY = {
    "capture_exception": "helpers",
    "capture_message": "helpers",
    "set_user": "helpers",
    "EXTENSION_KEY": "registry",
    "init_app": "setup",
    "resolve_dsn": "setup",
    "Scrubber": "scrubber",
    "PII_FRAGMENTS": "scrubber",
    "add_secret": "scrubber",
    "SentryReporter": "reporter",
    "EVENT_ID_MEMBER": "reporter",
    "after_fork": "clients",
    "flush": "clients",
    "shutdown": "clients",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
