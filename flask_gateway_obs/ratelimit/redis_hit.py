"""A fixed-window hit on Redis: one ``EVALSHA`` written and read on a connection of our own.

Through a client, one script call is about 250 Python calls: the script object, the
command's retry wrapper, the pool (a lock, a fork check, a peek at the socket for unread
data: a system call), redis-py's observability hooks, the general command packer. A rate
limit pays that on every request, beside the round trip itself. :class:`RedisHit` sends
the same script on connections it keeps itself, made by the storage's pool's connection
class with the pool's own settings (address, TLS, password, database, protocol, timeouts),
through redis-py's public connection methods: ``send_packed_command`` (with its idle
health check, when the client set ``health_check_interval``) and ``read_response``. The
command is packed from bytes made once per limit. About 45 Python calls a hit.

- Connections are kept in a free list, one per request at once: a thread takes one, hits,
  gives it back. A connection that failed is closed and never given back.
- A connection the server closed while it sat idle (a restart, the server's ``timeout``) is
  noticed on the hit: the hit is sent once more on a new connection, as redis-py's pool
  would have reconnected. A timeout is not sent again (the server may have counted it).
- ``NOSCRIPT`` (a flushed script cache, a new master) loads the script and hits again.
- A forked child never uses its parent's connections.
- Pools of other kinds (a blocking pool with its own bound, client-side caching) keep the
  client's script call: their own accounting decides what a connection may do.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from redis import ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["RedisHit"]

#: Bumped in a forked child: connections made before it belong to the parent.
_generation = 0
_fork_hook_registered = False


def _forked() -> None:
    global _generation
    _generation += 1


def _watch_forks() -> None:
    global _fork_hook_registered
    if not _fork_hook_registered:
        _fork_hook_registered = True
        os.register_at_fork(after_in_child=_forked)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class RedisHit:
    """Counts ``cost`` hits on ``key`` (expiring after ``expiry`` s on its first hit) with
    ``script`` on ``client``'s server; returns the script's reply (count and TTL).

    :param client: the limiter storage's redis-py client.
    :param script: the Lua script; its ``KEYS[1]`` is the key, ``ARGV`` the expiry and cost.
    """

    def __init__(self, client: Redis[Any], script: bytes) -> None:
        self.client = client
        self.script = script
        self.sha = hashlib.sha1(script).hexdigest()
        pool = client.connection_pool
        self._pool: ConnectionPool | None = None
        if type(pool) is ConnectionPool and getattr(pool, "cache", None) is None:
            self._pool = pool
            kwargs = pool.connection_kwargs
            self._encoding = str(kwargs.get("encoding") or "utf-8")
            self._errors = str(kwargs.get("encoding_errors") or "strict")
            _watch_forks()
        self._head = b"*6\r\n$7\r\nEVALSHA\r\n" + _bulk(self.sha.encode()) + _bulk(b"1")
        self._tails: dict[tuple[int, int], bytes] = {}
        self._free: list[Any] = []
        self._generation = _generation
        self._client_script: Any = None

    @property
    def direct(self) -> bool:
        """Whether hits go on connections of our own (else through the client's script call)."""
        return self._pool is not None

    def __call__(self, key: str, expiry: int, cost: int) -> Any:
        if self._pool is None:
            return self._through_client(key, expiry, cost)
        tail = self._tails.get((expiry, cost))
        if tail is None:
            tail = _bulk(str(expiry).encode()) + _bulk(str(cost).encode())
            if len(self._tails) < 256:
                self._tails[(expiry, cost)] = tail
        name = key.encode(self._encoding, self._errors)
        command = b"".join((self._head, b"$%d\r\n" % len(name), name, b"\r\n", tail))
        if self._generation != _generation:  # a forked child: the parent's connections
            self._free = []
            self._generation = _generation
        free = self._free
        try:
            conn = free.pop()
        except IndexError:
            conn = self._connection()
            return self._send(conn, command, fresh=True)
        return self._send(conn, command, fresh=False)

    def _send(self, conn: Any, command: bytes, *, fresh: bool) -> Any:
        try:
            conn.send_packed_command((command,))
            reply = conn.read_response()
        except NoScriptError:
            reply = self._load_and_hit(conn, command)
        except ResponseError:
            self._free.append(conn)  # the reply was read whole: the connection is fine
            raise
        except RedisConnectionError:
            conn.disconnect()
            if fresh:
                raise
            # Closed while idle: once more on a new connection, as the pool would reconnect.
            return self._send(self._connection(), command, fresh=True)
        except BaseException:
            conn.disconnect()  # a timeout, an interrupt: the reply may still come; not on this one
            raise
        self._free.append(conn)
        return reply

    def _load_and_hit(self, conn: Any, command: bytes) -> Any:
        try:
            conn.send_command("SCRIPT", "LOAD", self.script)
            conn.read_response()
            conn.send_packed_command((command,))
            return conn.read_response()
        except BaseException:
            conn.disconnect()
            raise

    def _connection(self) -> Any:
        pool = self._pool
        assert pool is not None
        return pool.connection_class(**pool.connection_kwargs)

    def _through_client(self, key: str, expiry: int, cost: int) -> Any:
        script = self._client_script
        if script is None:
            script = self._client_script = self.client.register_script(self.script)
        return script(keys=[key], args=[expiry, cost])

    def close(self) -> None:
        """Close the connections kept (a new hit makes a new one)."""
        free, self._free = self._free, []
        for conn in free:
            conn.disconnect()
