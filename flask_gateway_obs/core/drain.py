"""The drain: what the process does when it is asked to stop.

:func:`begin` marks every app of the process as draining (``state.draining``): from then
on readiness answers 503 without running a check, so load balancers and Kubernetes take
the instance out of rotation, while every other request, in flight or new, is served as
usual and liveness stays 200. :func:`flush` then runs the apps' drain hooks
(``state.drain_hooks``: Sentry's flush, span exporters), all of them within
``GATEWAY_OBS_DRAIN_FLUSH_TIMEOUT`` seconds, however a hook behaves.

``obs.begin_drain()`` does both; under gunicorn, the hooks of
:mod:`flask_gateway_obs.gunicorn` call :func:`begin` on the worker's SIGTERM and
:func:`flush` when the worker exits, once its in-flight requests are done.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

from ..logs import LOGGER_NAME
from . import process
from .state import ObsState

__all__ = ["begin", "flush", "flush_timeout", "track"]

_REGISTRY = "drain.states"
_log = logging.getLogger(LOGGER_NAME + ".drain")


def _states() -> weakref.WeakSet[ObsState]:
    states: weakref.WeakSet[ObsState] = process.registry(_REGISTRY, weakref.WeakSet)
    return states


def _snapshot() -> list[ObsState]:
    """The apps' states now. An app set up on another thread meanwhile changes the set
    under the iteration; try again (a signal handler must not fail)."""
    for _ in range(5):
        try:
            return list(_states())
        except RuntimeError:
            continue
    return []


def track(state: ObsState) -> None:
    """Count ``state``'s app among the apps of this process that a drain concerns."""
    _states().add(state)


def begin() -> int:
    """Mark every app of the process as draining; how many there are.

    Cheap and lock-free, so a signal handler may call it: it sets a flag on each state.
    """
    states = _snapshot()
    for state in states:
        state.draining = True
    return len(states)


def flush_timeout() -> float:
    """The drain's bound in seconds: the largest ``GATEWAY_OBS_DRAIN_FLUSH_TIMEOUT`` of the
    process's apps (0 without apps)."""
    return max((s.settings.drain_flush_timeout for s in _snapshot()), default=0.0)


def flush(timeout: float | None = None) -> bool:
    """Run every app's drain hooks, each once, within ``timeout`` seconds in all.

    Each hook is called with the seconds left. They run one after the other on a
    thread of their own that this call waits for at most ``timeout`` (default
    :func:`flush_timeout`), so a hook that hangs delays the exit by the bound, not more;
    a hook that fails is logged and the next one runs.

    :returns: whether every hook finished in time.
    """
    hooks: list[Callable[[float], None]] = []
    for state in _snapshot():
        for hook in state.drain_hooks:
            if not any(_same(hook, known) for known in hooks):
                hooks.append(hook)
    if not hooks:
        return True
    budget = flush_timeout() if timeout is None else timeout
    deadline = time.monotonic() + budget

    def run() -> None:
        for hook in hooks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                hook(remaining)
            except Exception:
                _log.warning("a drain hook failed", exc_info=True)

    worker = threading.Thread(target=run, name="gateway-obs-drain", daemon=True)
    worker.start()
    worker.join(max(0.0, budget))
    if worker.is_alive():
        _log.warning(
            "drain hooks did not finish within %g s; the process stops without them", budget
        )
        return False
    return True


def _same(a: Callable[[float], None], b: Callable[[float], None]) -> bool:
    """One hook given by two apps (a function, or the same object's bound method)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False
