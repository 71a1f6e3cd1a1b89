"""One way from a Redis URL to a client, for every concern that talks to Redis.

The Redis health check and the breakers' shared state call :func:`client` (or
:func:`shared`, one client per URL and options in the process); the rate limiter hands
the same URL to ``limits``, which reads these schemes itself. ``redis`` is imported here
only when a client is made.

- ``redis://``, ``rediss://``, ``unix://``: ``redis.Redis.from_url``;
- ``redis+sentinel://``: the master of the service, through ``redis.sentinel.Sentinel``;
  every new connection asks the sentinels where the master is, so after a failover the
  client follows the new master as soon as its old connections fail;
- ``redis+cluster://``: ``redis.cluster.RedisCluster``, made at the first command (it
  connects as it is made, and a cluster that is down must not fail ``init_app``).

Every client gets the caller's connect and socket timeouts and no retries of its own
(one for a cluster, which re-reads its slots on a moved node): the callers decide what
a failure means (fail open, local state, unhealthy).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any

from ..config.redis import CLUSTER, SENTINEL, parse_redis_url
from . import process

__all__ = ["client", "cluster_retry_options", "is_cluster", "shared"]

_REGISTRY = "redis.clients"


def client(url: str, *, timeout: float, **options: Any) -> Any:
    """A client for ``url`` (no connection is made yet).

    :param timeout: seconds to connect and to wait for an answer.
    :param options: further connection options (``client_name``, ...).
    :raises ValueError: for a URL of another kind (see :mod:`..config.redis`).
    """
    target = parse_redis_url(url)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        **options,
    }
    auth = {
        key: value
        for key, value in (("username", target.username), ("password", target.password))
        if value is not None
    }
    if target.kind == SENTINEL:
        from redis.sentinel import Sentinel

        connection: dict[str, Any] = {**common, **auth, "retry": Retry(NoBackoff(), 0)}
        sentinel = Sentinel(
            list(target.nodes),
            sentinel_kwargs={
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "retry": Retry(NoBackoff(), 0),
                **auth,
            },
            **connection,
        )
        return sentinel.master_for(str(target.service))
    if target.kind == CLUSTER:
        return LazyCluster(target.nodes, {**common, **auth, **cluster_retry_options(1)})
    import redis

    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **common)


def cluster_retry_options(retries: int) -> dict[str, Any]:
    """The ``redis.cluster.RedisCluster`` options for ``retries`` retries of a command, no
    back-off between them, and none of a connection's own, on every redis-py of our range.

    From redis-py 6, a ``retry`` given to the cluster is its command retries (its nodes'
    connections get none); ``cluster_error_retry_attempts`` is deprecated and ignored
    beside it. Before 6, ``retry`` goes to the nodes' connections and the command retries
    are ``cluster_error_retry_attempts`` (default 3).
    """
    from importlib.metadata import version

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if _major(version("redis")) >= 6:
        return {"retry": Retry(NoBackoff(), retries)}
    return {"retry": Retry(NoBackoff(), 0), "cluster_error_retry_attempts": retries}


def _major(release: str) -> int:
    head = release.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def shared(url: str, *, timeout: float, **options: Any) -> Any:
    """The process's client for ``url`` and these options, made on first use and closed
    by :func:`flask_gateway_obs.testing.reset`."""
    clients: dict[tuple[Any, ...], Any] = process.registry(_REGISTRY, dict)
    key = (url, timeout, tuple(sorted(options.items())))
    found = clients.get(key)
    if found is None:
        with _lock:
            found = clients.get(key)
            if found is None:
                found = clients[key] = client(url, timeout=timeout, **options)
                process.on_reset(_REGISTRY, functools.partial(_close_all, clients))
    return found


_lock = threading.Lock()


def _close_all(clients: dict[tuple[Any, ...], Any]) -> None:
    for each in list(clients.values()):
        with contextlib.suppress(Exception):  # a client that cannot close is gone anyway
            each.close()


def is_cluster(found: Any) -> bool:
    """Whether ``found`` talks to a Redis Cluster (no transactions over several keys)."""
    if isinstance(found, LazyCluster):
        return True
    try:
        from redis.cluster import RedisCluster
    except ImportError:  # pragma: no cover - redis older than 4.1
        return False
    return isinstance(found, RedisCluster)


class LazyCluster:
    """A ``redis.cluster.RedisCluster`` made at its first command, made again after a
    failed attempt; a cluster that cannot be reached raises ``redis``'s ``ConnectionError``
    (a ``RedisError``, as any other failed command)."""

    def __init__(self, nodes: tuple[tuple[str, int], ...], options: dict[str, Any]) -> None:
        self._nodes = nodes
        self._options = options
        self._client: Any = None
        self._lock = threading.Lock()

    def get_connection_kwargs(self) -> dict[str, Any]:
        """The connection options (without connecting)."""
        return dict(self._options)

    def _real(self) -> Any:
        found = self._client
        if found is not None:
            return found
        from redis.cluster import ClusterNode, RedisCluster
        from redis.exceptions import ConnectionError as RedisConnectionError

        with self._lock:
            if self._client is None:
                try:
                    self._client = RedisCluster(
                        startup_nodes=[ClusterNode(host, port) for host, port in self._nodes],
                        **self._options,
                    )
                except Exception as exc:
                    raise RedisConnectionError(f"Redis Cluster unreachable: {exc}") from exc
            return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def close(self) -> None:
        """Close the connections, if any were made."""
        if self._client is not None:
            self._client.close()
