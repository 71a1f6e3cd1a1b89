"""The ``sentry_sdk`` clients: one per distinct configuration, made again after a fork,
flushed at exit and on drain, closed by :func:`shutdown` (and by ``testing.reset()``).

The first configuration becomes the process's global client (unless the application
initialised Sentry itself, which is left alone); a second app with the same
configuration shares it; a second app with another configuration gets a client of its
own, used for everything the adapter captures for that app.
"""

from __future__ import annotations

import atexit
import codecs
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..core import process
from ..logs.loggers import ACCESS_LOGGER_NAME, LOGGER_NAME
from .registry import REGISTRY, Binding, SentryProcess, active_state, process_state, request_user
from .scrubber import Scrubber

__all__ = ["after_fork", "flush", "install_process_hooks", "obtain", "shutdown"]

_log = logging.getLogger("flask_gateway_obs.sentry")

# Hooks handed once per process to sentry-sdk and the interpreter. A reset cannot take
# them back (sentry-sdk has no way to remove a global event processor, nor os a fork
# handler), so they are installed once and each looks the registry up when it runs.
_installed: set[str] = set()


def obtain(
    key: tuple[Any, ...], make_options: Callable[[Binding], dict[str, Any]], scrubber: Scrubber
) -> Binding:
    """The client for ``key``: the existing one, or a new one (global if none is).

    :raises TypeError, ValueError: from ``sentry_sdk`` for options it refuses.
    """
    import sentry_sdk

    state = process_state()
    if state.bindings and state.forked():
        after_fork()  # an app set up in a forked child: the inherited clients first
    with state.lock:
        binding = state.bindings.get(key)
        if binding is not None:
            return binding
        binding = Binding(key, scrubber)
        options = make_options(binding)
        current = sentry_sdk.get_client()
        ours = any(b.client is current for b in state.bindings.values())
        if current.is_active() and not ours and not state.foreign_warned:
            state.foreign_warned = True
            _log.warning(
                "Sentry was initialised outside flask-gateway-obs; it is left as it is, and "
                "the extension reports its apps' errors through a client of its own"
            )
        if any(b.options["dsn"] == options["dsn"] for b in state.bindings.values()):
            _log.info("a second Sentry configuration for the same DSN gets a client of its own")
        is_global = not current.is_active()
        if is_global:
            sentry_sdk.init(**options)
            client = sentry_sdk.get_client()
        else:
            client = sentry_sdk.Client(**options)
        # Keep what sentry_sdk guessed (release from git, ...) for a re-creation after a
        # fork; "" (no release) stops it from guessing again in every child.
        options["release"] = client.options.get("release") or ""
        binding.client, binding.options, binding.is_global = client, options, is_global
        if not state.bindings:
            atexit.register(_flush_at_exit)
            process.on_reset(REGISTRY, _reset)
        state.bindings[key] = binding
        return binding


def install_process_hooks(event_processor: Callable[[Any, Any], Any]) -> None:
    """Install, once per process, the global event processor and the process hooks."""
    if "process" in _installed:
        return
    from sentry_sdk.integrations import logging as sentry_logging
    from sentry_sdk.scope import add_global_event_processor

    # first: it must run before sentry-sdk's dedupe processor (see capture.hold)
    add_global_event_processor(event_processor)
    # The sender thread's first request resolves the "idna" codec (importing
    # encodings.idna and stringprep). If a server forks (gunicorn --preload) while that
    # thread is inside the import, the child inherits the module's import lock held and
    # hangs on its first request; importing them here, before any fork, avoids it.
    codecs.lookup("idna")
    # Exact names only, and few: sentry-sdk matches every other record against each
    # (fnmatch) on every log line. The per-request access lines and the error handler's
    # own "unhandled error" record (its event would be built, then dropped as a
    # duplicate) are worth it; the rest of ours is dropped by the hooks.
    ignore_sentry_logs = getattr(sentry_logging, "ignore_logger_for_sentry_logs", None)
    for name in (ACCESS_LOGGER_NAME, LOGGER_NAME, "gunicorn.access"):
        sentry_logging.ignore_logger(name)
        if ignore_sentry_logs is not None:
            ignore_sentry_logs(name)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    _installed.add("process")


