"""``RESULTS.md``: the machine, the goals, then every section's figures, from one run."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import goals, instructions, server, server_instructions
from benchmarks.inproc import InprocRun, summarize
from benchmarks.roundtrip import masked_url

PACKAGES = (
    "flask-gateway-obs",
    "Flask",
    "Werkzeug",
    "prometheus-client",
    "sentry-sdk",
    "Flask-Limiter",
    "limits",
    "redis",
    "pybreaker",
    "tenacity",
    "gunicorn",
    "prometheus-flask-exporter",
    "python-json-logger",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-flask",
)


@dataclasses.dataclass
class Report:
    """Everything one run measured, and when."""

    argv: Sequence[str]
    quick: bool
    sizes: dict[str, int]
    started: float
    load_before: tuple[float, float, float]
    #: Per section run: (1-minute load average at its start, seconds it took).
    timing: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    inproc: InprocRun | None = None
    counts: dict[str, instructions.Count] | None = None
    instruction_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    servers: list[server.ServerResult] | None = None
    worker_counts: dict[str, instructions.Count] | None = None
    worker_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    scrape: str | None = None
    resilience: str | None = None
    ratelimit: str | None = None

    #: Why a goal's variant has no instruction count (the quick run counts a few).
    not_counted: str = goals.NOT_COUNTED

    def goals(self) -> list[goals.Row]:
        return goals.judge(
            self.inproc, self.counts, self.servers, self.not_counted, self.worker_counts
        )


# --- cells and small tables -----------------------------------------------------------------


def fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def cell(text: str, limit: int = 160) -> str:
    """``text`` fit for one Markdown table cell."""
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_lines_table(text: str) -> str | None:
    """A Markdown table of one JSON object per line (``measure`` first), else ``None``."""
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return None
        if not isinstance(row, dict):
            return None
        rows.append(row)
    if not rows:
        return None
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    if "measure" in columns:
        columns.remove("measure")
        columns.insert(0, "measure")
    lines = [
        "| " + " | ".join(c.replace("_", " ") for c in columns) + " |",
        "|---" * len(columns) + "|",
    ]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if isinstance(value, float):
                value = f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
            elif isinstance(value, int) and not isinstance(value, bool):
                value = f"{value:,}"
            cells.append(cell(str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> list[tuple[str, str]]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("memory", memory),
        ("system", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
    ]


def versions() -> str:
    parts = []
    for name in PACKAGES:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def inproc_table(run: InprocRun) -> list[str]:
    bare = run.get("bare")
    lines = [
        "| variant | µs/request | + µs vs bare (paired; IQR) | x bare | calls/request "
        "| + calls | log lines |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    bare_calls = bare.calls if bare is not None else None
    for result in run.results:
        label = result.variant.label
        if result.variant.group == "ours":
            label = f"**{label}**"
        if not result.ok:
            lines.append(f"| {label} | {cell(result.status)} | | | | | |")
            continue
        calls_diff = (
            result.calls - bare_calls
            if result.calls is not None and bare_calls is not None
            else None
        )
        if bare is None:
            median = statistics.median(result.per_round.values()) if result.per_round else None
            lines.append(
                f"| {label} | {fmt(median)} | - | - | {fmt(result.calls, 0)} | - "
                f"| {result.info.get('log_lines')} |"
            )
            continue
        s = summarize(result, bare)
        diff = (
            "0"
            if result is bare
            else f"{fmt(s.diff_us, sign=True)} ({fmt(s.diff_q1, sign=True)} .. "
            f"{fmt(s.diff_q3, sign=True)})"
        )
        lines.append(
            f"| {label} | {fmt(s.median_us)} | {diff} | {fmt(s.ratio, 2)} "
            f"| {fmt(result.calls, 0)} | {fmt(calls_diff, 0, sign=True)} "
            f"| {result.info.get('log_lines')} |"
        )
    return lines


def round_trip_lines(run: InprocRun) -> list[str]:
    trips = run.round_trips
    if trips is None:
        return []
    if not trips.per_round:
        return [f"Redis round trip: not measured ({trips.error or 'no round ran'}).", ""]
    means = list(trips.per_round.values())
    text = (
        f"Redis round trip ({masked_url()}), timed in each round right after the slice of the "
        f"variant with a limit on Redis: {trips.calls} calls of the fixed-window hit script "
        f"(`INCRBY`, `EXPIRE` on a new window, `TTL`; `benchmarks/roundtrip.py`) through "
        f"redis-py, **{statistics.median(means):.1f} µs** per round trip (median over "
        f"{len(means)} rounds of each batch's mean; range {min(means):.1f} .. "
        f"{max(means):.1f}; single calls' median {statistics.median(trips.medians.values()):.1f}"
        f" µs). The batch mean is what compares with a slice's mean per request."
    )
    if trips.error:
        text += f" Stopped early: {trips.error}."
    return [text, ""]


def server_tables(results: Sequence[server.ServerResult]) -> list[str]:
    lines: list[str] = []
    for mode in server.MODES:
        in_mode = [r for r in results if r.mode.name == mode.name]
        if not in_mode:
            continue
        lines += [
            f"**{mode.label}** ({mode.connections} connections)",
            "",
            "| variant | requests/s | runs' range | % of bare (paired) | p50 ms | p99 ms "
            "| failed |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for result in in_mode:
            if result.error is not None and not result.runs:
                lines.append(f"| {result.label} | {cell(result.error)} | | | | | |")
                continue
            low, high = result.rps_range
            share = result.share
            shown = "100" if result.variant == "bare" else fmt(share and share * 100, 0)
            error = f" (stopped: {cell(result.error, 80)})" if result.error else ""
            lines.append(
                f"| {result.label}{error} | {result.rps:.0f} | {low:.0f} .. {high:.0f} "
                f"| {shown} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.failures} |"
            )
        lines.append("")
        if mode.note:
            lines += [f"_{mode.note}_", ""]
    return lines


def _load_note(report: Report, section: str) -> list[str]:
    if section not in report.timing:
        return []
    load, took = report.timing[section]
    return [f"_Load average (1 min) at the start of this section: {load:.2f}; took {took:.0f} s._"]


def _counts_section(
    report: Report,
    title: str,
    section: str,
    render: Callable[[Sequence[instructions.Count], int, int], str],
    counts: dict[str, instructions.Count],
    sizes: dict[str, int],
) -> list[str]:
    """A section of instruction counts: its title, load note and table."""
    body = render(list(counts.values()), sizes["small"], sizes["large"]).rstrip()
    return [title, "", *_load_note(report, section), "", body, ""]


# --- the document ---------------------------------------------------------------------------


def _processes_phrase(processes: int) -> str:
    """How section 1 spread the variants over processes, for its description."""
    if processes <= 1:
        return "Each variant runs in its own long-lived process"
    return (
        f"Each variant runs in {processes} long-lived processes, round *r* driving process "
        f"*r* mod {processes} of every variant (two processes of the same code differ by "
        f"several per cent, so the medians span {processes} processes' luck),"
    )


def write(path: Path, report: Report) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    load_after = os.getloadavg()
    sizes = report.sizes
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in report.argv)
    rows = report.goals()
    lines = [
        "# Benchmark results",
        "",
        f"Written by `benchmarks/run.py` on {now:%Y-%m-%d %H:%M} UTC"
        f"{' (a --quick run: few rounds, indicative only)' if report.quick else ''}; "
        f"took {time.monotonic() - report.started:.0f} s.",
        "",
        f"- command: `{command.strip()}` (`make bench` runs it in `.venv`)",
    ]
    lines += [f"- {name}: {value}" for name, value in machine()]
    lines += [
        f"- load average (1 / 5 / 15 min) before: "
        f"{' / '.join(f'{v:.2f}' for v in report.load_before)}; after: "
        f"{' / '.join(f'{v:.2f}' for v in load_after)} (other work on the machine shows "
        "here; the paired figures are meant to survive it, instruction counts do not see it)",
        f"- versions: {versions()}",
        "",
        "## Goals",
        "",
        "Judged on this run alone. *Time*: the median over the in-process rounds of the "
        "paired ratio (§1); a goal relative to another variant divides the two variants' "
        "ratios to bare round by round. *Instructions*: the ratio of instructions per "
        "request under callgrind (§1b). Throughput: gunicorn, median of the paired runs (§2).",
        "",
        *goals.table(rows),
        "",
        f"Verdicts: {goals.summary(rows)}.",
        "",
    ]
    if report.inproc is not None:
        lines += [
            "## 1. In-process overhead (no server, no network)",
            "",
            *_load_note(report, "inproc"),
            "",
            f"{_processes_phrase(sizes.get('processes', 1))} and is driven through its WSGI "
            f"callable (environ built once with werkzeug's `EnvironBuilder`, copied per call, "
            f"body consumed and closed) with `GET /items/42` answering a small JSON object. "
            f"The variants take turns in slices of {sizes['slice']} requests over "
            f"{sizes['rounds']} rounds, in a new random order each round, with a slice of bare "
            f"Flask before the first and after each. *µs/request* is the median over the "
            f"rounds; *+ µs vs bare* the median over the rounds of the difference to the mean "
            f"of the two bare slices around it (with the interquartile range of those "
            f"differences); *x bare* the median of the same ratios; "
            f"*calls/request* counts Python function calls under cProfile over "
            f"{sizes['profile']} requests (stable where times are noisy); *log lines* is what "
            f"one request writes to stdout (access logs go to `/dev/null` while timing).",
            "",
            *inproc_table(report.inproc),
            "",
            *round_trip_lines(report.inproc),
        ]
        for result in report.inproc.results:
            if result.ok and result.variant.description:
                lines.append(f"- {result.variant.label}: {result.variant.description}")
        lines.append("")
    if report.counts is not None:
        lines += _counts_section(
            report, "## 1b. Instructions per request", "instructions", instructions.table,
            report.counts, report.instruction_sizes,
        )  # fmt: skip
    if report.servers is not None:
        lines += [
            "## 2. Under gunicorn",
            "",
            *_load_note(report, "server"),
            "",
            f"gunicorn on 127.0.0.1, load from {server.client_version()} with one thread on the "
            f"same 2 cores, {sizes['requests']} requests per run after a warm-up. "
            f"{sizes['repeats']} repetitions, each starting new gunicorns (so no instance's "
            f"luck weighs on every run) and running bare Flask and a variant "
            f"alternately (bare, ours, bare, the core, bare, the hand-wired stack; the pairs "
            f"take turns going first): *requests/s* and latencies are medians over a variant's "
            f"runs, *% of bare* the median over its runs of its requests/s / those of the bare "
            f"run right before it. Ours: the fullest variant this build can run (the goal is "
            f"about it), and the core beside it. Multiprocess mode: `PROMETHEUS_MULTIPROC_DIR` "
            f"set, ours with `-c python:flask_gateway_obs.gunicorn`, prometheus-flask-exporter "
            f"with its gunicorn hook (`benchmarks/gunicorn_peer.py`).",
            "",
            *server_tables(report.servers),
        ]
    if report.worker_counts is not None:
        lines += _counts_section(
            report, "## 2b. Instructions per request in a gunicorn worker",
            "server-instructions", server_instructions.table,
            report.worker_counts, report.worker_sizes,
        )  # fmt: skip
    for key, title, body in (
        ("scrape", "## 3. Scrape and probe", report.scrape),
        ("resilience", "## 4. Resilience", report.resilience),
        ("ratelimit", "## 5. Rate limiting, storage by storage", report.ratelimit),
    ):
        if body is not None:
            lines += [title, "", *_load_note(report, key), "", body.rstrip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")


def raw(report: Report) -> dict[str, Any]:
    """The run's figures as JSON-friendly data (``RESULTS.json`` beside the report)."""
    data: dict[str, Any] = {"timing": report.timing}
    if report.inproc is not None:
        data["inproc"] = {
            r.variant.name: {
                "status": r.status,
                "per_round_us": r.per_round,
                "paired_bare_us": r.paired_bare,
                "pid_per_round": r.pids,
                "calls": r.calls,
                "info": r.info,
            }
            for r in report.inproc.results
        }
        if report.inproc.round_trips is not None:
            data["round_trips"] = dataclasses.asdict(report.inproc.round_trips)
    if report.counts is not None:
        data["instructions"] = {n: dataclasses.asdict(c) for n, c in report.counts.items()}
    if report.worker_counts is not None:
        data["server_instructions"] = {
            n: dataclasses.asdict(c) for n, c in report.worker_counts.items()
        }
    if report.servers is not None:
        data["server"] = [server.as_dict(r) for r in report.servers]

    def judged_dict(judged: goals.Judged | None) -> dict[str, Any] | None:
        return None if judged is None else {**dataclasses.asdict(judged), "met": judged.met}

    data["goals"] = [
        {
            "goal": row.goal,
            "time": judged_dict(row.time),
            "instructions": judged_dict(row.instructions),
        }
        for row in report.goals()
    ]
    return data
