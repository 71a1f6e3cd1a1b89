"""Built-in health checks: Redis ``PING``, PostgreSQL ``SELECT 1``, memory and disk.

Each check is a callable object that returns a :class:`~flask_gateway_obs.health.model.CheckResult`
or raises; the runner in :mod:`flask_gateway_obs.health.runner` times it and bounds it.
Every network check also carries its own client-side time limits, so the thread that
runs it is free again by the time the runner gives up on it: a hung dependency never
keeps a thread for longer than the check's timeout (plus scheduling noise).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import selectors
import shutil
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .memory import CGROUP_ROOT, PROC_SELF_CGROUP, MemoryUsage, memory_usage
from .model import CheckResult, mask_secrets

__all__ = ["DiskCheck", "MemoryCheck", "PostgresCheck", "RedisCheck", "redis_client"]


# --- Redis -------------------------------------------------------------------------------


def redis_client(url: str, timeout: float) -> Any:
    """The health check's own client for ``url`` (one server, Sentinel or Cluster): connect
    and socket timeouts of ``timeout``, one attempt (a retry would multiply what a dead host
    costs). Through Sentinel each new connection asks where the master is now."""
    from ..core.redis import client

    return client(url, timeout=timeout, health_check_interval=0, client_name="gateway-obs-health")


class RedisCheck:
    """``PING`` through a client built from ``url`` (with connect and socket timeouts)
    or through ``client``, one the application made itself. A Redis Cluster is asked
    ``CLUSTER INFO`` instead: a node that answers while the cluster is down (a master
    lost, slots uncovered) says ``cluster_state:fail``, and the check is unhealthy.

    :param url: a ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or
        ``redis+cluster://`` URL.
    :param client: a ``redis.Redis`` (its own timeouts apply; the runner still bounds the probe).
    :param timeout: seconds for connecting and for the answer.
    """

    def __init__(self, *, url: str | None = None, client: Any = None, timeout: float) -> None:
        if (url is None) == (client is None):
            raise ValueError("RedisCheck needs exactly one of url and client")
        self.url = url
        self.timeout = timeout
        # Built (and redis imported) now, at init_app: a first probe that paid for the
        # import could miss its deadline. No connection is made until the first PING.
        self._client = client if client is not None else redis_client(url or "", timeout)
        from ..core.redis import is_cluster

        self._cluster = is_cluster(self._client)

    @property
    def target(self) -> dict[str, Any]:
        """What the check talks to, for the details (password masked)."""
        if self.url is not None:
            return {"url": mask_secrets(self.url)}
        return {"client": type(self._client).__name__}

    def __call__(self) -> CheckResult:
        if self._cluster:
            state = self._client.cluster_info().get("cluster_state")
            if state != "ok":
                return CheckResult.unhealthy(f"cluster_state is {state}", **self.target)
            return CheckResult.healthy(**self.target)
        answer = self._client.ping()
        if answer is not True and answer not in (b"PONG", "PONG"):
            return CheckResult.unhealthy("unexpected answer to PING", **self.target)
        return CheckResult.healthy(**self.target)


# --- PostgreSQL ----------------------------------------------------------------------------

#: Share of the time left that the server's ``statement_timeout`` gets: the server cancels a
#: slow query (the connection stays usable) before the client-side bound cuts it.
_STATEMENT_SHARE = 0.9


class PostgresCheck:
    """``SELECT 1`` on a new connection from ``dsn``, or on one borrowed from ``pool``,
    bounded on the client side by ``timeout`` in all: a server that accepts and never
    answers, or goes silent in the middle of a query, frees the thread by the deadline.

    - A new connection is made and queried without blocking (libpq's asynchronous
      mode), waiting on its socket until the deadline, then closed; the server also
      gets a ``statement_timeout``. (Resolving the host name is the one step libpq
      does not let us bound.)
    - A pooled connection runs the query in a transaction with ``SET LOCAL
      statement_timeout`` that is then rolled back; should the server not answer by the
      deadline, the connection's socket is shut down, which ends the blocked call at
      once. It is always handed back, closed when it broke or was cut.

    :param dsn: a ``postgresql://`` URL or a libpq ``key=value`` string.
    :param pool: an object with ``getconn()`` and ``putconn(conn, close=...)``,
        such as ``psycopg2.pool.ThreadedConnectionPool``.
    :param timeout: seconds for connecting and for the query, in all.
    :param query: what to run (``SELECT 1``); its first row is fetched.
    """

    def __init__(
        self,
        *,
        dsn: str | None = None,
        pool: Any = None,
        timeout: float,
        query: str = "SELECT 1",
    ) -> None:
        if (dsn is None) == (pool is None):
            raise ValueError("PostgresCheck needs exactly one of dsn and pool")
        if pool is not None and not (hasattr(pool, "getconn") and hasattr(pool, "putconn")):
            raise TypeError(
                "set_postgres_pool() takes a DSN string or a pool with getconn() and "
                f"putconn() (such as psycopg2.pool.ThreadedConnectionPool); got {type(pool)!r}"
            )
        self.dsn = dsn
        self.pool = pool
        self.timeout = timeout
        self.query = query
        if dsn is not None:
            importlib.import_module("psycopg2")  # now, at init_app, not inside the first probe

    @property
    def target(self) -> dict[str, Any]:
        """What the check talks to, for the details (password masked)."""
        if self.dsn is not None:
            return {"dsn": mask_secrets(self.dsn)}
        return {"pool": type(self.pool).__name__}

    def __call__(self) -> CheckResult:
        deadline = time.monotonic() + self.timeout
        if self.pool is not None:
            self._select_from_pool(deadline)
        else:
            self._select_on_new_connection(deadline)
        return CheckResult.healthy(**self.target)

    def _statement_ms(self, deadline: float) -> int:
        return max(1, int((deadline - time.monotonic()) * 1000 * _STATEMENT_SHARE))

    def _select_on_new_connection(self, deadline: float) -> None:
        import psycopg2
        from psycopg2.extensions import parse_dsn

        assert self.dsn is not None
        options = parse_dsn(self.dsn).get("options", "")
        statement = f"-c statement_timeout={self._statement_ms(deadline)}"
        conn = psycopg2.connect(
            self.dsn,
            async_=True,
            options=f"{options} {statement}".strip(),
            application_name="gateway-obs-health",
        )
        try:
            self._wait(conn, deadline)
            with conn.cursor() as cursor:
                cursor.execute(self.query)
                self._wait(conn, deadline)
                cursor.fetchone()
        finally:
            conn.close()

    def _wait(self, conn: Any, deadline: float) -> None:
        """Drive an asynchronous connection until its operation is done or the deadline."""
        from psycopg2.extensions import POLL_OK, POLL_READ

        while True:
            state = conn.poll()
            if state == POLL_OK:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer from PostgreSQL within {self.timeout:g} s")
            events = selectors.EVENT_READ if state == POLL_READ else selectors.EVENT_WRITE
            with selectors.DefaultSelector() as selector:
                selector.register(conn.fileno(), events)
                selector.select(remaining)

    def _select_from_pool(self, deadline: float) -> None:
        conn = self.pool.getconn()
        usable = False
        watchdog = _Watchdog(conn, deadline - time.monotonic())
        try:
            was_autocommit = bool(conn.autocommit)
            try:
                if was_autocommit:
                    conn.autocommit = False
                with conn.cursor() as cursor:
                    cursor.execute(
                        "SET LOCAL statement_timeout = %s", (self._statement_ms(deadline),)
                    )
                    cursor.execute(self.query)
                    cursor.fetchone()
            finally:
                usable = _roll_back(conn, was_autocommit)
        finally:
            cut = watchdog.stop()
            closed = bool(getattr(conn, "closed", False))
            self.pool.putconn(conn, close=cut or closed or not usable)


def _roll_back(conn: Any, autocommit: bool) -> bool:
    """End the check's transaction and restore autocommit; whether the connection is fine."""
    try:
        conn.rollback()
        if autocommit:
            conn.autocommit = True
    except Exception:
        return False
    return True


