"""The benchmark harness: ``python -m benchmarks.run [--quick]``, writes ``RESULTS.md``.

Sections:

1. In-process overhead. One long-lived process per variant drives its app
   through the WSGI callable; the variants take turns in short slices over
   many rounds (a fresh random order each round), with a bare Flask slice
   before the first and after each, so every slice is paired with bare slices
   a fraction of a second away and machine noise hits both alike. Per variant:
   median µs per request, the median of the paired differences to bare, the
   median ratio to bare, and Python function calls per request (cProfile),
   which noise does not move.
2. Under gunicorn (:mod:`benchmarks.server`).
3. Scrape and probe: ``benchmarks/scrape.py`` (``/metrics``) and
   :mod:`benchmarks.probe` (``/health``), when their features exist.
4. Resilience: ``benchmarks/resilience.py``, when it exists.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import random
import select
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import server
from benchmarks.variants import BY_NAME, VARIANTS, Variant, closed_port_dsn, unavailable_reason

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKDIR = HERE / ".work"

#: Default and ``--quick`` sizes: requests per slice, rounds, profiled requests,
#: requests per server run, server repetitions.
FULL = {"slice": 1000, "rounds": 30, "profile": 500, "requests": 6000, "repeats": 5}
QUICK = {"slice": 300, "rounds": 8, "profile": 100, "requests": 1500, "repeats": 2}

SECTIONS = ("inproc", "instructions", "server", "scrape", "resilience", "ratelimit")

PACKAGES = (
    "flask-gateway-obs",
    "Flask",
    "Werkzeug",
    "prometheus-client",
    "sentry-sdk",
    "Flask-Limiter",
    "limits",
    "pybreaker",
    "tenacity",
    "gunicorn",
    "prometheus-flask-exporter",
    "python-json-logger",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-flask",
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- one process per variant ------------------------------------------------------------


class WorkerProcess:
    """A :mod:`benchmarks.worker` process for one variant, spoken to in JSON lines."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.stderr_path = workdir / f"worker-{name}.log"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", name],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._buffer = b""

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def receive(self, timeout: float = 300.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited: {self.stderr_tail()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        self.send(command)
        return self.receive(timeout)

    def stderr_tail(self) -> str:
        self._stderr.flush()
        lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])[-400:] or "no output"

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.ask({"op": "quit"}, timeout=10)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


@dataclasses.dataclass
class InprocResult:
    """The figures of one variant in the in-process section."""

    variant: Variant
    status: str = ""  # "ok", or why it did not run
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    per_round: dict[int, float] = dataclasses.field(default_factory=dict)  # µs per request
    #: Per round, bare's µs per request in the slices right before and after this one.
    paired_bare: dict[int, float] = dataclasses.field(default_factory=dict)
    calls: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        value = values[0] if values else float("nan")
        return value, value
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


@dataclasses.dataclass
class Summary:
    median_us: float
    diff_us: float
    diff_q1: float
    diff_q3: float
    ratio: float
    rounds: int


def summarize(result: InprocResult, bare: InprocResult) -> Summary:
    """Median µs, paired difference to bare (median and quartiles), median ratio to bare."""
    reference = {**bare.per_round, **result.paired_bare}
    paired = [r for r in result.per_round if r in reference]
    diffs = [result.per_round[r] - reference[r] for r in paired]
    ratios = [result.per_round[r] / reference[r] for r in paired]
    q1, q3 = _quartiles(diffs)
    return Summary(
        _median(list(result.per_round.values())),
        _median(diffs),
        q1,
        q3,
        _median(ratios),
        len(paired),
    )


