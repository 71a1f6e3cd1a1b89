"""Under a real server: gunicorn on loopback, a fixed number of requests, throughput and latency.

For each server mode and each repetition, one gunicorn per variant is started and warmed
up (new ones every repetition, so no instance's luck weighs on every run), then bare Flask
and a variant run alternately (bare, ours, bare, the core, bare, the hand-wired stack), a
fixed number of requests each from ``wrk`` (one thread, so most of the second core is left
to the server) or, without wrk, from :mod:`benchmarks.loadgen`.
Every run of a variant is paired with the bare run right before it: *% of bare* is the
median over the repetitions of those paired ratios, requests/s and latencies are medians.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.variants import BY_NAME, REQUEST_HEADERS, REQUEST_PATH, unavailable_reason

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "fixed_count.lua"


@dataclasses.dataclass(frozen=True)
class Mode:
    """One gunicorn set-up."""

    name: str
    label: str
    workers: int
    worker_class: str
    threads: int
    connections: int
    multiprocess: bool = False
    #: Judged against the throughput goal; otherwise shown for information only.
    goal: bool = True
    #: What the reader should know about this mode's figures.
    note: str = ""


MODES = (
    Mode("sync-2", "2 workers, sync", 2, "sync", 1, 4),
    Mode("sync-4-mp", "4 workers, sync, multiprocess metrics", 4, "sync", 1, 8, multiprocess=True),
    Mode(
        "gthread-2",
        "2 workers, gthread x 4 threads, keep-alive (information, not a goal)",
        2,
        "gthread",
        4,
        16,
        goal=False,
        note="Not a steady figure on 2 cores shared with the load generator: each keep-alive "
        "connection stays with the worker that accepted it, so how the 16 connections split "
        "over the 2 workers moves throughput from run to run more than the app does (see the "
        "runs' range); ours can even come out above bare.",
    ),
)

#: Ours under a server: the fullest variant this build can run.
OURS_PREFERENCE = ("ours-all", "ours-core", "ours-log")


@dataclasses.dataclass
class LoadResult:
    requests: int
    elapsed_s: float
    bad_status: int
    socket_errors: int
    p50_us: float
    p99_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclasses.dataclass
class ServerResult:
    """The figures of one variant in one mode (medians over the repetitions)."""

    mode: Mode
    variant: str
    label: str
    runs: list[LoadResult] = dataclasses.field(default_factory=list)
    #: Requests/s of the bare run right before each of ``runs`` (None: it failed).
    paired_bare: list[float | None] = dataclasses.field(default_factory=list)
    #: The gunicorn (its master's process id) that served each of ``runs``.
    servers: list[int] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def rps(self) -> float:
        return statistics.median(run.rps for run in self.runs) if self.runs else 0.0

    @property
    def share(self) -> float | None:
        """Median over the runs of requests/s / the paired bare run's (None if none paired)."""
        if not self.paired_bare:  # bare itself, or no run finished
            return None
        pairs = zip(self.runs, self.paired_bare, strict=True)
        ratios = [run.rps / bare for run, bare in pairs if bare and run.rps]
        return statistics.median(ratios) if ratios else None

    @property
    def rps_range(self) -> tuple[float, float]:
        values = [run.rps for run in self.runs] or [0.0]
        return min(values), max(values)

    @property
    def p50_ms(self) -> float:
        return statistics.median(run.p50_us for run in self.runs) / 1000 if self.runs else 0.0

    @property
    def p99_ms(self) -> float:
        return statistics.median(run.p99_us for run in self.runs) / 1000 if self.runs else 0.0

    @property
    def failures(self) -> int:
        return sum(run.bad_status + run.socket_errors for run in self.runs)


def load_client() -> str:
    """``wrk`` when it is installed, else the Python client (``BENCH_LOAD_CLIENT`` forces one)."""
    forced = os.environ.get("BENCH_LOAD_CLIENT")
    if forced in ("wrk", "python"):
        return forced
    return "wrk" if shutil.which("wrk") else "python"


def client_version() -> str:
    if load_client() == "python":
        return "the Python client benchmarks/loadgen.py"
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _load(url: str, requests: int, connections: int) -> LoadResult:
    if load_client() == "wrk":
        headers: list[str] = []
        for name, value in REQUEST_HEADERS.items():
            headers += ["-H", f"{name}: {value}"]
        command = [
            "wrk", "-t1", f"-c{connections}", "-d300s", "--timeout", "10s",
            *headers, "-s", str(LUA), url,
        ]  # fmt: skip
        env = {**os.environ, "BENCH_REQUESTS": str(requests)}
    else:
        command = [
            sys.executable, "-m", "benchmarks.loadgen", url,
            "--requests", str(requests), "--connections", str(connections),
        ]  # fmt: skip
        env = dict(os.environ)
    out = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"load client gave no figures: {out.stderr.strip()[-300:]}")
    data = json.loads(lines[-1])
    if data["elapsed_s"] <= 0 or data["requests"] < requests:
        raise RuntimeError(f"load client did not finish {requests} requests: {data}")
    return LoadResult(
        int(data["requests"]),
        float(data["elapsed_s"]),
        int(data["bad_status"]),
        int(data["socket_errors"]),
        float(data["p50_us"]),
        float(data["p99_us"]),
    )


