"""How long one ``/metrics`` scrape takes for a large gateway.

500 routes x 3 methods x 5 statuses: 7,500 ``http_requests_total`` series and
1,500 ``http_request_duration_seconds`` label sets. Compares the extension's
renderer with prometheus_client's own on the same data, single process and with
the files of 4 workers in multiprocess mode::

    python -m benchmarks.scrape            # both
    python -m benchmarks.scrape --single   # single process only

Prints one JSON object per measurement (milliseconds, median and best of the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

METHODS = ("GET", "POST", "PUT")
STATUSES = (200, 201, 400, 404, 500)


def build_app(routes: int) -> Any:
    from flask import Flask, request

    from flask_gateway_obs import GatewayObs

    app = Flask("scrape_bench")
    app.config.update(
        GATEWAY_OBS_LOG_CONFIGURE=False,
        GATEWAY_OBS_LOG_ACCESS=False,
        GATEWAY_OBS_HEALTH_ENABLED=False,
    )

    def view(item_id: int) -> tuple[str, int]:
        return "", int(request.args.get("status", "200"))

    for i in range(routes):
        app.add_url_rule(f"/r{i}/<int:item_id>", f"r{i}", view, methods=list(METHODS))
    GatewayObs(app)
    return app


def populate(app: Any, routes: int) -> None:
    client = app.test_client()
    for i in range(routes):
        for method in METHODS:
            for status in STATUSES:
                client.open(f"/r{i}/7?status={status}", method=method)


def timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    fn()  # warm the caches a real server has warm after its first scrape
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": round(statistics.median(samples), 1), "best_ms": round(min(samples), 1)}


def report(name: str, figures: dict[str, Any]) -> None:
    print(json.dumps({"measure": name, **figures}), flush=True)


def single(routes: int, runs: int) -> None:
    from prometheus_client import generate_latest

    from flask_gateway_obs.metrics import app_metrics

    app = build_app(routes)
    populate(app, routes)
    metrics = app_metrics(app)
    client = app.test_client()
    size = len(metrics.render(False))
    report("single: ours, text", {**timed(lambda: metrics.render(False), runs), "bytes": size})
    report("single: ours, OpenMetrics", timed(lambda: metrics.render(True), runs))
    gz = len(metrics.exposition(False, True))
    report(
        "single: ours, GET /metrics with gzip",
        {
            **timed(lambda: client.get("/metrics", headers={"Accept-Encoding": "gzip"}), runs),
            "bytes": gz,
        },
    )
    report(
        "single: prometheus_client generate_latest",
        {
            **timed(lambda: generate_latest(metrics.registry), max(3, runs // 4)),
            "bytes": len(generate_latest(metrics.registry)),
        },
    )


def worker(routes: int) -> None:
    """One 'worker': fills its metric files, then exits (its files stay, as a dead worker's)."""
    app = build_app(routes)
    populate(app, routes)


def multiprocess(routes: int, workers: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="scrape-bench-") as path:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": path}
        cmd = [sys.executable, "-m", "benchmarks.scrape", "--routes", str(routes)]
        procs = [subprocess.Popen([*cmd, "--worker"], env=env) for _ in range(workers)]
        for proc in procs:
            if proc.wait() != 0:
                raise SystemExit("a worker failed")
        subprocess.run([*cmd, "--scrape", "--runs", str(runs)], env=env, check=True)


def scrape(runs: int, workers: int) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from flask_gateway_obs.metrics import app_metrics

    app = build_app(1)
    metrics = app_metrics(app)
    client = app.test_client()
    label = f"multiprocess ({workers} workers' files)"
    size = len(metrics.render(False))
    report(f"{label}: ours, text", {**timed(lambda: metrics.render(False), runs), "bytes": size})
    report(
        f"{label}: ours, GET /metrics with gzip",
        timed(lambda: client.get("/metrics", headers={"Accept-Encoding": "gzip"}), runs),
    )
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    report(
        f"{label}: prometheus_client MultiProcessCollector + generate_latest",
        timed(lambda: generate_latest(registry), max(3, runs // 4)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--single", action="store_true", help="single process only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scrape", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.routes)
    elif args.scrape:
        scrape(args.runs, args.workers)
    else:
        single(args.routes, args.runs)
        if not args.single:
            multiprocess(args.routes, args.workers, args.runs)


if __name__ == "__main__":
    main()
