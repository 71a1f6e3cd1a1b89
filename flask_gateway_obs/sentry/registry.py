"""The Sentry adapter's process-wide state, kept in :mod:`flask_gateway_obs.core.process`.

``sentry_sdk`` keeps one client per process; the adapter keeps one client per distinct
configuration (a :class:`Binding`), the live reporters, and what a fork must redo.
This module imports nothing of ``sentry_sdk`` and no Flask: the public helpers read it
to learn, at the cost of a dict lookup, that Sentry is off.
"""

from __future__ import annotations

import contextvars
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ..core import process
from ..core.context import RequestContext

if TYPE_CHECKING:
    from .scrubber import Scrubber

__all__ = [
    "EXTENSION_KEY",
    "REGISTRY",
    "Binding",
    "SentryProcess",
    "active_state",
    "process_state",
    "request_user",
]

#: Where an app's reporter lives: ``app.extensions["gateway_obs_sentry"]``.
EXTENSION_KEY = "gateway_obs_sentry"
#: The name of the adapter's registry in :mod:`flask_gateway_obs.core.process`.
REGISTRY = "sentry"

#: The user set with :func:`~flask_gateway_obs.sentry.set_user`, tied to its request.
request_user: contextvars.ContextVar[tuple[RequestContext, dict[str, Any]] | None] = (
    contextvars.ContextVar("flask_gateway_obs_sentry_user", default=None)
)


class Binding:
    """One ``sentry_sdk`` client, the options it was made from, and its scrubber."""

    __slots__ = ("client", "is_global", "key", "options", "scrubber")

    def __init__(self, key: tuple[Any, ...], scrubber: Scrubber) -> None:
        self.key = key
        self.scrubber = scrubber
        self.client: Any = None
        self.options: dict[str, Any] = {}
        #: Whether the client is the process's global one (``sentry_sdk.init``).
        self.is_global = False


class SentryProcess:
    """What the adapter shares across the apps of a process."""

    def __init__(self) -> None:
        #: One client per distinct configuration.
        self.bindings: dict[tuple[Any, ...], Binding] = {}
        #: The live reporters, weakly: an app that is gone is not kept alive here.
        self.reporters: weakref.WeakSet[Any] = weakref.WeakSet()
        #: The process the clients were made in (a forked child re-makes its own).
        self.pid = os.getpid()
        self.lock = threading.Lock()
        #: Whether the "Sentry initialised elsewhere" warning was given.
        self.foreign_warned = False

    def forked(self) -> bool:
        """Whether the clients were made in another process (this one is a fork)."""
        return self.pid != os.getpid()


def process_state() -> SentryProcess:
    """The process's Sentry state, made on first use."""
    return process.registry(REGISTRY, SentryProcess)


def active_state() -> SentryProcess | None:
    """The process's Sentry state if a client was made, else ``None`` (never makes it)."""
    found = process.lookup(REGISTRY)
    return found if isinstance(found, SentryProcess) and found.bindings else None
