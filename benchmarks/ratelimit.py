"""What rate limiting costs per request: bare Flask, raw Flask-Limiter and ours, side by side.

Every variant serves ``GET /items/<int:item_id>`` through the WSGI callable in this
one process; the variants take turns in rounds so that a noisy neighbour hits them
all alike, and each figure is the median over the rounds. The limit is never
reached, so the limiter does all its work on every request and never refuses::

    python -m benchmarks.ratelimit [--quick] [--profile VARIANT]

``ours-*`` variants run the whole extension with logging, metrics and Sentry off,
so ``ours-off`` is the base their rate-limit cost is measured from. Redis variants
use ``BENCH_REDIS_URL`` (default the local server, db 15) and are skipped when it
does not answer; when they run, one Redis round trip of the same hit script is timed
in every round too (``redis trip``), the floor a limit on Redis cannot go below.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from benchmarks.roundtrip import REDIS_URL, RoundTrip

UNREACHED = "100000000 per hour"
PATH = "/items/42"


def _app() -> Flask:
    app = Flask("bench")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, "name": "keyboard"}

    return app


def _raw(storage: str, headers: bool) -> Flask:
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    app = _app()
    Limiter(
        get_remote_address,
        app=app,
        default_limits=[UNREACHED],
        storage_uri=storage,
        headers_enabled=headers,
        key_prefix=uuid.uuid4().hex,
    )
    return app


def _ours(config: dict[str, Any], decorate: str | None = None) -> Flask:
    from flask_gateway_obs import GatewayObs

    app = Flask("bench")
    app.config.update(
        {
            "GATEWAY_OBS_LOG_CONFIGURE": False,
            "GATEWAY_OBS_LOG_ACCESS": False,
            "GATEWAY_OBS_METRICS_ENABLED": False,
            "GATEWAY_OBS_SERVICE_NAME": "bench-" + uuid.uuid4().hex,
            **config,
        }
    )
    obs = GatewayObs(app)

    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, "name": "keyboard"}

    if decorate is not None:
        with app.app_context():
            item = obs.limiter.limit(decorate)(item)
    app.add_url_rule("/items/<int:item_id>", view_func=item)
    return app


_REDIS = {"RATELIMIT_STORAGE_URI": REDIS_URL}
_DEFAULT = {"RATELIMIT_DEFAULT": UNREACHED}

#: name -> (description, builder, needs Redis)
VARIANTS: dict[str, tuple[str, Callable[[], Flask], bool]] = {
    "bare": ("bare Flask", _app, False),
    "raw-mem": ("Flask-Limiter, memory, headers off", lambda: _raw("memory://", False), False),
    "raw-mem-hdr": ("Flask-Limiter, memory, headers on", lambda: _raw("memory://", True), False),
    "ours-off": (
        "ours, rate limiting off",
        lambda: _ours({"GATEWAY_OBS_RATELIMIT_ENABLED": False}),
        False,
    ),
    "ours-nolimit": ("ours, on, no limit configured (the default)", lambda: _ours({}), False),
    "ours-mem": ("ours, default limit, memory, headers on", lambda: _ours(_DEFAULT), False),
    "ours-mem-nohdr": (
        "ours, default limit, memory, headers off",
        lambda: _ours({**_DEFAULT, "RATELIMIT_HEADERS_ENABLED": False}),
        False,
    ),
    "ours-route": (
        "ours, per-route limit, memory, headers on",
        lambda: _ours({}, decorate=UNREACHED),
        False,
    ),
    "raw-redis": ("Flask-Limiter, Redis, headers off", lambda: _raw(REDIS_URL, False), True),
    "raw-redis-hdr": ("Flask-Limiter, Redis, headers on", lambda: _raw(REDIS_URL, True), True),
    "ours-redis": (
        "ours, default limit, Redis, headers on",
        lambda: _ours({**_DEFAULT, **_REDIS}),
        True,
    ),
    "ours-redis-nohdr": (
        "ours, default limit, Redis, headers off",
        lambda: _ours({**_DEFAULT, **_REDIS, "RATELIMIT_HEADERS_ENABLED": False}),
        True,
    ),
}


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    _start_response.status = status  # type: ignore[attr-defined]


def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost",
        "HTTP_USER_AGENT": "bench-client/1.0",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def drive(app: Callable[..., Iterable[bytes]], n: int) -> tuple[float, float]:
    """Wall-clock and CPU microseconds per request over ``n`` requests."""
    base = _environ()
    new_input = io.BytesIO
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        environ = base.copy()
        environ["wsgi.input"] = new_input()
        body = app(environ, _start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - start) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def _redis_answers() -> bool:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def profile(name: str, n: int) -> None:
    """Print where the time of one variant goes (cProfile, cumulative)."""
    app = VARIANTS[name][1]()
    drive(app, 200)
    profiler = cProfile.Profile()
    profiler.enable()
    drive(app, n)
    profiler.disable()
    stats = pstats.Stats(profiler)
    print(f"{name}: {stats.total_calls / n:.0f} Python calls per request")  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(r"flask_limiter|limits|ratelimit", 30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None, help="requests per slice")
    parser.add_argument("--profile", choices=sorted(VARIANTS), help="profile one variant")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="variants to run")
    args = parser.parse_args(argv)
    if args.profile:
        profile(args.profile, 2000 if args.quick else 20000)
        return 0
    rounds = args.rounds or (3 if args.quick else 7)
    n = args.requests or (1000 if args.quick else 4000)
    redis_ok = _redis_answers()
    names = args.only or list(VARIANTS)
    apps: dict[str, Flask] = {}
    for name in names:
        _, build, needs_redis = VARIANTS[name]
        if needs_redis and not redis_ok:
            print(f"skipped {name}: Redis at {REDIS_URL} does not answer")
            continue
        apps[name] = build()
        drive(apps[name], 300)  # warm up: first-request set-up, lazy imports
    wall: dict[str, list[float]] = {name: [] for name in apps}
    cpu: dict[str, list[float]] = {name: [] for name in apps}
    trip = RoundTrip(REDIS_URL) if any(VARIANTS[name][2] for name in apps) else None
    trips: list[float] = []
    try:
        for _ in range(rounds):
            for name, app in apps.items():
                # Redis round trips dominate: fewer requests keep a round short.
                elapsed, used = drive(app, n // 4 if VARIANTS[name][2] else n)
                wall[name].append(elapsed)
                cpu[name].append(used)
            if trip is not None:
                trips.append(trip.batch(n // 4)[0])
    finally:
        if trip is not None:
            trip.close()
    print(
        f"{'variant':17} {'wall us':>8} {'+bare':>7} {'+ours-off':>9}"
        f" {'cpu us':>8} {'+bare':>7} {'+ours-off':>9}  description"
    )
    for name in apps:
        row = f"{name:17}"
        for table in (wall, cpu):
            value = statistics.median(table[name])
            bare = statistics.median(table["bare"]) if "bare" in table else None
            off = statistics.median(table["ours-off"]) if "ours-off" in table else None
            row += f" {value:8.1f}"
            row += f" {value - bare:+7.1f}" if bare is not None else " " * 8
            ours = off is not None and name.startswith("ours")
            row += f" {value - off:+9.1f}" if ours and off is not None else " " * 10
        print(f"{row}  {VARIANTS[name][0]}")
    if trips:
        print(
            f"{'redis trip':17} {statistics.median(trips):8.1f}"
            f"{' ' * 45}one round trip of the fixed-window hit script (benchmarks/roundtrip.py)"
        )
    print(
        f"({rounds} rounds, median; {n} requests per slice, {n // 4} for Redis variants and the"
        " round trip; cpu = this process's CPU time, so Redis's own work is not in it)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