class Gunicorn:
    """One gunicorn serving one variant on a free loopback port."""

    def __init__(self, mode: Mode, variant: str, workdir: Path) -> None:
        self.mode, self.variant = mode, variant
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}{REQUEST_PATH}"
        self.log = workdir / f"gunicorn-{mode.name}-{variant}.log"
        self.mp_dir: str | None = None
        env = {**os.environ, "BENCH_VARIANT": variant}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.pop("prometheus_multiproc_dir", None)
        command = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(mode.workers),
            "--worker-class", mode.worker_class,
            "--threads", str(mode.threads),
            "--chdir", str(ROOT),
            "--log-level", "warning",
            "--error-logfile", str(self.log),
        ]  # fmt: skip
        if mode.multiprocess:
            self.mp_dir = tempfile.mkdtemp(prefix=f"mp-{variant}-", dir=workdir)
            env["PROMETHEUS_MULTIPROC_DIR"] = self.mp_dir
            if variant == "peer-stack":
                command += ["-c", "python:benchmarks.gunicorn_peer"]
            elif variant.startswith("ours"):
                command += ["-c", "python:flask_gateway_obs.gunicorn"]
        command.append("benchmarks.wsgi:app")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.proc.returncode}): {self._tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready within {timeout:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        # The exception line of a worker's traceback says more than gunicorn's own lines.
        raised = [line for line in lines if line and not line.startswith(("[", " "))]
        return (raised or lines or ["empty log"])[-1][-300:] + f" (see {self.log.name})"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.mp_dir is not None:
            shutil.rmtree(self.mp_dir, ignore_errors=True)


def server_variants(mode: Mode) -> list[tuple[str, str | None]]:
    """``(variant, reason it can't run or None)``: bare, ours, the hand-wired stack.

    Ours is the fullest variant this build can run (the one the goal is about), and the
    core beside it when that is "everything on".
    """
    chosen: list[tuple[str, str | None]] = [("bare", None)]
    ours = next(
        (name for name in OURS_PREFERENCE if unavailable_reason(BY_NAME[name]) is None),
        "ours-log",
    )
    names = [ours]
    if ours == "ours-all" and unavailable_reason(BY_NAME["ours-core"]) is None:
        names.append("ours-core")  # what everything on costs beyond the core
    for name in names:
        reason = unavailable_reason(BY_NAME[name])
        if mode.multiprocess and reason is None:
            if not (ROOT / "flask_gateway_obs" / "gunicorn.py").exists():
                reason = "flask_gateway_obs.gunicorn is not in this build yet"
            elif name == "ours-log":
                reason = "metrics are not in this build yet"
        chosen.append((name, reason))
    chosen.append(("peer-stack", unavailable_reason(BY_NAME["peer-stack"])))
    return chosen


def run_servers(
    *,
    requests: int,
    repeats: int,
    workdir: Path,
    modes: tuple[Mode, ...] = MODES,
    only: set[str] | None = None,
    progress: Callable[[str], None] = print,
) -> list[ServerResult]:
    """Run every mode; a result per (mode, variant), failures recorded, never raised."""
    results: list[ServerResult] = []
    for mode in modes:
        results += _run_mode(mode, requests, repeats, workdir, only, progress)
    return results


def _run_mode(
    mode: Mode,
    requests: int,
    repeats: int,
    workdir: Path,
    only: set[str] | None,
    progress: Callable[[str], None],
) -> list[ServerResult]:
    servers: dict[str, Gunicorn] = {}
    results: dict[str, ServerResult] = {}

    def timed_run(name: str, rep: int) -> float | None:
        """One run of ``name``: its requests/s, or None (failed, error recorded)."""
        result = results[name]
        if result.error is not None or name not in servers:
            return None
        progress(f"server {mode.name} {name} run {rep + 1}/{repeats}")
        try:
            load = _load(servers[name].url, requests, mode.connections)
        except Exception as exc:
            result.error = str(exc)
            return None
        result.runs.append(load)
        result.servers.append(servers[name].proc.pid)
        return load.rps

    names: list[str] = []
    for name, reason in server_variants(mode):
        if only is not None and name not in only:
            continue
        results[name] = ServerResult(mode, name, BY_NAME[name].label, error=reason)
        if reason is None:
            names.append(name)
    for rep in range(repeats):
        # New servers every repetition: two gunicorns of the same app differ by up to a
        # fifth in CPU per request (where their workers' memory landed), so one instance
        # kept for all repetitions would carry its luck into every run.
        try:
            for name in names:
                if results[name].error is None:
                    servers[name] = Gunicorn(mode, name, workdir)
            for name, server in list(servers.items()):
                try:
                    server.wait_ready()
                    _load(server.url, max(200, requests // 10), mode.connections)  # warm-up
                except Exception as exc:
                    results[name].error = str(exc)
                    server.stop()
                    del servers[name]
            others = [name for name in servers if name != "bare"]
            # bare, A, bare, B, ...: each run is paired with the bare run right before it;
            # the pairs take turns going first from one repetition to the next.
            shift = rep % len(others) if others else 0
            turn = others[shift:] + others[:shift]
            if not turn:
                timed_run("bare", rep)
            for name in turn:
                before = timed_run("bare", rep) if "bare" in results else None
                if timed_run(name, rep) is not None:
                    results[name].paired_bare.append(before)
        finally:
            for server in servers.values():
                server.stop()
            servers.clear()
    return list(results.values())


def as_dict(result: ServerResult) -> dict[str, Any]:
    """A JSON-friendly summary (for the raw figures file)."""
    return {
        "mode": result.mode.name,
        "variant": result.variant,
        "error": result.error,
        "rps": result.rps,
        "share_of_bare": result.share,
        "paired_bare_rps": result.paired_bare,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "failures": result.failures,
        "runs": [dataclasses.asdict(run) for run in result.runs],
        "server_pids": result.servers,
    }
