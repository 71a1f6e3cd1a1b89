"""Breaker state storage: local memory, or Redis shared by every worker with a local fallback.

Both are pybreaker storage classes (the library's extension point for where state
lives). Their ``opened_at`` comes from the breaker's clock, so reset timeouts follow an
injected clock in tests. :class:`SharedStorage` wraps pybreaker's
``CircuitRedisStorage`` and falls back on a local copy while Redis is down.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast

import pybreaker

from ..core.redis import is_cluster
from ..logs import LOGGER_NAME

__all__ = ["LocalStorage", "SharedStorage", "StorageHealth", "moment"]

Clock = Callable[[], float]

_log = logging.getLogger(LOGGER_NAME + ".breaker")


def moment(clock: Clock) -> datetime:
    """Now on ``clock``, as the aware UTC datetime pybreaker's storages keep."""
    return datetime.fromtimestamp(clock(), timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    # pybreaker before 1.3 reads Redis' opened_at back as a naive UTC datetime.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class LocalStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's memory storage whose ``opened_at`` is set from ``clock``."""

    def __init__(self, clock: Clock = time.time) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self._opened: datetime | None = None
        self._successes = 0

    @property
    def opened_at(self) -> datetime | None:
        return self._opened

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        self._opened = moment(self._clock)  # the breaker's clock, not the one pybreaker read

    # As in :class:`SharedStorage` (pybreaker before 1.3 has no success counter).
    def increment_success_counter(self) -> None:
        self._successes += 1

    def reset_success_counter(self) -> None:
        self._successes = 0

    @property
    def success_counter(self) -> int:
        return self._successes


class _ErrorFlag(logging.Logger):
    """Stands in for ``CircuitRedisStorage.logger``: pybreaker reports every Redis error
    through ``logger.exception`` (``logger.error`` before 1.2) and carries on with a
    default; this notes it instead."""

    def __init__(self) -> None:
        super().__init__(LOGGER_NAME + ".breaker.storage")
        self.last_error: BaseException | None = None

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.last_error = sys.exc_info()[1] or RuntimeError(str(msg))

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.exception(msg)


class StorageHealth:
    """Whether the breakers' Redis is usable; shared by every breaker of one app.

    After an error no breaker touches Redis for ``retry_interval`` seconds (calls
    would otherwise each wait for a socket timeout, under the breaker's lock); the
    warning is logged at most once per ``warn_interval``.
    """

    def __init__(
        self,
        retry_interval: float,
        warn_interval: float = 60.0,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.retry_interval = retry_interval
        self.warn_interval = warn_interval
        self._monotonic = monotonic
        self._down = False
        self._retry_at = 0.0
        self._warned_at: float | None = None

    @property
    def down(self) -> bool:
        """Whether the last attempt to use Redis failed."""
        return self._down

    def usable(self) -> bool:
        """Whether to try Redis now."""
        return not self._down or self._monotonic() >= self._retry_at

    def failed(self, error: BaseException, breaker: str) -> None:
        """Note a Redis error; warn unless a warning went out recently."""
        now = self._monotonic()
        self._down = True
        self._retry_at = now + self.retry_interval
        if self._warned_at is not None and now - self._warned_at < self.warn_interval:
            return
        self._warned_at = now
        _log.warning(
            "breaker state storage unavailable; using local state",
            extra={
                "breaker": breaker,
                "error_type": type(error).__name__,
                "retry_in_s": self.retry_interval,
            },
        )

    def succeeded(self) -> None:
        """Note a working Redis call (logs the recovery once)."""
        if self._down:
            self._down = False
            self._warned_at = None
            _log.info("breaker state storage reachable again; sharing state through Redis")


class SharedStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's ``CircuitRedisStorage`` with a local copy to fall back on.

    Every write goes to both; reads come from Redis and refresh the local copy.
    While Redis is down the breaker works on the local copy (so it still opens and
    closes in this process) and a warning is logged at a capped rate; when Redis
    answers again, Redis is the truth again. A Redis error never reaches the caller.
    """

    def __init__(
        self,
        client: Any,
        namespace: str,
        health: StorageHealth,
        breaker: str,
        clock: Clock = time.time,
    ) -> None:
        super().__init__("redis")
        self._client = client
        self._namespace = namespace
        self._health = health
        self._breaker = breaker
        self._clock = clock
        self._local = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._flag = _ErrorFlag()
        self._remote: pybreaker.CircuitRedisStorage | None = None
        self._successes = 0

    @property
    def health(self) -> StorageHealth:
        """Whether Redis is usable (shared by the breakers of one app)."""
        return self._health

    def _redis(self) -> pybreaker.CircuitRedisStorage | None:
        if not self._health.usable():
            return None
        if self._remote is None:
            try:
                # setnx of the initial keys: a new worker never resets a shared state.
                remote = pybreaker.CircuitRedisStorage(
                    pybreaker.STATE_CLOSED,
                    self._client,
                    namespace=self._namespace,
                    cluster_mode=is_cluster(self._client),
                )
            except Exception as exc:
                self._health.failed(exc, self._breaker)
                return None
            remote.logger = self._flag
            self._remote = remote
        self._flag.last_error = None
        return self._remote

    def _settle(self, error: BaseException | None) -> bool:
        """Whether the Redis call just made worked; notes the outcome."""
        error = error or self._flag.last_error
        if error is None:
            self._health.succeeded()
            return True
        self._flag.last_error = None
        self._health.failed(error, self._breaker)
        return False

    def _write(self, action: Callable[[pybreaker.CircuitBreakerStorage], None]) -> None:
        action(self._local)
        remote = self._redis()
        if remote is None:
            return
        try:
            action(remote)
        except Exception as exc:
            self._settle(exc)
        else:
            self._settle(None)

    def _read(self, read: Callable[[pybreaker.CircuitBreakerStorage], Any]) -> Any:
        remote = self._redis()
        if remote is not None:
            try:
                value = read(remote)
            except Exception as exc:
                self._settle(exc)
            else:
                if self._settle(None):
                    return value
        return read(self._local)

    @property
    def state(self) -> str:
        value = cast(str, self._read(lambda s: s.state))
        if value != self._local.state:
            self._local.state = value
        return value

    @state.setter
    def state(self, state: str) -> None:
        def write(storage: pybreaker.CircuitBreakerStorage) -> None:
            storage.state = state

        self._write(write)

    def increment_counter(self) -> None:
        self._write(lambda s: s.increment_counter())

    def reset_counter(self) -> None:
        self._write(lambda s: s.reset_counter())

    # pybreaker 1.3+ resets a success counter at each transition; the breaker counts its
    # half-open successes itself (per process), so this one stays local.
    def increment_success_counter(self) -> None:
        self._successes += 1

    def reset_success_counter(self) -> None:
        self._successes = 0

    @property
    def counter(self) -> int:
        return cast(int, self._read(lambda s: s.counter))

    @property
    def success_counter(self) -> int:
        return self._successes

    @property
    def opened_at(self) -> datetime | None:
        value = _aware(cast("datetime | None", self._read(lambda s: s.opened_at)))
        if value is not None:
            self._local.opened_at = value
        return value

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        at = moment(self._clock)  # the breaker's clock, not the one pybreaker read

        def write(storage: pybreaker.CircuitBreakerStorage) -> None:
            storage.opened_at = at

        self._write(write)
