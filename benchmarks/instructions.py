"""Instructions per request under ``valgrind --tool=callgrind``: the per-request cost without
the clock's noise.

Each variant is driven through its WSGI callable (the same driver, request and warm-up as
the timing benchmark) in two fresh processes under callgrind, one serving ``small``
requests and one ``large``; instructions per request = (instructions of the large run -
instructions of the small run) / (large - small), so interpreter start-up, imports and
app set-up cancel out. Run to run the figure repeats within a fraction of a percent; it
does not see kernel time (writing the access line) or cache misses, which the timing
benchmark does: both measures matter.

``python -m benchmarks.instructions [--quick] [--variants a,b] [--small N] [--large N]``
prints a Markdown table (``--json`` for the raw figures). Run alone, one worker is:
``python -m benchmarks.instructions --worker VARIANT N``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Variants of the full run, in table order: those the goals judge, then the parts.
DEFAULT_VARIANTS = (
    "bare",
    "ours-core",
    "ours-all",
    "ours-tracing-unsampled",
    "ours-log",
    "ours-log-ecs",
    "ours-log-otel",
    "ours-min",
    "ours-metrics",
    "ours-ratelimit",
    "ours-sentry",
    "ours-all-no-limit-headers",
    "ours-defaults",
    "peer-prometheus",
)
#: Variants of the quick run: the two goals against bare.
QUICK_VARIANTS = ("bare", "ours-core", "ours-all")
FULL = {"small": 200, "large": 2200}
QUICK = {"small": 50, "large": 350}
_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)


@dataclasses.dataclass
class Count:
    """Instructions per request of one variant, or why there is none."""

    name: str
    per_request: float | None = None
    error: str | None = None


def worker(name: str, requests: int) -> int:
    """Build ``name``, warm it up, serve ``requests`` requests; nothing on stdout."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the apps' access lines: written, not shown
    from benchmarks.variants import REQUEST_HEADERS, REQUEST_PATH, build
    from benchmarks.worker import Driver

    try:
        built = build(name)
    except LookupError as exc:
        print(f"unavailable: {exc}", file=sys.stderr)
        return 3
    driver = Driver(built.app, REQUEST_PATH, REQUEST_HEADERS)
    driver.drive(200)  # lazy imports, first-request set-up, caches
    if built.between_slices is not None:
        built.between_slices()
    driver.drive(requests)
    return 0


def _instructions(name: str, requests: int, workdir: Path, valgrind: str) -> int:
    out = workdir / f"callgrind.{name}.{requests}.out"
    command = [
        valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--dump-instr=no",
        "--compress-strings=no",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--worker",
        name,
        str(requests),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    if result.returncode == 3:
        raise LookupError(result.stderr.strip().splitlines()[-1] if result.stderr else name)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: exit {result.returncode}: {result.stderr[-600:]}")
    found = _TOTALS.search(out.read_text(errors="replace"))
    if found is None:
        raise RuntimeError(f"{name}: no instruction total in {out}")
    return int(found.group(1))


def measure(
    names: Sequence[str],
    small: int,
    large: int,
    workdir: Path | None = None,
    parallel: int = 2,
) -> list[Count]:
    """Instructions per request of each variant (``large`` > ``small`` requests)."""
    if large <= small:
        raise ValueError("large must be more requests than small")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return [Count(n, error="valgrind is not installed") for n in names]
    jobs = [(name, n) for name in names for n in (small, large)]
    results: dict[tuple[str, int], int | BaseException] = {}
    with tempfile.TemporaryDirectory() as tmp:
        where = workdir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)

        def run(job: tuple[str, int]) -> None:
            try:
                results[job] = _instructions(job[0], job[1], where, valgrind)
            except (LookupError, RuntimeError, subprocess.TimeoutExpired) as exc:
                results[job] = exc

        # Instruction counts do not depend on how busy the machine is: run two at a time.
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(run, jobs))
    counts = []
    for name in names:
        low, high = results[(name, small)], results[(name, large)]
        failure = next((r for r in (low, high) if isinstance(r, BaseException)), None)
        if failure is None:
            assert isinstance(low, int) and isinstance(high, int)
            counts.append(Count(name, per_request=(high - low) / (large - small)))
        elif isinstance(failure, LookupError):
            counts.append(Count(name, error=f"unavailable: {failure}"))
        else:
            counts.append(Count(name, error=str(failure)[:300]))
    return counts


def table(counts: Sequence[Count], small: int, large: int) -> str:
    """The Markdown table: instructions per request, x bare, + over bare."""
    bare = next((c.per_request for c in counts if c.name == "bare"), None)
    lines = [
        f"Instructions per request under callgrind: runs of {small} and {large} requests "
        "after a 200-request warm-up, difference / difference of requests.",
        "",
        "| variant | instructions/request | x bare | + vs bare |",
        "|---|---:|---:|---:|",
    ]
    for count in counts:
        if count.per_request is None:
            lines.append(f"| {count.name} | - ({count.error}) | | |")
            continue
        ratio = f"{count.per_request / bare:.3f}" if bare else "-"
        plus = f"{count.per_request - bare:+,.0f}" if bare else "-"
        lines.append(f"| {count.name} | {count.per_request:,.0f} | {ratio} | {plus} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """The options both callgrind benchmarks take (this one and a gunicorn worker's)."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--variants", help="comma-separated variants (bare is always added)")
    parser.add_argument("--small", type=int)
    parser.add_argument("--large", type=int)
    parser.add_argument("--json", action="store_true", help="raw figures as JSON")


def chosen(
    args: argparse.Namespace,
    sizes: tuple[dict[str, int], dict[str, int]],
    variants: tuple[Sequence[str], Sequence[str]],
) -> tuple[dict[str, int], list[str]]:
    """The request counts and variants asked for: ``sizes`` and ``variants`` are the
    (full, quick) defaults; bare is always counted, first."""
    counts = dict(sizes[1] if args.quick else sizes[0])
    for key in ("small", "large"):
        value = getattr(args, key)
        if value is not None:
            counts[key] = value
    names = list(variants[1] if args.quick else variants[0])
    if args.variants:
        names = [n.strip() for n in args.variants.split(",") if n.strip()]
    if "bare" not in names:
        names.insert(0, "bare")
    return counts, names


def show(counts: Sequence[Count], as_json: bool, text: str) -> None:
    """Print the raw figures as JSON, or the Markdown table ``text``."""
    if as_json:
        print(json.dumps([dataclasses.asdict(c) for c in counts], indent=1))
    else:
        print(text, end="")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    add_arguments(parser, "few variants, few requests")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], int(args.worker[1]))
    sizes, names = chosen(args, (FULL, QUICK), (DEFAULT_VARIANTS, QUICK_VARIANTS))
    counts = measure(names, sizes["small"], sizes["large"])
    show(counts, args.json, table(counts, sizes["small"], sizes["large"]))
    return (
        0
        if all(c.per_request is not None or "unavailable" in (c.error or "") for c in counts)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
