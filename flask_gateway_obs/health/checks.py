"""Built-in health checks: Redis ``PING``, PostgreSQL ``SELECT 1``, memory and disk.

Each check is a callable object that returns a :class:`~flask_gateway_obs.health.model.CheckResult`
or raises; the runner in :mod:`flask_gateway_obs.health.runner` times it and bounds it.
Every network check also carries its own client-side time limits, so the thread
that runs it ends soon after the runner has given up on it; the one exception is
``SELECT 1`` on a pooled PostgreSQL connection, which has only the server's
``statement_timeout`` (see :class:`PostgresCheck`).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import shutil
from collections.abc import Callable
from typing import Any, NamedTuple

from .memory import CGROUP_ROOT, PROC_SELF_CGROUP, MemoryUsage, memory_usage
from .model import CheckResult, mask_secrets

__all__ = ["DiskCheck", "MemoryCheck", "PostgresCheck", "RedisCheck"]


# --- Redis -------------------------------------------------------------------------------


class RedisCheck:
    """``PING`` through a client built from ``url`` (with connect and socket timeouts)
    or through ``client``, one the application made itself.

    :param url: a ``redis://``, ``rediss://`` or ``unix://`` URL.
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
        self._client = client if client is not None else self._client_from_url(url)

    @property
    def target(self) -> dict[str, Any]:
        """What the check talks to, for the details (password masked)."""
        if self.url is not None:
            return {"url": mask_secrets(self.url)}
        return {"client": type(self._client).__name__}

    def _client_from_url(self, url: str | None) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        assert url is not None
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
            # one attempt: a retry would multiply the time a dead host costs
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            client_name="gateway-obs-health",
        )

    def __call__(self) -> CheckResult:
        answer = self._client.ping()
        if answer is not True and answer not in (b"PONG", "PONG"):
            return CheckResult.unhealthy("unexpected answer to PING", **self.target)
        return CheckResult.healthy(**self.target)


# --- PostgreSQL ----------------------------------------------------------------------------


class PostgresCheck:
    """``SELECT 1`` on a new connection from ``dsn``, or on one borrowed from ``pool``.

    A new connection gets ``connect_timeout`` and a ``statement_timeout``; a pooled one
    runs the query in a transaction with ``SET LOCAL statement_timeout`` that is then
    rolled back, and is always handed back (closed when it broke).

    A pooled connection is already established and its socket has no client-side
    timeout: if the network to the server goes silent, the query blocks until TCP
    gives up (the pool's ``keepalives_*`` / ``tcp_user_timeout`` options decide when).
    The runner still reports ``timeout`` at the check's deadline and starts no second
    run meanwhile.

    :param dsn: a ``postgresql://`` URL or a libpq ``key=value`` string.
    :param pool: an object with ``getconn()`` and ``putconn(conn, close=...)``,
        such as ``psycopg2.pool.ThreadedConnectionPool``.
    :param timeout: seconds for connecting and for the query.
    """

    def __init__(self, *, dsn: str | None = None, pool: Any = None, timeout: float) -> None:
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
        self._statement_ms = max(1, int(timeout * 1000))
        if dsn is not None:
            importlib.import_module("psycopg2")  # now, at init_app, not inside the first probe

    @property
    def target(self) -> dict[str, Any]:
        """What the check talks to, for the details (password masked)."""
        if self.dsn is not None:
            return {"dsn": mask_secrets(self.dsn)}
        return {"pool": type(self.pool).__name__}

    def __call__(self) -> CheckResult:
        if self.pool is not None:
            self._select_from_pool()
        else:
            self._select_on_new_connection()
        return CheckResult.healthy(**self.target)

    def _select_on_new_connection(self) -> None:
        import psycopg2
        from psycopg2.extensions import parse_dsn

        assert self.dsn is not None
        options = parse_dsn(self.dsn).get("options", "")
        conn = psycopg2.connect(
            self.dsn,
            # libpq takes whole seconds (and treats 1 as 2); the runner bounds the rest
            connect_timeout=max(1, math.ceil(self.timeout)),
            options=f"{options} -c statement_timeout={self._statement_ms}".strip(),
            application_name="gateway-obs-health",
        )
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        finally:
            conn.close()

    def _select_from_pool(self) -> None:
        conn = self.pool.getconn()
        broken = True
        was_autocommit = False
        try:
            was_autocommit = bool(conn.autocommit)
            if was_autocommit:
                conn.autocommit = False
            with conn.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = %s", (self._statement_ms,))
                cursor.execute("SELECT 1")
                cursor.fetchone()
            conn.rollback()
            if was_autocommit:
                conn.autocommit = True
            broken = False
        finally:
            closed = bool(getattr(conn, "closed", False))
            self.pool.putconn(conn, close=broken or closed)


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