def run_inproc(
    names: Sequence[str],
    *,
    slice_size: int,
    rounds: int,
    profile: int,
    seed: int,
    workdir: Path = WORKDIR,
) -> list[InprocResult]:
    """Section 1: every variant in its own process, interleaved slices, then cProfile."""
    env = {**os.environ, "BENCH_SENTRY_DSN": closed_port_dsn(), "PYTHONHASHSEED": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    results = {name: InprocResult(BY_NAME[name]) for name in names}
    workers: dict[str, WorkerProcess] = {}
    try:
        for name in names:
            reason = unavailable_reason(BY_NAME[name])
            if reason is not None:
                results[name].status = f"unavailable: {reason}"
            else:
                workers[name] = WorkerProcess(name, env, workdir)
        for name, worker in list(workers.items()):
            try:
                answer = worker.receive(timeout=120)
            except Exception as exc:
                answer = {"error": str(exc)}
            if answer.get("ready"):
                results[name].status = "ok"
                results[name].info = answer
                if answer.get("status", "")[:3] != "200":
                    results[name].status = f"failed: answered {answer.get('status')}"
            elif "unavailable" in answer:
                results[name].status = f"unavailable: {answer['unavailable']}"
            else:
                error = answer.get("error")
                results[name].status = f"failed: {error} (see {worker.stderr_path})"
            if not results[name].ok:
                worker.close()
                del workers[name]
        rng = random.Random(seed)

        def timed_slice(name: str, round_no: int) -> float | None:
            """µs per request of one slice of ``name``; ``None`` if its worker failed."""
            if name not in workers:
                return None
            try:
                ns = workers[name].ask({"op": "run", "n": slice_size})["ns"]
            except Exception as exc:
                results[name].status = f"failed in round {round_no + 1}: {exc}"
                workers.pop(name).close()
                return None
            return float(ns) / slice_size / 1000.0

        for round_no in range(rounds):
            # bare, A, bare, B, ..., bare: each variant is paired with the bare slices
            # right before and after it, a fraction of a second apart.
            order = [name for name in workers if name != "bare"]
            rng.shuffle(order)
            previous = timed_slice("bare", round_no)
            bare_slices = [previous] if previous is not None else []
            for name in order:
                value = timed_slice(name, round_no)
                following = timed_slice("bare", round_no)
                if following is not None:
                    bare_slices.append(following)
                if value is None:
                    continue
                results[name].per_round[round_no] = value
                neighbours = [b for b in (previous, following) if b is not None]
                if neighbours:
                    results[name].paired_bare[round_no] = sum(neighbours) / len(neighbours)
                previous = following
            if bare_slices and "bare" in results:
                results["bare"].per_round[round_no] = statistics.median(bare_slices)
            if round_no % 5 == 4 or round_no == rounds - 1:
                log(f"in-process round {round_no + 1}/{rounds}")
        for name, worker in workers.items():
            try:
                results[name].calls = worker.ask({"op": "profile", "n": profile})["calls"]
            except Exception as exc:
                log(f"profile of {name} failed: {exc}")
    finally:
        for worker in workers.values():
            worker.close()
    return [results[name] for name in names]


# --- the other engineers' sections --------------------------------------------------------


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
            cells.append(_cell(str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        tail = _cell(" / ".join(out.stderr.strip().splitlines()[-3:]), 400)
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


# --- the report ---------------------------------------------------------------------------------


def _machine() -> list[tuple[str, str]]:
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


def _versions() -> str:
    parts = []
    for name in PACKAGES:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def _fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _cell(text: str, limit: int = 160) -> str:
    """``text`` fit for one Markdown table cell."""
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def inproc_table(results: list[InprocResult]) -> list[str]:
    bare = next((r for r in results if r.variant.name == "bare" and r.ok), None)
    lines = [
        "| variant | µs/request | + µs vs bare (paired; IQR) | x bare | calls/request "
        "| + calls | log lines |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    bare_calls = bare.calls if bare is not None else None
    for result in results:
        label = result.variant.label
        if result.variant.group == "ours":
            label = f"**{label}**"
        if not result.ok:
            lines.append(f"| {label} | {_cell(result.status)} | | | | | |")
            continue
        calls_diff = (
            result.calls - bare_calls
            if result.calls is not None and bare_calls is not None
            else None
        )
        if bare is None:
            lines.append(
                f"| {label} | {_fmt(_median(list(result.per_round.values())))} "
                f"| - | - | {_fmt(result.calls, 0)} | - | {result.info.get('log_lines')} |"
            )
            continue
        s = summarize(result, bare)
        diff = (
            "0"
            if result is bare
            else f"{_fmt(s.diff_us, sign=True)} ({_fmt(s.diff_q1, sign=True)} .. "
            f"{_fmt(s.diff_q3, sign=True)})"
        )
        lines.append(
            f"| {label} | {_fmt(s.median_us)} | {diff} | {_fmt(s.ratio, 2)} "
            f"| {_fmt(result.calls, 0)} | {_fmt(calls_diff, 0, sign=True)} "
            f"| {result.info.get('log_lines')} |"
        )
    return lines


def _ratio_of(results: list[InprocResult], name: str) -> float | None:
    bare = next((r for r in results if r.variant.name == "bare" and r.ok), None)
    found = next((r for r in results if r.variant.name == name and r.ok), None)
    if bare is None or found is None:
        return None
    return summarize(found, bare).ratio


def _diff_of(results: list[InprocResult], name: str) -> float | None:
    bare = next((r for r in results if r.variant.name == "bare" and r.ok), None)
    found = next((r for r in results if r.variant.name == name and r.ok), None)
    if bare is None or found is None:
        return None
    return summarize(found, bare).diff_us


def _added_over(results: list[InprocResult], name: str, base: str) -> float | None:
    """Median over rounds of what ``name`` adds over ``base`` (both paired with bare)."""
    bare = next((r for r in results if r.variant.name == "bare" and r.ok), None)
    found = next((r for r in results if r.variant.name == name and r.ok), None)
    under = next((r for r in results if r.variant.name == base and r.ok), None)
    if bare is None or found is None or under is None:
        return None

    def diffs(result: InprocResult) -> dict[int, float]:
        reference = {**bare.per_round, **result.paired_bare}
        return {r: v - reference[r] for r, v in result.per_round.items() if r in reference}

    over, below = diffs(found), diffs(under)
    added = [over[r] - below[r] for r in over if r in below]
    return _median(added) if added else None


def goals_table(inproc: list[InprocResult], servers: list[server.ServerResult]) -> list[str]:
    """The issue's goals next to what this run measured."""
    rows: list[tuple[str, str, str]] = []

    def verdict(value: float | None, limit: float, higher_is_better: bool = False) -> str:
        if value is None:
            return "not measured"
        met = value >= limit if higher_is_better else value <= limit
        return "met" if met else "**missed**"

    core = _ratio_of(inproc, "ours-core")
    stack = _ratio_of(inproc, "peer-stack")
    everything = _ratio_of(inproc, "ours-all")
    rows.append(("ours, core ≤ 1.4 x bare", _fmt(core, 2), verdict(core, 1.4)))
    rows.append(
        (
            "ours, everything on ≤ 2.0 x bare",
            f"{_fmt(everything, 2)} (hand-wired stack {_fmt(stack, 2)})",
            verdict(everything, 2.0),
        )
    )
    ours_metrics = _diff_of(inproc, "ours-metrics")
    pfe = _diff_of(inproc, "peer-prometheus")
    share = ours_metrics / pfe if ours_metrics is not None and pfe else None
    rows.append(
        (
            "metrics alone < ½ of prometheus-flask-exporter's cost",
            f"{_fmt(ours_metrics, sign=True)} µs vs {_fmt(pfe, sign=True)} µs ({_fmt(share, 2)})",
            verdict(share, 0.5),
        )
    )
    otel = _diff_of(inproc, "peer-otel")
    traced = _added_over(inproc, "ours-tracing", "ours-core")
    share = traced / otel if traced is not None and otel else None
    rows.append(
        (
            "sampled tracing adds ≤ ¼ of what opentelemetry-instrumentation-flask adds",
            f"{_fmt(traced, sign=True)} µs vs {_fmt(otel, sign=True)} µs ({_fmt(share, 2)})",
            verdict(share, 0.25),
        )
    )
    quiet = _added_over(inproc, "ours-tracing-unsampled", "ours-core")
    rows.append(
        (
            "unsampled tracing adds ≤ 3 µs over core",
            f"{_fmt(quiet, sign=True)} µs",
            verdict(quiet, 3.0),
        )
    )
    for mode in server.MODES:
        if servers and not any(r.mode.name == mode.name for r in servers):
            continue  # not run this time
        in_mode = [r for r in servers if r.mode.name == mode.name and r.error is None and r.runs]
        bare = next((r for r in in_mode if r.variant == "bare"), None)
        ours = next((r for r in in_mode if r.variant.startswith("ours")), None)  # the fullest
        share = ours.rps / bare.rps if bare and ours and bare.rps else None
        label = ours.label if ours is not None else "ours"
        rows.append(
            (
                f"gunicorn {mode.label}: {label} ≥ 75 % of bare throughput",
                f"{_fmt(share * 100 if share is not None else None, 0)} %",
                verdict(share, 0.75, higher_is_better=True),
            )
        )
    lines = ["| goal | measured | verdict |", "|---|---:|---|"]
    lines += [f"| {goal} | {value} | {result} |" for goal, value, result in rows]
    return lines


def server_tables(results: list[server.ServerResult], requests: int, repeats: int) -> list[str]:
    lines: list[str] = []
    for mode in server.MODES:
        in_mode = [r for r in results if r.mode.name == mode.name]
        if not in_mode:
            continue
        bare = next((r for r in in_mode if r.variant == "bare" and r.runs), None)
        lines += [
            f"**{mode.label}** ({mode.connections} connections)",
            "",
            "| variant | requests/s | % of bare | p50 ms | p99 ms | failed |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for result in in_mode:
            if result.error is not None and not result.runs:
                lines.append(f"| {result.label} | {_cell(result.error)} | | | | |")
                continue
            share = result.rps / bare.rps * 100 if bare and bare.rps else None
            lines.append(
                f"| {result.label} | {result.rps:.0f} | {_fmt(share, 0)} "
                f"| {result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.failures} |"
            )
        lines.append("")
    return lines


def write_report(
    path: Path,
    *,
    argv: Sequence[str],
    quick: bool,
    sizes: dict[str, int],
    started: float,
    load_before: tuple[float, float, float],
    inproc: list[InprocResult] | None,
    servers: list[server.ServerResult] | None,
    scrape: str | None,
    resilience: str | None,
    ratelimit: str | None = None,
    instructions: str | None = None,
) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    load_after = os.getloadavg()
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in argv)
    lines = [
        "# Benchmark results",
        "",
        f"Written by `benchmarks/run.py` on {now:%Y-%m-%d %H:%M} UTC"
        f"{' (a --quick run: few rounds, indicative only)' if quick else ''}; "
        f"took {time.monotonic() - started:.0f} s.",
        "",
        f"- command: `{command.strip()}` (`make bench` runs it in `.venv`)",
    ]
    lines += [f"- {name}: {value}" for name, value in _machine()]
    lines += [
        f"- load average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        "(other work on the machine shows here; the paired figures are meant to survive it)",
        f"- versions: {_versions()}",
        "",
    ]
    if inproc is not None:
        lines += [
            "## 1. In-process overhead (no server, no network)",
            "",
            f"Each variant runs in its own long-lived process and is driven through its WSGI "
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
            *inproc_table(inproc),
            "",
        ]
        for result in inproc:
            if result.ok and result.variant.description:
                lines.append(f"- {result.variant.label}: {result.variant.description}")
        lines.append("")
    if instructions is not None:
        lines += ["## 1b. Instructions per request", "", instructions.rstrip(), ""]
    if servers is not None:
        lines += [
            "## 2. Under gunicorn",
            "",
            f"gunicorn on 127.0.0.1, load from {server.client_version()} with one thread on the "
            f"same 2 cores, {sizes['requests']} requests per run after a warm-up, "
            f"{sizes['repeats']} run(s) per variant taking turns; medians. For ours, the "
            f"fullest variant this build can run, and the core beside it. Multiprocess mode: "
            f"`PROMETHEUS_MULTIPROC_DIR` set, ours with `-c python:flask_gateway_obs.gunicorn`, "
            f"prometheus-flask-exporter with its gunicorn hook (`benchmarks/gunicorn_peer.py`).",
            "",
            *server_tables(servers, sizes["requests"], sizes["repeats"]),
        ]
    if inproc is not None or servers is not None:
        lines += [
            "## Goals",
            "",
            *goals_table(inproc or [], servers or []),
            "",
        ]
    if scrape is not None:
        lines += ["## 3. Scrape and probe", "", scrape.rstrip(), ""]
    if resilience is not None:
        lines += ["## 4. Resilience", "", resilience.rstrip(), ""]
    if ratelimit is not None:
        lines += ["## 5. Rate limiting, storage by storage", "", ratelimit.rstrip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")


def _raw_dump(path: Path, inproc: list[InprocResult] | None, servers: Any) -> None:
    data: dict[str, Any] = {}
    if inproc is not None:
        data["inproc"] = {
            r.variant.name: {
                "status": r.status,
                "per_round_us": r.per_round,
                "paired_bare_us": r.paired_bare,
                "calls": r.calls,
                "info": r.info,
            }
            for r in inproc
        }
    if servers is not None:
        data["server"] = [server.as_dict(r) for r in servers]
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Per-request cost of flask-gateway-obs against bare Flask and its peers.",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (under 2 minutes)")
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
    parser.add_argument("--profile", type=int, help="requests profiled per variant")
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

    started = time.monotonic()
    load_before = os.getloadavg()
    inproc = servers = scrape = resilience = ratelimit = None
    if "inproc" in sections:
        log(f"in-process: {len(names)} variants, {sizes['rounds']} x {sizes['slice']} requests")
        inproc = run_inproc(
            names,
            slice_size=sizes["slice"],
            rounds=sizes["rounds"],
            profile=sizes["profile"],
            seed=args.seed,
            workdir=workdir,
        )
    instructions = None
    if "instructions" in sections:
        log("instructions per request under callgrind")
        instr_args = ["--quick"] if args.quick else []
        if args.variants:
            instr_args.append(f"--variants={','.join(names)}")
        instructions = run_script("instructions", instr_args, timeout=3600)
    if "server" in sections:
        log(f"gunicorn: {sizes['requests']} requests x {sizes['repeats']} per variant and mode")
        servers = server.run_servers(
            requests=sizes["requests"],
            repeats=sizes["repeats"],
            workdir=workdir,
            modes=modes,
            progress=log,
        )
    if "scrape" in sections:
        log("scrape and probe")
        runs = ["--runs", "5" if args.quick else "20"]
        parts = [run_script("scrape", runs, timeout=300)]
        parts.append(run_script("probe", ["--quick"] if args.quick else [], timeout=120))
        scrape = "\n".join(parts)
    if "resilience" in sections:
        log("resilience")
        resilience = run_script("resilience", ["--quick"] if args.quick else [], timeout=180)
    if "ratelimit" in sections:
        log("rate limiting")
        ratelimit = run_script("ratelimit", ["--quick"] if args.quick else [], timeout=240)
    write_report(
        output,
        argv=argv,
        quick=args.quick,
        sizes=sizes,
        started=started,
        load_before=load_before,
        inproc=inproc,
        instructions=instructions,
        servers=servers,
        scrape=scrape,
        resilience=resilience,
        ratelimit=ratelimit,
    )
    _raw_dump(workdir / f"{output.stem}.json", inproc, servers)
    log(f"wrote {output} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