class _Watchdog:
    """Shuts a connection's socket down unless stopped within ``seconds``.

    A pooled psycopg2 connection blocks in libpq with no client-side timeout; shutting
    its socket down (through a duplicate of the descriptor) makes the blocked call fail
    at once with a connection error. Connections without ``fileno()`` get no watchdog.
    """

    def __init__(self, conn: Any, seconds: float) -> None:
        self._lock = threading.Lock()
        self._fired = False
        self._done = False
        self._timer: threading.Timer | None = None
        fileno = getattr(conn, "fileno", None)
        if fileno is None:
            return
        try:
            self._fd = int(fileno())
        except Exception:
            return
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._fired = True
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self._fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> bool:
        """Stop watching; whether the socket was shut down."""
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()
        return self._fired


# --- memory --------------------------------------------------------------------------------


class MemoryCheck:
    """Memory in use as a share of its limit, against two thresholds.

    In a cgroup with a limit (a container) that is the cgroup's usage, every worker of
    the container together, without reclaimable file cache; elsewhere the process's
    resident memory against the machine's total (see :mod:`flask_gateway_obs.health.memory`).

    :param degraded_percent: at or above this share the check is degraded.
    :param unhealthy_percent: at or above this share the check is unhealthy.
    :param cgroup_root: where the cgroup hierarchy is mounted.
    :param self_cgroup: the file naming the process's cgroups (``/proc/self/cgroup``).
    :param read: returns a :class:`~.MemoryUsage` (default: read from the files).
    """

    def __init__(
        self,
        degraded_percent: float = 90.0,
        unhealthy_percent: float = 95.0,
        *,
        cgroup_root: str | os.PathLike[str] = CGROUP_ROOT,
        self_cgroup: str | os.PathLike[str] = PROC_SELF_CGROUP,
        read: Callable[[], MemoryUsage | None] | None = None,
    ) -> None:
        if degraded_percent > unhealthy_percent:
            raise ValueError("degraded_percent must not be above unhealthy_percent")
        self.degraded_percent = degraded_percent
        self.unhealthy_percent = unhealthy_percent
        self._read = read or functools.partial(memory_usage, cgroup_root, self_cgroup)

    def __call__(self) -> CheckResult:
        usage = self._read()
        if usage is None or usage.limit_bytes <= 0:
            return CheckResult.healthy(measured=False)
        percent = round(usage.used_bytes * 100.0 / usage.limit_bytes, 2)
        figures = {
            "used_bytes": usage.used_bytes,
            "limit_bytes": usage.limit_bytes,
            "limit_source": usage.source,
            "scope": usage.scope,
            "used_percent": percent,
        }
        what = "cgroup memory" if usage.scope == "cgroup" else "resident memory"
        reason = f"{what} at {percent}% of the limit"
        if percent >= self.unhealthy_percent:
            return CheckResult.unhealthy(reason, **figures)
        if percent >= self.degraded_percent:
            return CheckResult.degraded(reason, **figures)
        return CheckResult.healthy(**figures)


