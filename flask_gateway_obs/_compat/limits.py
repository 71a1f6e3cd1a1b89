"""limits internals the rate limiter's fast path reads: the memory storage's counters and
sweeper, and the fixed window's Redis script.

Verified with limits 4.1 and 5.8 (the same counters, sweeper and script in both). Outside
the 4 and 5 series :data:`VERIFIED` is false and the concern keeps limits' own behaviour:
a sweeper thread started as limits starts it, and fixed windows counted through the
strategy (in Redis a round trip more per limit).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from importlib.metadata import version

from limits.storage import MemoryStorage, RedisStorage

__all__ = [
    "SWEEP_INTERVAL",
    "VERIFIED",
    "MemoryHit",
    "incr_with_ttl",
    "memory_hit",
    "throttle_sweeps",
]

#: limits' major versions this module was checked against (4.1 and 5.8).
VERIFIED_MAJORS = (4, 5)


def major(text: str) -> int:
    """The major of a version string; 0 when it has none."""
    try:
        return int(text.split(".")[0])
    except ValueError:
        return 0


#: Whether the installed limits is one of the verified versions (tests may switch it off).
VERIFIED = major(version("limits")) in VERIFIED_MAJORS

#: Seconds between two sweeps of expired windows out of an in-memory storage.
SWEEP_INTERVAL = 1.0
_SCHEDULE_SWEEP = "_MemoryStorage__schedule_expiry"  # limits' MemoryStorage, name-mangled

#: limits' ``incr_expire.lua``, the fixed window's hit on Redis, as limits 4.1 to 5.8 ship it.
INCR_EXPIRE = b"""
local current
local amount = tonumber(ARGV[2])
current = redis.call("incrby", KEYS[1], amount)

if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end

return current
"""
#: The same hit, also returning the key's TTL: a hit and the window for the headers in
#: one round trip. Used only while limits ships the script above unchanged.
_INCR_EXPIRE_TTL = b"""
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("ttl", KEYS[1])}
"""


def throttle_sweeps(storage: MemoryStorage) -> MemoryStorage:
    """Let ``storage`` start its sweeper thread at most once per :data:`SWEEP_INTERVAL`.

    limits' memory storage sweeps expired windows in a one-shot 10 ms timer thread that
    every hit restarts when it has finished: under load about a hundred thread starts a
    second, each stalling the request that makes it until the OS runs the new thread.
    Counting does not depend on the sweep (a window past its expiry is dropped when next
    read), only memory does: expired windows of clients that do not come back stay up to
    a second longer. Outside the verified versions the storage is left as it is.
    """
    schedule = getattr(storage, _SCHEDULE_SWEEP, None) if VERIFIED else None
    if schedule is None or isinstance(schedule, _Throttled):
        return storage
    # On this instance only (the app's own storage): the class is left alone.
    setattr(storage, _SCHEDULE_SWEEP, _Throttled(schedule))
    return storage


class _Throttled:
    """A storage's sweep, run at most once per :data:`SWEEP_INTERVAL` (monotonic clock)."""

    __slots__ = ("due", "sweep")

    def __init__(self, sweep: Callable[[], None]) -> None:
        self.sweep = sweep
        #: When the next sweep may start.
        self.due = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now >= self.due:
            self.due = now + SWEEP_INTERVAL
            self.sweep()


#: A fixed-window hit: (key, expiry seconds, cost) -> (count after the hit, window reset time).
MemoryHit = Callable[[str, float, int], tuple[int, float]]


def memory_hit(storage: MemoryStorage) -> MemoryHit | None:
    """A fixed-window hit on ``storage``'s own counters, as its ``incr`` counts it, that also
    returns the window's reset time; None outside the verified versions (then the strategy
    counts).

    The same counters, expiries, per-key locks and sweeps as ``MemoryStorage.incr`` (an
    expired window dropped first, the expiry set by the hit that opens a window), so the
    counts stay the storage's own for everything else that reads them (Flask-Limiter's
    own evaluation, ``reset()``, its CLI); without the error-wrapping layers limits puts
    around every storage call, which a memory storage never needs. Only for a storage
    whose sweeps :func:`throttle_sweeps` throttles.
    """
    if not VERIFIED:
        return None
    counts = getattr(storage, "storage", None)
    windows = getattr(storage, "expirations", None)
    locks = getattr(storage, "locks", None)
    sweeps = getattr(storage, _SCHEDULE_SWEEP, None)
    if not (
        isinstance(counts, Counter)
        and isinstance(windows, dict)
        and isinstance(locks, defaultdict)
        and isinstance(sweeps, _Throttled)
    ):
        return None
    clock, monotonic = time.time, time.monotonic

    def hit(key: str, expiry: float, amount: int) -> tuple[int, float]:
        now = clock()
        if windows.get(key, 0) <= now:  # the window is over: it starts again from zero
            counts.pop(key, None)
            windows.pop(key, None)
            locks.pop(key, None)
        if monotonic() >= sweeps.due:
            sweeps()
        with locks[key]:
            counts[key] += amount
            count: int = counts[key]
            if count == amount:
                windows[key] = now + expiry
        return count, windows.get(key) or now

    return hit


def incr_with_ttl(storage: RedisStorage) -> bytes | None:
    """A script counting a fixed-window hit and returning ``[count, ttl]``, or None when
    limits' own script is not the one this module knows (then the strategy counts)."""
    if not VERIFIED or INCR_EXPIRE.split() != storage.SCRIPT_INCR_EXPIRE.split():
        return None
    return _INCR_EXPIRE_TTL