def _after_fork_in_child() -> None:
    # Cheap on purpose: it runs in every child (multiprocessing, subprocess with
    # preexec_fn). The clients are re-created on the child's first event.
    state = process.lookup(REGISTRY)
    if isinstance(state, SentryProcess):
        state.lock = threading.Lock()  # the parent's may have been held by a thread now gone


def _flush_at_exit() -> None:
    # sentry-sdk flushes its global client at exit; the clients of our other apps are ours.
    state = active_state()
    if state is not None and not state.forked():  # a fork that never reported: not its queue
        flush(only_own=True)


def after_fork() -> bool:
    """Give this process clients of its own after a fork; a no-op if it has them already.

    A forked child inherits the parent's transport: its connection pool (sockets the
    parent also uses) and a queue whose sender thread did not survive the fork. The
    clients are re-created on the child's first event (so forks that never report,
    ``multiprocessing`` helpers or ``subprocess`` with ``preexec_fn``, pay nothing);
    gunicorn's ``post_fork`` hook may call this to do it at once. The process's global
    client is replaced only if it is still ours (an application that called
    ``sentry_sdk.init`` itself keeps its client).

    :returns: whether clients were re-created.
    """
    state = active_state()
    if state is None or not state.forked():
        return False
    import sentry_sdk

    with state.lock:
        if not state.forked():
            return False
        global_scope = sentry_sdk.Scope.get_global_scope()
        for binding in state.bindings.values():
            old = binding.client
            binding.client = sentry_sdk.Client(**binding.options)
            if binding.is_global:
                if global_scope.client is old:
                    global_scope.set_client(binding.client)
                else:
                    binding.is_global = False
        state.pid = os.getpid()
    return True


def flush(timeout: float | None = None, *, only_own: bool = False) -> None:
    """Wait until pending events are sent, at most ``timeout`` seconds in all.

    Default: the largest ``GATEWAY_OBS_SENTRY_SHUTDOWN_TIMEOUT`` configured. For
    gunicorn's ``worker_exit`` hook; at interpreter exit it runs on its own.

    :param only_own: leave out the process's global client (sentry-sdk flushes it).
    """
    state = active_state()
    if state is None or state.forked():
        return  # nothing sent in this process yet (a fresh fork): nothing to wait for
    flush_bindings([b for b in state.bindings.values() if not (only_own and b.is_global)], timeout)


def flush_bindings(bindings: list[Binding], timeout: float | None) -> None:
    """Flush the clients of ``bindings`` within ``timeout`` seconds in all."""
    if not bindings:
        return
    if timeout is None:
        timeout = max(float(b.options["shutdown_timeout"]) for b in bindings)
    deadline = time.monotonic() + timeout
    for binding in bindings:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            binding.client.flush(timeout=remaining)
        except Exception:
            _log.debug("Sentry flush failed", exc_info=True)


def shutdown(timeout: float | None = None) -> None:
    """Flush (at most ``timeout`` seconds) and close every client the adapter made.

    Apps set up before keep working with Sentry off. ``testing.reset()`` calls it.
    """
    state = active_state()
    if state is None:
        return
    import sentry_sdk
    from sentry_sdk.scope import Scope, ScopeType

    flush(timeout)
    with state.lock:
        for binding in state.bindings.values():
            try:
                binding.client.close(timeout=0)
            except Exception:
                _log.debug("Sentry close failed", exc_info=True)
            if binding.is_global and sentry_sdk.get_client() is binding.client:
                Scope.get_global_scope().set_client(None)
        state.bindings.clear()
        for reporter in list(state.reporters):
            reporter.held.clear()
        state.reporters.clear()
        state.foreign_warned = False
    atexit.unregister(_flush_at_exit)
    Scope.set_isolation_scope(Scope(ty=ScopeType.ISOLATION))
    request_user.set(None)


def _reset() -> None:
    # testing.reset(): close without waiting; the next test starts with no client.
    shutdown(timeout=0)