# --- disk ------------------------------------------------------------------------------------


class _DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


class DiskCheck:
    """Used space of the filesystem that holds ``path``, against two thresholds.

    The share is ``used / (used + free)``, as ``df`` shows it (space reserved for root
    does not count as free).

    :param usage: returns ``(total, used, free)`` for a path (default ``shutil.disk_usage``).
    """

    def __init__(
        self,
        path: str,
        degraded_percent: float = 90.0,
        unhealthy_percent: float = 95.0,
        *,
        usage: Callable[[str], tuple[int, int, int]] = shutil.disk_usage,
    ) -> None:
        if degraded_percent > unhealthy_percent:
            raise ValueError("degraded_percent must not be above unhealthy_percent")
        self.path = path
        self.degraded_percent = degraded_percent
        self.unhealthy_percent = unhealthy_percent
        self._usage = usage

    def __call__(self) -> CheckResult:
        total, used, free = _DiskUsage(*self._usage(self.path))
        available = used + free
        percent = round(used * 100.0 / available, 2) if available > 0 else 100.0
        figures = {
            "path": self.path,
            "total_bytes": total,
            "free_bytes": free,
            "used_percent": percent,
        }
        if percent >= self.unhealthy_percent:
            return CheckResult.unhealthy(f"disk {percent}% full", **figures)
        if percent >= self.degraded_percent:
            return CheckResult.degraded(f"disk {percent}% full", **figures)
        return CheckResult.healthy(**figures)
