"""gunicorn hooks: ``/metrics`` of any worker reports the total over all workers, and a
worker asked to stop drains (readiness 503 at once, in-flight requests finished, Sentry
flushed in bounded time).

Use the module as gunicorn's config, with ``PROMETHEUS_MULTIPROC_DIR`` set in the
environment that starts gunicorn::

    PROMETHEUS_MULTIPROC_DIR=/run/gateway-metrics \\
        gunicorn -c python:flask_gateway_obs.gunicorn --workers 4 "app:create_app()"

or import the hooks into your own ``gunicorn.conf.py``::

    from flask_gateway_obs.gunicorn import (  # noqa: F401
        child_exit, on_starting, post_fork, post_worker_init, worker_exit,
    )

- :func:`on_starting` (master, once): creates the directory if needed, removes the
  metric files a previous run left (their counts would add to this run's), and
  warns loudly when several workers would each report only their own numbers.
- :func:`child_exit` (master, per worker that exits): ``mark_process_dead``, so a
  dead worker's in-flight count and breaker/health states stop counting. Its
  counters and histograms stay in the files: totals survive worker restarts.
- :func:`post_fork` (worker, once): gives the worker Sentry clients of its own (also
  done automatically after any fork; a safety net).
- :func:`post_worker_init` (worker, once its signal handlers are set): chains a SIGTERM
  handler before gunicorn's own, which marks every app of the worker as draining, so
  each readiness probe that still reaches the worker (on a kept-alive connection, or
  waiting for one of a gthread worker's threads) answers 503 while in-flight requests
  finish; gunicorn's graceful stop then goes on as usual.
- :func:`worker_exit` (worker, at exit, after its last request): runs the drain hooks
  (Sentry's flush, span exporters) and sends pending Sentry events, within
  ``GATEWAY_OBS_DRAIN_FLUSH_TIMEOUT`` in all.

This module imports nothing of prometheus_client at import time: the client picks
its multiprocess mode when first imported, which must happen with the variable set.
"""

from __future__ import annotations

import glob
import os
import signal
import sys
import time
from typing import Any

__all__ = [
    "child_exit",
    "clear_directory",
    "on_starting",
    "post_fork",
    "post_worker_init",
    "worker_exit",
]

_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BANNER = "!" * 72


def clear_directory(path: str) -> int:
    """Remove the metric files (``*.db``) in ``path``; how many were removed."""
    removed = 0
    for name in glob.glob(os.path.join(path, "*.db")):
        try:
            os.remove(name)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _loud(server: Any, message: str) -> None:
    server.log.warning("%s\n%s\n%s", _BANNER, message, _BANNER)


def on_starting(server: Any) -> None:
    """gunicorn ``on_starting`` hook: prepare ``PROMETHEUS_MULTIPROC_DIR`` for this run."""
    workers = int(getattr(server.cfg, "workers", 1) or 1)
    path = os.environ.get(_ENV)
    if not path:
        if workers > 1:
            _loud(
                server,
                f"flask-gateway-obs: {workers} workers but {_ENV} is not set. Each worker "
                "keeps its own metrics and every /metrics scrape reports ONE worker's "
                f"numbers. Set {_ENV} to an empty directory writable by the workers.",
            )
        return
    from .metrics import check_directory

    problem = check_directory(path)
    if problem is not None:
        if workers > 1:
            _loud(
                server,
                f"flask-gateway-obs: {_ENV}={path!r} is not a writable directory "
                f"({problem}). Workers cannot share their metrics; they will refuse "
                "to start with metrics enabled. Create the directory or fix its permissions.",
            )
        else:
            server.log.warning("flask-gateway-obs: %s=%r is unusable (%s)", _ENV, path, problem)
        return
    removed = clear_directory(path)
    if removed:
        server.log.info("flask-gateway-obs: removed %d stale metric files from %s", removed, path)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: drop the live gauges of the worker that exited."""
    path = os.environ.get(_ENV)
    if not path:
        return
    try:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(worker.pid, path)  # type: ignore[no-untyped-call]
    except Exception as exc:  # the master must survive whatever happens here
        server.log.warning("flask-gateway-obs: mark_process_dead(%s) failed: %s", worker.pid, exc)


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn ``post_fork`` hook: the worker's own Sentry clients (a no-op without a DSN)."""
    try:
        from .sentry import after_fork

        after_fork()
    except Exception as exc:
        server.log.warning("flask-gateway-obs: Sentry set-up after fork failed: %s", exc)


def post_worker_init(worker: Any) -> None:
    """gunicorn ``post_worker_init`` hook: drain on the worker's SIGTERM.

    gunicorn sets the worker's signal handlers just before this hook; ours runs first on
    SIGTERM (it only marks the worker's apps as draining, see
    :func:`flask_gateway_obs.core.drain.begin`) and then hands over to gunicorn's.
    """
    from .core import drain

    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        drain.begin()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except Exception as exc:  # a worker class that handles signals its own way
        worker.log.warning("flask-gateway-obs: no drain on SIGTERM: %s", exc)


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn ``worker_exit`` hook: the drain hooks, then pending Sentry events, within
    ``GATEWAY_OBS_DRAIN_FLUSH_TIMEOUT`` in all."""
    from .core import drain

    budget = drain.flush_timeout()
    deadline = time.monotonic() + budget
    try:
        drain.flush(budget)
    except Exception as exc:
        server.log.warning("flask-gateway-obs: drain at exit failed: %s", exc)
    if "flask_gateway_obs.sentry" not in sys.modules:
        return  # Sentry is off in this process: nothing of it to send
    try:
        from .sentry import flush

        flush(timeout=max(0.0, deadline - time.monotonic()) if budget else None)
    except Exception as exc:
        server.log.warning("flask-gateway-obs: Sentry flush at exit failed: %s", exc)
