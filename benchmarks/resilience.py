"""What a closed circuit breaker and a retry that succeeds first time cost per call.

Compared in one process and interleaved (every round times each variant once, in
a fresh random order; the figure is the median over rounds): the bare function,
pybreaker and tenacity used directly, and the extension's wrappers with metrics
off (the same work as the libraries plus ours) and on (plus a histogram
observation or a counter increment per call), breakers with a ``count:`` and a
``time:`` window, a breaker with a ``timeout`` (each call handed to a worker thread),
and a bulkhead with room. Then the reason the breaker is not pybreaker's own
``call``: 8 and 20 threads each making a 200 ms call through one breaker, without and
with a ``timeout`` (every call must get its own worker at once, or it waits and times
out).

    python -m benchmarks.resilience            # full run
    python -m benchmarks.resilience --quick    # a few seconds, indicative only

Prints Markdown.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
import timeit
from collections.abc import Callable
from typing import Any

import pybreaker
import tenacity
from flask import Flask

from flask_gateway_obs import GatewayObs, breaker, bulkhead, retry


def upstream() -> int:
    """The protected function: returns at once."""
    return 1


def build(metrics: bool) -> tuple[Flask, GatewayObs]:
    app = Flask(f"bench_metrics_{metrics}")
    obs = GatewayObs(
        app,
        GATEWAY_OBS_METRICS_ENABLED=metrics,
        GATEWAY_OBS_LOG_CONFIGURE=False,
        GATEWAY_OBS_HEALTH_ENABLED=False,
    )
    return app, obs


Variant = tuple[Callable[[], Any], Flask | None]


def variants() -> dict[str, dict[str, Variant]]:
    """Group -> label -> (a no-argument callable making one call, the app it runs in)."""
    raw_breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    raw_breaker_decorated = raw_breaker(upstream)
    raw_retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=2),
        retry=tenacity.retry_if_exception_type((ConnectionError, TimeoutError)),
        reraise=True,
    )
    raw_retry_decorated = tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=2),
        retry=tenacity.retry_if_exception_type((ConnectionError, TimeoutError)),
        reraise=True,
    )(upstream)
    raw_both = raw_retry_decorated.retry.wraps(raw_breaker_decorated)  # type: ignore[attr-defined]

    out: dict[str, dict[str, Variant]] = {
        "closed breaker": {
            "bare function": (upstream, None),
            "pybreaker `cb.call(fn)`": (lambda: raw_breaker.call(upstream), None),
            "pybreaker `@cb`": (raw_breaker_decorated, None),
        },
        "retry, success first time": {
            "bare function": (upstream, None),
            "tenacity `Retrying(...)(fn)`": (lambda: raw_retrying(upstream), None),
            "tenacity `@retry(...)`": (raw_retry_decorated, None),
        },
        "retry around breaker": {
            "bare function": (upstream, None),
            "tenacity `@retry` around pybreaker `@cb`": (raw_both, None),
        },
        "bulkhead with room": {
            "bare function": (upstream, None),
        },
    }
    for metrics in (False, True):
        suffix = "metrics on" if metrics else "metrics off"
        app, obs = build(metrics)
        with app.app_context():
            ours = obs.circuit_breaker("bench", fail_max=5, reset_timeout=30)
            counted = obs.circuit_breaker("bench_count", window="count:100", reset_timeout=30)
            timed_window = obs.circuit_breaker("bench_time", window="time:60", reset_timeout=30)
            timed = obs.circuit_breaker("bench_timed", fail_max=5, reset_timeout=30, timeout=5)
            policy = obs.retry("bench")
            room = obs.bulkhead("bench", max_concurrent=10)
        # Decorators look the app up per call: timed inside the app's context, as in a view.
        closed, retried, both = (
            out["closed breaker"],
            out["retry, success first time"],
            out["retry around breaker"],
        )
        closed[f"ours `cb.call(fn)`, {suffix}"] = (lambda cb=ours: cb.call(upstream), app)
        closed[f"ours `cb.call(fn)` with timeout (worker thread), {suffix}"] = (
            lambda cb=timed: cb.call(upstream),
            app,
        )
        closed[f"ours `cb.call(fn)`, `count:100` window, {suffix}"] = (
            lambda cb=counted: cb.call(upstream),
            app,
        )
        closed[f"ours `cb.call(fn)`, `time:60` window, {suffix}"] = (
            lambda cb=timed_window: cb.call(upstream),
            app,
        )
        closed[f"ours `@cb`, {suffix}"] = (ours(upstream), app)
        rooms = out["bulkhead with room"]
        rooms[f"ours `bh.call(fn)`, {suffix}"] = (lambda bh=room: bh.call(upstream), app)
        rooms[f"ours `@bulkhead(name)`, {suffix}"] = (bulkhead("bench")(upstream), app)
        closed[f"ours `@breaker(name)`, {suffix}"] = (breaker("bench")(upstream), app)
        retried[f"ours `policy.call(fn)`, {suffix}"] = (lambda p=policy: p.call(upstream), app)
        retried[f"ours `@retry(name)`, {suffix}"] = (retry("bench")(upstream), app)
        both[f"ours `@obs.resilient(name)`, {suffix}"] = (obs.resilient("bench")(upstream), app)
    return out


#: What the per-call figures are measured with: wall time, or (``--cpu``) the process's
#: CPU time, which a machine shared with other busy processes inflates far less.
TIMER: Callable[[], float] = time.perf_counter


def timed(fn: Callable[[], Any], app: Flask | None, number: int) -> float:
    """Seconds for ``number`` calls of ``fn`` (inside ``app``'s context if given)."""
    if app is None:
        return timeit.Timer(fn, timer=TIMER).timeit(number)
    with app.app_context():
        return timeit.Timer(fn, timer=TIMER).timeit(number)


def measure(groups: dict[str, dict[str, Variant]], rounds: int, number: int) -> Any:
    """Median µs per call of every variant, interleaved over ``rounds``."""
    flat = [(group, label, v) for group, items in groups.items() for label, v in items.items()]
    for _, _, (fn, app) in flat:  # warm up
        timed(fn, app, number // 10 or 1)
    samples: dict[tuple[str, str], list[float]] = {(g, label): [] for g, label, _ in flat}
    for _ in range(rounds):
        random.shuffle(flat)
        for group, label, (fn, app) in flat:
            seconds = timed(fn, app, number)
            samples[(group, label)].append(seconds / number * 1e6)
    return {key: statistics.median(values) for key, values in samples.items()}


def parallel(
    runner: Callable[[Callable[[], None]], Any], threads: int, seconds: float
) -> tuple[float, int]:
    """Wall time of ``threads`` threads each making one call of ``seconds`` (started
    together), and how many of the calls failed."""
    start = threading.Barrier(threads)
    failed: list[BaseException] = []

    def slow() -> None:
        time.sleep(seconds)

    def caller() -> None:
        start.wait()
        try:
            runner(slow)
        except Exception as exc:
            failed.append(exc)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - started, len(failed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--cpu", action="store_true", help="per-call figures in CPU time (a busy machine)"
    )
    args = parser.parse_args()
    global TIMER
    if args.cpu:
        TIMER = time.process_time
    rounds, number = (7, 2000) if args.quick else (25, 10000)

    medians = measure(variants(), rounds, number)
    clock = "CPU" if args.cpu else "wall"
    print(
        f"Median µs ({clock} time) per call over {rounds} interleaved rounds of {number:,} calls; "
        "`+` is the cost added to the bare function, `x lib` the ratio to the library's "
        "own wrapper of the same kind."
    )
    groups: dict[str, list[tuple[str, float]]] = {}
    for (group, label), value in medians.items():
        groups.setdefault(group, []).append((label, value))
    library = {
        "closed breaker": "pybreaker `cb.call(fn)`",
        "retry, success first time": "tenacity `Retrying(...)(fn)`",
        "retry around breaker": "tenacity `@retry` around pybreaker `@cb`",
        "bulkhead with room": "bare function",
    }
    order = ["bare", "pybreaker", "tenacity", "ours"]
    for group, rows in groups.items():
        bare = dict(rows)["bare function"]
        lib = dict(rows)[library[group]]
        rows.sort(key=lambda r: (next(i for i, o in enumerate(order) if r[0].startswith(o)), r[0]))
        print(f"\n### {group}\n")
        print("| variant | µs/call | + µs | x lib |")
        print("|---|---:|---:|---:|")
        for label, value in rows:
            print(f"| {label} | {value:.2f} | {value - bare:.2f} | {value / lib:.2f} |")

    ours_app, ours_obs = build(False)
    print("\n### N threads x one 200 ms call through one breaker, started together\n")
    print("| breaker | threads | wall time (s) | failed calls |")
    print("|---|---:|---:|---:|")
    for threads in (8, 20):
        with ours_app.app_context():
            ours = ours_obs.circuit_breaker(f"parallel_{threads}", fail_max=100)
            timed = ours_obs.circuit_breaker(f"timed_{threads}", fail_max=100, timeout=0.3)
        timed.call(upstream)  # one idle worker already there, as in a running app
        raw = pybreaker.CircuitBreaker(fail_max=100)
        rows = [
            ("ours", ours.call),
            ("ours, `timeout=0.3` (a worker thread per call)", timed.call),
            ("pybreaker `cb.call` (holds its lock around the call)", raw.call),
        ]
        for label, runner in rows:
            wall, failed = parallel(runner, threads, 0.2)
            print(f"| {label} | {threads} | {wall:.3f} | {failed} |")


if __name__ == "__main__":
    main()
