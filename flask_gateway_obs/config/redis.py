"""Redis URLs: the deployments every Redis user of the extension accepts.

The schemes are those of ``limits`` (so one URL serves the rate limiter too):

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) and
  ``unix://[[user]:password@]/path/to/socket[?db=N]``: one server;
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service``: the master
  of ``service`` as the sentinels name it (the credentials serve the sentinels and the
  master);
- ``redis+cluster://[[user]:password@]host:port[,host:port...]``: a Redis Cluster,
  found from these nodes.

Parsing only: :mod:`flask_gateway_obs.core.redis` makes the clients.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import unquote, urlsplit

from .parsers import _Invalid, _text

__all__ = ["ACCEPTS", "SCHEMES", "RedisURL", "parse_redis_url", "redis_url"]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
ACCEPTS = (
    "a redis://, rediss://, unix://, redis+sentinel://host:port[,host:port]/service "
    "or redis+cluster://host:port[,host:port] URL"
)
SINGLE, SENTINEL, CLUSTER = "single", "sentinel", "cluster"


@dataclasses.dataclass(frozen=True)
class RedisURL:
    """A parsed Redis URL."""

    url: str = dataclasses.field(repr=False)
    #: ``single``, ``sentinel`` or ``cluster``.
    kind: str
    #: The sentinels or the cluster nodes; empty for one server (its URL says it all).
    nodes: tuple[tuple[str, int], ...] = ()
    #: The sentinels' name of the master (``sentinel`` only).
    service: str | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


def _nodes(netloc: str) -> tuple[tuple[str, int], ...]:
    nodes = []
    for location in netloc.rpartition("@")[2].split(","):
        parts = urlsplit(f"//{location.strip()}")
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise ValueError(f"bad port in {location.strip()!r}") from None
        if not host or port is None:
            raise ValueError(f"every location needs a host and a port, got {location.strip()!r}")
        nodes.append((host, port))
    return tuple(nodes)


def parse_redis_url(url: str) -> RedisURL:
    """Parse ``url``; the error never repeats its credentials.

    :raises ValueError: for another scheme or a malformed URL.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("not a URL") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"the scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if scheme == "redis+sentinel":
        service = parts.path.strip("/")
        if not service or "/" in service:
            raise ValueError("a redis+sentinel:// URL ends with /<service name>, and only that")
        return RedisURL(url, SENTINEL, _nodes(parts.netloc), service, username, password)
    if scheme == "redis+cluster":
        if parts.path.strip("/"):
            raise ValueError("a redis+cluster:// URL has no path (every node has db 0)")
        return RedisURL(url, CLUSTER, _nodes(parts.netloc), None, username, password)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError("not a URL with a valid port") from None
    if scheme != "unix" and not parts.hostname and "host=" not in parts.query:
        raise ValueError("a redis:// or rediss:// URL needs a host")
    return RedisURL(url, SINGLE, (), None, username, password)


def redis_url(value: Any) -> str:
    """Config parser: a Redis URL of one of :data:`SCHEMES`, as given."""
    text = _text(value)
    try:
        parse_redis_url(text)
    except ValueError:
        raise _Invalid from None
    return text
