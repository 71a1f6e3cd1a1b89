"""What a health probe costs: ``/health`` cached and uncached, and with a dependency black-holed.

The app checks memory, disk, and the local Redis and PostgreSQL when they answer
(``BENCH_REDIS_URL``, ``BENCH_DATABASE_URL``; defaults the local servers). The
black-holed probe points Redis at a loopback listener that accepts connections
and never answers: the probe must come back within the check timeout, unhealthy.
Probes go through the WSGI callable, as in the in-process benchmarks::

    python -m benchmarks.probe [--quick]

Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from typing import Any

from benchmarks.worker import Driver

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
BLACK_HOLE_TIMEOUT = 0.25


def _reachable(url: str, default_port: int) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=0.5
        ):
            return True
    except OSError:
        return False


def build_app(config: dict[str, Any]) -> Any:
    from flask import Flask

    from flask_gateway_obs import GatewayObs

    app = Flask("probe_bench")
    app.config.update(
        GATEWAY_OBS_LOG_CONFIGURE=False,
        GATEWAY_OBS_LOG_ACCESS=False,
        GATEWAY_OBS_HEALTH_SHOW_DETAILS="always",
        **config,
    )
    GatewayObs(app)
    return app


def probe(app: Any, path: str, count: int) -> dict[str, Any]:
    """Probe ``path`` ``count`` times; median and worst time, the status codes seen."""
    driver = Driver(app, path, {"User-Agent": "probe-bench/1.0"})
    samples: list[float] = []
    statuses: set[str] = set()
    for _ in range(count):
        start = time.perf_counter()
        status, _, _ = driver.once()
        samples.append((time.perf_counter() - start) * 1000.0)
        statuses.add(status.split()[0])
    return {
        "median_ms": round(statistics.median(samples), 3),
        "max_ms": round(max(samples), 3),
        "probes": count,
        "status": ",".join(sorted(statuses)),
    }


def report(name: str, figures: dict[str, Any]) -> None:
    print(json.dumps({"measure": name, **figures}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 50 if args.quick else 300
    deps: dict[str, Any] = {}
    names = ["memory", "disk"]
    if _reachable(REDIS_URL, 6379):
        deps["GATEWAY_OBS_REDIS_URL"] = REDIS_URL
        names.append("redis")
    if _reachable(DATABASE_URL, 5432):
        deps["GATEWAY_OBS_DATABASE_URL"] = DATABASE_URL
        names.append("postgres")
    checks = "+".join(names)

    cached = build_app({**deps, "GATEWAY_OBS_HEALTH_CACHE_TTL": 3600})
    probe(cached, "/health", 1)  # fills the cache
    report(f"GET /health, cached ({checks})", probe(cached, "/health", count))
    report("GET /health/live", probe(cached, "/health/live", count))

    uncached = build_app({**deps, "GATEWAY_OBS_HEALTH_CACHE_TTL": 0})
    probe(uncached, "/health", 3)  # connections opened, pools warm
    report(f"GET /health, uncached ({checks})", probe(uncached, "/health", max(20, count // 5)))

    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)  # accepted by the kernel, never answered
        port = hole.getsockname()[1]
        blocked = build_app(
            {
                **deps,
                "GATEWAY_OBS_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                "GATEWAY_OBS_HEALTH_CACHE_TTL": 0,
                "GATEWAY_OBS_HEALTH_TIMEOUT": BLACK_HOLE_TIMEOUT,
            }
        )
        report(
            f"GET /health/ready, Redis black-holed, timeout {BLACK_HOLE_TIMEOUT} s: first probe",
            probe(blocked, "/health/ready", 1),
        )
        report(
            "same, the probes right after it",
            probe(blocked, "/health/ready", 10 if args.quick else 30),
        )


if __name__ == "__main__":
    main()
