"""Every process-wide registry of the extension, and the one :func:`reset`.

Per-app state lives in ``app.extensions["gateway_obs"]``; what must be shared by every
app of a process (Sentry clients, breakers used outside an app, shared breaker-state
connections, ...) lives here, in registries that the concerns create on first use:

.. code-block:: python

    clients = process.registry("sentry.clients", dict)

:func:`reset` empties them all and runs the clean-ups the concerns registered, so a
test (ours, or a user's through :func:`flask_gateway_obs.testing.reset`) starts from
a clean process.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["lookup", "on_reset", "registry", "reset"]

_T = TypeVar("_T")
_lock = threading.Lock()
_registries: dict[str, Any] = {}
_cleanups: dict[str, Callable[[], None]] = {}


def registry(name: str, factory: Callable[[], _T]) -> _T:
    """The process-wide object ``name``, made by ``factory`` on first use."""
    found = _registries.get(name)
    if found is None:
        with _lock:
            found = _registries.get(name)
            if found is None:
                found = _registries[name] = factory()
    return found


def lookup(name: str) -> Any:
    """The process-wide object ``name`` if it was made, else ``None``; never makes it
    and never waits for a lock (safe in a forked child, cheap on a hot path)."""
    return _registries.get(name)


def on_reset(name: str, cleanup: Callable[[], None]) -> None:
    """Run ``cleanup`` at the next :func:`reset` (once per ``name``; the last one wins)."""
    with _lock:
        _cleanups[name] = cleanup


def reset() -> None:
    """Forget every process-wide registry, after running the registered clean-ups.

    A clean-up that fails does not stop the others.
    """
    with _lock:
        cleanups = list(_cleanups.values())
        _cleanups.clear()
    for cleanup in cleanups:
        with contextlib.suppress(Exception):  # one broken clean-up must not block the rest
            cleanup()
    with _lock:
        _registries.clear()
