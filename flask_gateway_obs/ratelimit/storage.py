"""The limiter's storage: which one, and what happens while it is down.

A call to the storage that fails marks it down: requests are then limited on
per-process in-memory counters (fail open) or refused with a 503 (fail closed), and the
storage is not touched again until a probe, first after :data:`FIRST_PROBE_DELAY`
seconds, then after waits doubling up to the configured interval. A probe is a write (a
read-only replica answers ``PING`` and fails every hit). All of it sits in one strategy,
:class:`ResilientStrategy`, wrapped around Flask-Limiter's own: every count and every
window read goes through it, on limits' public strategy API.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

from limits import RateLimitItem, WindowStats
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import FixedWindowRateLimiter, RateLimiter

from .._compat import limits as compat_limits
from ..core import process
from ..core.contracts import Recorder
from ..core.redis import cluster_retry_options
from ..errors import ServiceUnavailableError
from ..logs import LOGGER_NAME, mask_url_credentials

__all__ = [
    "FIRST_PROBE_DELAY",
    "FLAP_WINDOW",
    "REMINDER_INTERVAL",
    "ResilientStrategy",
    "StorageUnavailable",
    "resilient",
    "storage_options",
    "storage_uri",
]

#: ``errors_total{type, source}`` of a failed call to the limiter's storage.
STORAGE_ERROR_TYPE = "RateLimitStorageError"
ERROR_SOURCE = "ratelimit"
#: First wait before a storage that just failed is tried again; it doubles per failed probe.
FIRST_PROBE_DELAY = 0.5
#: While the storage stays down, the warning is repeated at most this often (seconds).
REMINDER_INTERVAL = 60.0
#: A storage that fails again within this many seconds of its return is flapping: the
#: back-off goes on from where it was and the in-memory counts of the outage are kept.
FLAP_WINDOW = 60.0

_SENTINEL_SCHEMES = frozenset({"redis+sentinel", "valkey+sentinel"})
_REDIS_SCHEMES = frozenset(
    {
        "redis",
        "rediss",
        "redis+unix",
        "redis+cluster",
        "redis+sentinel",
        "valkey",
        "valkeys",
        "valkey+unix",
        "valkey+cluster",
        "valkey+sentinel",
    }
)
#: Options of ``RATELIMIT_STORAGE_OPTIONS`` that set a Cluster's retries (ours are left out).
_CLUSTER_RETRY_OPTIONS = frozenset({"retry", "cluster_error_retry_attempts"})

_log = logging.getLogger(LOGGER_NAME + ".ratelimit")


def storage_uri(config: Any, redis_url: str | None) -> str:
    """The limiter's storage: ``RATELIMIT_STORAGE_URI``, else the shared Redis, else memory."""
    configured = config.get("RATELIMIT_STORAGE_URI")
    if configured:
        return str(configured)
    if redis_url:
        return "redis+unix" + redis_url[4:] if redis_url.startswith("unix:") else redis_url
    return "memory://"


def storage_options(
    uri: str, timeout: float, configured: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Our options for the storage at ``uri`` (``RATELIMIT_STORAGE_OPTIONS``, ``configured``,
    is merged over them by Flask-Limiter).

    Redis gets connect and read timeouts of ``timeout`` seconds. Through Sentinel the
    connections to the sentinels get them too: limits gives the Sentinel client its own
    ``sentinel_kwargs``, without which those connections would wait forever; and windows
    are read from the master (``use_replicas`` off): a lagging replica would show counts
    and reset times that are not the limit's. A Cluster gets no retries (redis-py's
    default retries a command with back-off, seconds per request while a node is down),
    unless ``configured`` names ``retry`` or ``cluster_error_retry_attempts`` itself.
    """
    options: dict[str, Any] = {"wrap_exceptions": True}
    scheme = urlsplit(uri).scheme
    if scheme in _REDIS_SCHEMES:
        timeouts = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
        options.update(timeouts)
        if scheme in _SENTINEL_SCHEMES:
            options["sentinel_kwargs"] = dict(timeouts)
            options["use_replicas"] = False
        if scheme == "redis+cluster" and not _CLUSTER_RETRY_OPTIONS & set(configured or ()):
            options.update(cluster_retry_options(0))
    return options


class StorageUnavailable(ServiceUnavailableError):
    """503: the limiter's storage is down and the limiter fails closed."""

    default_code = "rate_limit_unavailable"

    def __init__(self, retry_after: float) -> None:
        super().__init__(
            "Rate limiting is temporarily unavailable; try again later.",
            retry_after=retry_after,
            code=self.default_code,
        )


