"""The benchmark harness: ``python -m benchmarks.run [--quick]``, writes ``RESULTS.md``.

One run measures the per-request cost goals in both measures and judges them
(:mod:`benchmarks.goals`), beside the sections the goals do not cover:

1. In-process overhead (:mod:`benchmarks.inproc`): every variant in its own process, paired
   with bare Flask slice by slice, Python calls per request under cProfile, and a Redis
   round trip timed in the same rounds as the variant with a rate limit on Redis.
1b. Instructions per request under callgrind (:mod:`benchmarks.instructions`).
2. Under gunicorn (:mod:`benchmarks.server`): bare and ours in alternating runs.
2b. Instructions per request in a gunicorn worker (:mod:`benchmarks.server_instructions`).
3. Scrape and probe: ``benchmarks/scrape.py`` (``/metrics``) and :mod:`benchmarks.probe`
   (``/health``).
4. Resilience: ``benchmarks/resilience.py``.
5. Rate limiting, storage by storage: ``benchmarks/ratelimit.py``.

The goals' table is also printed on stdout at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import goals, instructions, server, server_instructions
from benchmarks.inproc import run_inproc
from benchmarks.report import Report, cell, json_lines_table, raw, write
from benchmarks.variants import BY_NAME, VARIANTS

__all__ = ["json_lines_table", "main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKDIR = HERE / ".work"

#: Default and ``--quick`` sizes: requests per slice, rounds, processes per variant,
#: profiled requests, requests per server run, server repetitions.
FULL = {
    "slice": 1000,
    "rounds": 30,
    "processes": 3,
    "profile": 500,
    "requests": 6000,
    "repeats": 5,
}
QUICK = {
    "slice": 300,
    "rounds": 8,
    "processes": 1,
    "profile": 100,
    "requests": 1500,
    "repeats": 2,
}

SECTIONS = (
    "inproc",
    "instructions",
    "server",
    "server-instructions",
    "scrape",
    "resilience",
    "ratelimit",
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_script(module: str, args: Sequence[str], timeout: float) -> str:
    """Run ``python -m benchmarks.<module> args``; its output as a Markdown section.

    A script prints either Markdown or one JSON object per line (made into a table).
    """
    path = HERE / f"{module}.py"
    if not path.exists():
        return f"_Not run: `benchmarks/{module}.py` is not in this build yet._\n"
    command = [sys.executable, "-m", f"benchmarks.{module}", *args]
    shown = " ".join(["python", "-m", f"benchmarks.{module}", *args])
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    started = time.monotonic()
    try:
        out = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"_`{shown}` did not finish within {timeout:.0f} s._\n"
    took = time.monotonic() - started
    if out.returncode != 0:
        tail = cell(" / ".join(out.stderr.strip().splitlines()[-3:]), 400)
        return f"_`{shown}` failed (exit {out.returncode}): {tail}_\n"
    table = json_lines_table(out.stdout)
    text = out.stdout.strip()
    if table is not None:
        body = table
    elif any(line.startswith(("|", "#")) for line in text.splitlines()):
        body = text  # Markdown already
    else:
        body = f"```text\n{text}\n```"
    return f"From `{shown}` ({took:.0f} s):\n\n{body}\n"


def _counts_sizes(
    defaults: dict[str, int], args: argparse.Namespace, prefix: str
) -> dict[str, int]:
    """A callgrind section's request counts: ``defaults`` with ``--{prefix}-small`` and
    ``--{prefix}-large`` applied."""
    sizes = dict(defaults)
    for key in ("small", "large"):
        value = getattr(args, f"{prefix}_{key}")
        if value is not None:
            sizes[key] = value
    return sizes


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Per-request cost of flask-gateway-obs against bare Flask and its peers.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run, indicative only (a few minutes)"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--variants",
        help="comma-separated in-process variants (default: all): "
        + ",".join(v.name for v in VARIANTS),
    )
    parser.add_argument("--slice", type=int, help="requests per slice")
    parser.add_argument("--rounds", type=int, help="rounds of slices")
    parser.add_argument(
        "--processes", type=int, help="processes per in-process variant, taking turns by round"
    )
    parser.add_argument("--profile", type=int, help="requests profiled per variant")
    parser.add_argument(
        "--instructions-small", type=int, help="requests of the smaller callgrind run"
    )
    parser.add_argument(
        "--instructions-large", type=int, help="requests of the larger callgrind run"
    )
    parser.add_argument(
        "--worker-small", type=int, help="requests of the smaller count in a gunicorn worker"
    )
    parser.add_argument(
        "--worker-large", type=int, help="requests of the larger count in a gunicorn worker"
    )
    parser.add_argument("--requests", type=int, help="requests per server run")
    parser.add_argument("--repeats", type=int, help="server runs per variant")
    parser.add_argument(
        "--server-modes",
        help="comma-separated gunicorn modes (default: all): "
        + ",".join(m.name for m in server.MODES),
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the round order")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=WORKDIR,
        help="logs of the workers and servers, raw figures (default: benchmarks/.work)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="report path (default: benchmarks/RESULTS.md; "
        "benchmarks/.work/RESULTS-quick.md with --quick)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        value = getattr(args, key)
        if value is not None:
            sizes[key] = value
    if sizes["processes"] < 1:
        raise SystemExit(f"--processes must be at least 1, not {sizes['processes']}")
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s): {', '.join(sorted(unknown))}")
    names = [v.name for v in VARIANTS]
    if args.variants:
        names = [n.strip() for n in args.variants.split(",") if n.strip()]
        bad = [n for n in names if n not in BY_NAME]
        if bad:
            raise SystemExit(f"unknown variant(s): {', '.join(bad)}")
        if "bare" not in names:
            names.insert(0, "bare")
    modes: tuple[server.Mode, ...] = server.MODES
    if args.server_modes:
        wanted = {m.strip() for m in args.server_modes.split(",")}
        modes = tuple(m for m in server.MODES if m.name in wanted)
    workdir: Path = args.workdir
    output = args.output or (workdir / "RESULTS-quick.md" if args.quick else HERE / "RESULTS.md")
    workdir.mkdir(parents=True, exist_ok=True)

    report = Report(argv, args.quick, sizes, time.monotonic(), os.getloadavg())

    def section(name: str, what: str) -> float:
        log(what)
        return time.monotonic()

    def done(name: str, started: float) -> None:
        report.timing[name] = (load_at[name], time.monotonic() - started)

    load_at: dict[str, float] = {}
    for name in SECTIONS:
        if name not in sections:
            continue
        load_at[name] = os.getloadavg()[0]
        if name == "inproc":
            started = section(
                name,
                f"in-process: {len(names)} variants x {sizes['processes']} processes, "
                f"{sizes['rounds']} x {sizes['slice']}",
            )
            report.inproc = run_inproc(
                names,
                slice_size=sizes["slice"],
                rounds=sizes["rounds"],
                processes=sizes["processes"],
                profile=sizes["profile"],
                seed=args.seed,
                workdir=workdir,
                progress=log,
            )
        elif name == "instructions":
            chosen = list(
                instructions.QUICK_VARIANTS if args.quick else instructions.DEFAULT_VARIANTS
            )
            if args.variants:
                chosen = names
            elif args.quick:
                report.not_counted = "counted in the full run only (not in --quick)"
            report.instruction_sizes = _counts_sizes(
                instructions.QUICK if args.quick else instructions.FULL, args, "instructions"
            )
            started = section(
                name, f"instructions per request under callgrind: {len(chosen)} variants"
            )
            report.counts = {
                c.name: c
                for c in instructions.measure(
                    chosen,
                    report.instruction_sizes["small"],
                    report.instruction_sizes["large"],
                    workdir=workdir / "callgrind",
                )
            }
        elif name == "server":
            started = section(
                name, f"gunicorn: {sizes['requests']} requests x {sizes['repeats']} repetitions"
            )
            report.servers = server.run_servers(
                requests=sizes["requests"],
                repeats=sizes["repeats"],
                workdir=workdir,
                modes=modes,
                progress=log,
            )
        elif name == "server-instructions":
            chosen = list(
                server_instructions.QUICK_VARIANTS
                if args.quick
                else server_instructions.DEFAULT_VARIANTS
            )
            sizes_w = _counts_sizes(
                server_instructions.QUICK if args.quick else server_instructions.FULL,
                args,
                "worker",
            )
            report.worker_sizes = sizes_w
            started = section(
                name, f"instructions per request in a gunicorn worker: {len(chosen)} variants"
            )
            report.worker_counts = {
                c.name: c
                for c in server_instructions.measure(
                    chosen, sizes_w["small"], sizes_w["large"], workdir=workdir / "worker-callgrind"
                )
            }
        elif name == "scrape":
            started = section(name, "scrape and probe")
            runs = ["--runs", "5" if args.quick else "20"]
            parts = [run_script("scrape", runs, timeout=300)]
            parts.append(run_script("probe", ["--quick"] if args.quick else [], timeout=120))
            report.scrape = "\n".join(parts)
        elif name == "resilience":
            started = section(name, "resilience")
            quick = ["--quick"] if args.quick else []
            report.resilience = run_script("resilience", quick, timeout=180)
        else:
            started = section(name, "rate limiting")
            quick = ["--quick"] if args.quick else []
            report.ratelimit = run_script("ratelimit", quick, timeout=240)
        done(name, started)
    write(output, report)
    (workdir / f"{output.stem}.json").write_text(json.dumps(raw(report), indent=1, sort_keys=True))
    rows = report.goals()
    print("\n".join(goals.table(rows)))
    print(f"\nGoals: {goals.summary(rows)}.")
    log(f"wrote {output} in {time.monotonic() - report.started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
