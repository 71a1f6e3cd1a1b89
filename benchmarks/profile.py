"""Where one variant's time per request goes: cProfile over many requests, top functions.

::

    python -m benchmarks.profile ours-core [--requests 5000] [--sort tottime]
    python -m benchmarks.profile ours-core --filter flask_gateway_obs

Drives the variant exactly as the in-process benchmark does (its access log goes
to ``/dev/null``) and prints the functions that cost the most per request.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys

from benchmarks.variants import BY_NAME, REQUEST_HEADERS, REQUEST_PATH, build
from benchmarks.worker import Driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=sorted(BY_NAME))
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--sort", default="tottime", choices=("tottime", "cumulative", "ncalls"))
    parser.add_argument("--filter", default="", help="regex on file/function names")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(devnull, 1)  # the access log goes nowhere, the report to the real stdout
    report = os.fdopen(saved, "w")
    try:
        built = build(args.variant)
        driver = Driver(built.app, REQUEST_PATH, REQUEST_HEADERS)
        driver.drive(500)
        profiler = cProfile.Profile()
        profiler.enable()
        driver.drive(args.requests)
        profiler.disable()
        sys.stdout.flush()
    finally:
        os.close(devnull)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    total = stats.total_calls  # type: ignore[attr-defined]
    stats.sort_stats(args.sort)
    if args.filter:
        stats.print_stats(args.filter, args.top)
    else:
        stats.print_stats(args.top)
    report.write(f"{args.variant}: {total / args.requests:.0f} Python calls per request\n")
    report.write(text.getvalue())
    report.flush()


if __name__ == "__main__":
    main()
