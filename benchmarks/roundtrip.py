"""One Redis round trip from Python, the yardstick of a rate limit on Redis.

A fixed-window hit on Redis is one script call: ``INCRBY`` the window's key, ``EXPIRE`` it
when the hit opened the window, and (to fill the rate-limit headers) return its ``TTL``
with the count. :class:`RoundTrip` sends that same script through redis-py to the same
server, so *bare request + one round trip* is what a limit on Redis cannot go below, and
whatever a route with such a limit costs beyond it is the limiter's own work::

    python -m benchmarks.roundtrip [--calls N] [--batches N]

prints the median over batches of the mean µs per call (the in-process section measures
a batch in every round, right after the variant with a limit on Redis). ``BENCH_REDIS_URL``
picks the server (default the local one, db 15).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from typing import Any

#: The server the Redis variants and the round trip use.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")

#: A fixed-window hit returning ``[count, ttl]``: what a rate limit on Redis sends per request.
HIT_SCRIPT = """
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("ttl", KEYS[1])}
"""


def masked_url(url: str = REDIS_URL) -> str:
    """``url`` with any password replaced, fit for a report."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def redis_unavailable(url: str = REDIS_URL) -> str | None:
    """Why Redis at ``url`` can't be used (redis-py missing, no answer), or ``None``."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis at {masked_url(url)} does not answer ({type(exc).__name__})"
    finally:
        client.close()
    return None


class RoundTrip:
    """Times the hit script on one connection, the way a limiter's client sends it."""

    def __init__(self, url: str = REDIS_URL) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self.script: Any = self.client.register_script(HIT_SCRIPT)
        self.key = f"bench:roundtrip:{uuid.uuid4().hex}"
        self.batch(50)  # connect, load the script (EVALSHA from here on)

    def batch(self, calls: int) -> tuple[float, float]:
        """Mean and median µs per round trip over ``calls`` script calls in a row.

        The mean is what compares with a slice of requests (a mean too, with the same
        scheduling delays in it); the median is the round trip of a quiet moment.
        """
        script, keys, args = self.script, [self.key], [3600, 1]
        clock = time.perf_counter_ns
        took = []
        for _ in range(calls):
            start = clock()
            script(keys=keys, args=args)
            took.append(clock() - start)
        return sum(took) / calls / 1000.0, statistics.median(took) / 1000.0

    def close(self) -> None:
        try:
            self.client.delete(self.key)
        finally:
            self.client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roundtrip")
    parser.add_argument("--calls", type=int, default=1000, help="script calls per batch")
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args(argv)
    reason = redis_unavailable()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    trip = RoundTrip()
    try:
        batches = [trip.batch(args.calls) for _ in range(args.batches)]
    finally:
        trip.close()
    means = [mean for mean, _ in batches]
    print(
        f"{statistics.median(means):.1f} µs per round trip to {masked_url()}: median over "
        f"{args.batches} batches of {args.calls} calls of the batch's mean "
        f"({min(means):.1f} .. {max(means):.1f}); single calls' median "
        f"{statistics.median(median for _, median in batches):.1f} µs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