class PipelinedFixedWindow(FixedWindowRateLimiter):
    """Fixed window on Redis, reading a window's count and TTL in one round trip, not two."""

    storage: RedisStorage

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        key = self.storage.prefixed_key(item.key_for(*identifiers))
        pipe = cast(Any, self.storage.get_connection(True)).pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        count, ttl = pipe.execute()
        return WindowStats(max(int(ttl), 0) + time.time(), max(0, item.amount - int(count or 0)))


class ResilientStrategy(RateLimiter):
    """Flask-Limiter's strategy, with the failure policy of the module's docstring.

    :param primary: the strategy on the shared storage.
    :param recorder: where failures are counted (``errors_total``).
    :param fail_closed: refuse (503) instead of counting in memory while the storage is down.
    :param max_probe_interval: longest wait (seconds) between two probes.
    :param key_prefix: the limiter's key prefix (the probe writes under it).
    """

    def __init__(
        self,
        primary: RateLimiter,
        recorder: Callable[[], Recorder],
        *,
        fail_closed: bool,
        max_probe_interval: float,
        key_prefix: str,
    ) -> None:
        RateLimiter.__init__(self, primary.storage)
        self.primary = primary
        self.recorder = recorder
        self.fail_closed = fail_closed
        self.max_probe_interval = max_probe_interval
        self.probe_key = f"LIMITER/{key_prefix}/" if key_prefix else "LIMITER/"
        self.probe_key += "gateway-obs-storage-probe"
        #: Clock of the probe schedule (monotonic seconds); replaceable in tests.
        self.clock: Callable[[], float] = time.monotonic
        #: Failed calls to the storage (probes included) since the app started.
        self.failures = 0
        self.down = False
        storage = primary.storage
        self._errors: tuple[type[BaseException], ...] = (StorageError,)
        if not isinstance(storage, MemoryStorage):
            # With wrap_exceptions off, the storage raises its driver's own errors.
            extra = storage.base_exceptions
            self._errors += extra if isinstance(extra, tuple) else (extra,)
        self._fallback: RateLimiter | None = None
        self._down_since = 0.0
        self._next_probe = 0.0
        self._probe_delay = FIRST_PROBE_DELAY
        self._flap_until = -math.inf  # until then a new failure continues the last outage
        self._next_reminder = -math.inf
        self._outage_logged = False
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()

    # --- the strategy ---------------------------------------------------------------

    def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        strategy = self.current()
        try:
            return strategy.hit(item, *identifiers, cost=cost)
        except Exception as exc:
            return self.degraded(exc, strategy).hit(item, *identifiers, cost=cost)

    def test(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        strategy = self.current()
        try:
            return strategy.test(item, *identifiers, cost=cost)
        except Exception as exc:
            return self.degraded(exc, strategy).test(item, *identifiers, cost=cost)

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        strategy = self.current()
        try:
            return strategy.get_window_stats(item, *identifiers)
        except Exception as exc:
            return self.degraded(exc, strategy).get_window_stats(item, *identifiers)

    def clear(self, item: RateLimitItem, *identifiers: str) -> None:
        self.primary.clear(item, *identifiers)

    def current(self) -> RateLimiter:
        """The strategy to use now: the primary, or the stand-in while the storage is down."""
        if self.down:
            self.maybe_probe()
            if self.down:
                return self._stand_in()
        elif self._fallback is not None and self.clock() >= self._flap_until:
            self._fallback = None  # the outage's counts are no longer needed
        return self.primary

    def degraded(self, error: Exception, strategy: RateLimiter) -> RateLimiter:
        """The stand-in after ``strategy`` raised ``error``; anything but a storage
        error is raised again."""
        if strategy is not self.primary or not isinstance(error, self._errors):
            raise error
        self.failed(error)
        return self._stand_in()

    def _stand_in(self) -> RateLimiter:
        if self.fail_closed:
            raise StorageUnavailable(max(1.0, self._next_probe - self.clock()))
        fallback = self._fallback
        if fallback is None:
            with self._lock:
                fallback = self._fallback
                if fallback is None:
                    memory = compat_limits.throttle_sweeps(MemoryStorage())
                    kind = type(self.primary)
                    if kind is PipelinedFixedWindow:  # (Redis only)
                        kind = FixedWindowRateLimiter
                    fallback = self._fallback = kind(memory)
        return fallback

    def is_storage_error(self, error: BaseException) -> bool:
        """Whether ``error`` is the storage failing (not a bug in a key function, say)."""
        return isinstance(error, self._errors)

    # --- outages ---------------------------------------------------------------------

    def failed(self, error: BaseException | None, *, probe: bool = False) -> None:
        """Note a failed call to the storage: mark it down, schedule the next probe, warn."""
        now = self.clock()
        with self._lock:
            self.failures += 1
            first = not self.down
            if first:
                self.down = True
                self._down_since = now
                if now < self._flap_until:
                    # Back soon after it returned: the same trouble. Waiting as after a
                    # failed probe, and counting on from the outage's in-memory counts,
                    # keeps a flapping storage from resetting the limits at every return.
                    self._probe_delay = min(self._probe_delay * 2, self.max_probe_interval)
                else:
                    self._probe_delay = FIRST_PROBE_DELAY
                    self._fallback = None  # a new outage counts from zero
                self._next_probe = now + min(self._probe_delay, self.max_probe_interval)
            elif probe:
                self._probe_delay = min(self._probe_delay * 2, self.max_probe_interval)
                self._next_probe = now + self._probe_delay
            # else: a request that was already talking to the storage when it went down.
            # One warning per REMINDER_INTERVAL at most, even if the storage flaps.
            remind = now >= self._next_reminder
            if remind:
                self._next_reminder = now + REMINDER_INTERVAL
                self._outage_logged = True
        try:
            self.recorder().error(STORAGE_ERROR_TYPE, ERROR_SOURCE)
            if remind:
                self._warn(error, first, now)
        except Exception:  # instrumentation never breaks a request
            _log.debug("reporting a storage failure failed", exc_info=True)

    def _warn(self, error: BaseException | None, first: bool, now: float) -> None:
        if self.fail_closed:
            policy = "rate-limited requests are refused with 503 until it returns"
        else:
            policy = "limits are counted per process, in memory, until it returns"
        message = "rate limit storage unavailable" if first else "rate limit storage still down"
        cause = getattr(error, "storage_error", error)
        _log.warning(
            f"{message}: {policy}",
            extra={
                "storage": mask_url_credentials(storage_name(self.storage)),
                "error_type": type(cause).__name__ if cause is not None else None,
                "error": mask_url_credentials(str(cause)) if cause is not None else None,
                "down_seconds": round(now - self._down_since, 3),
                "failures": self.failures,
            },
        )

    def maybe_probe(self) -> None:
        """Try the storage again if a probe is due (one thread at a time)."""
        if self.clock() < self._next_probe or not self._probe_lock.acquire(blocking=False):
            return
        try:
            if not self.down or self.clock() < self._next_probe:
                return
            try:
                # limits' own increment (on Redis, its script), on a key no client has.
                self.storage.incr(self.probe_key, 1)
            except Exception as exc:
                self.failed(exc, probe=True)
            else:
                self._recovered()
        finally:
            self._probe_lock.release()

    def _recovered(self) -> None:
        now = self.clock()
        with self._lock:
            self.down = False
            # The outage's in-memory counts (and the back-off) are kept for FLAP_WINDOW,
            # in case the storage fails again.
            self._flap_until = now + FLAP_WINDOW
            down_for = now - self._down_since
            logged, self._outage_logged = self._outage_logged, False
        if not logged:
            return  # the outage went unreported (flapping): so does its end
        _log.info(
            "rate limit storage is back: limits are shared again",
            extra={
                "storage": mask_url_credentials(storage_name(self.storage)),
                "down_seconds": round(down_for, 3),
            },
        )


def storage_name(storage: Storage) -> str:
    """The storage for a log line: its Redis host and port, or its type."""
    connection = getattr(storage, "storage", None)
    pool = getattr(connection, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, dict) and "host" in kwargs:
        return f"redis://{kwargs['host']}:{kwargs.get('port', 6379)}"
    return type(storage).__name__


def resilient(
    primary: RateLimiter, recorder: Callable[[], Recorder], **options: Any
) -> ResilientStrategy:
    """``primary`` inside the failure policy, still an instance of its strategy's class
    (``isinstance(limiter.limiter, MovingWindowRateLimiter)`` holds, as with Flask-Limiter)."""
    return _resilient_class(type(primary))(primary, recorder, **options)


def _resilient_class(strategy: type[RateLimiter]) -> type[ResilientStrategy]:
    # One class per strategy class, kept with the process's other registries.
    classes: dict[type[RateLimiter], type[ResilientStrategy]] = process.registry(
        "ratelimit.strategy_classes", dict
    )
    found = classes.get(strategy)
    if found is None:
        name = f"Resilient{strategy.__name__}"
        found = classes.setdefault(
            strategy, type(name, (ResilientStrategy, strategy), {"__module__": __name__})
        )
    return found


def primary_strategy(strategy: RateLimiter) -> RateLimiter:
    """Flask-Limiter's strategy, or one reading a Redis fixed window in one round trip."""
    if type(strategy) is FixedWindowRateLimiter and type(strategy.storage) is RedisStorage:
        return PipelinedFixedWindow(strategy.storage)
    return strategy
