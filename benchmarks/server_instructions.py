"""Instructions per request inside a gunicorn worker, under ``valgrind --tool=callgrind``.

The throughput goal (:mod:`benchmarks.server`) is timed on two cores shared with the load
generator, where two gunicorns of the same code can differ by a fifth. This counts what the
timing cannot see steadily: one gunicorn (one sync worker) per variant runs under callgrind,
uninstrumented through start-up and a warm-up (several times faster); then the worker is
instrumented, its counters zeroed, ``small`` requests are sent one at a time, the counters
dumped, then the same with ``large`` requests (``callgrind_control -i on``, ``-z`` and ``-d``).
Instructions per request = (large dump - small dump) / (large - small): gunicorn's own
parsing, its header checks and the socket calls included, so the ratio to bare is the
throughput a worker bound by its CPU could keep (1 / ratio) before any cache effect.

``python -m benchmarks.server_instructions [--quick] [--variants a,b] [--small N] [--large N]``
prints a Markdown table (``--json`` for the raw figures).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.instructions import Count, add_arguments, chosen, show
from benchmarks.variants import REQUEST_HEADERS, REQUEST_PATH

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VARIANTS = ("bare", "ours-core", "ours-all", "ours-all-no-limit-headers")
QUICK_VARIANTS = ("bare", "ours-all")
FULL = {"small": 200, "large": 1400}
QUICK = {"small": 30, "large": 130}
WARM_UP = 200
_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, timeout: float = 60.0) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", REQUEST_PATH, headers=REQUEST_HEADERS)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


class _Worker:
    """One gunicorn with one sync worker, under callgrind."""

    def __init__(self, variant: str, valgrind: str, workdir: Path) -> None:
        self.variant = variant
        self.port = _free_port()
        self.out = workdir / variant
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob("callgrind.*"):
            stale.unlink()
        env = {**os.environ, "BENCH_VARIANT": variant, "PYTHONHASHSEED": "0"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.pop("prometheus_multiproc_dir", None)
        command = [
            valgrind, "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no",
            "--dump-instr=no", "--compress-strings=no",
            f"--callgrind-out-file={self.out}/callgrind.%p",
            sys.executable, "-m", "gunicorn",
            "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--worker-class", "sync",
            "--timeout", "0", "--chdir", str(ROOT), "--log-level", "warning",
            "benchmarks.wsgi:app",
        ]  # fmt: skip
        self.log = (workdir / f"{variant}.log").open("w")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log
        )
        self.worker = 0

    def ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if _get(self.port, timeout=30) == 200:
                    break
                raise RuntimeError(f"{self.variant} did not answer 200 under gunicorn")
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"gunicorn under callgrind not ready within {timeout:.0f} s")
        workers = _children(self.proc.pid)
        if len(workers) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {workers}")
        self.worker = workers[0]

    def _control(self, flag: str) -> None:
        subprocess.run(
            ["callgrind_control", flag, str(self.worker)],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip

    def instrument(self) -> None:
        """Start counting: start-up and warm-up ran uninstrumented (several times faster)."""
        self._control("--instr=on")

    def count(self, requests: int) -> int:
        """Instructions the worker ran serving ``requests`` requests (and its idle loop)."""
        before = set(self.out.glob(f"callgrind.{self.worker}.*"))
        self._control("-z")
        for _ in range(requests):
            status = _get(self.port)
            if status != 200:
                raise RuntimeError(f"{self.variant} answered {status} under gunicorn")
        self._control("-d")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for path in set(self.out.glob(f"callgrind.{self.worker}.*")) - before:
                found = _TOTALS.search(path.read_text(errors="replace"))
                if found is not None:
                    return int(found.group(1))
            time.sleep(0.2)
        raise RuntimeError(f"{self.variant}: callgrind wrote no dump")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def count_one(variant: str, small: int, large: int, workdir: Path, valgrind: str) -> Count:
    """Instructions per request of ``variant`` in one gunicorn worker."""
    worker = _Worker(variant, valgrind, workdir)
    try:
        worker.ready(timeout=300)
        for _ in range(WARM_UP):
            _get(worker.port)
        worker.instrument()
        low = worker.count(small)
        high = worker.count(large)
        return Count(variant, per_request=(high - low) / (large - small))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return Count(variant, error=str(exc)[:300])
    finally:
        worker.stop()


def measure(
    names: Sequence[str],
    small: int,
    large: int,
    workdir: Path | None = None,
    parallel: int = 2,
) -> list[Count]:
    """Instructions per request of each variant in a gunicorn worker (``parallel`` gunicorns
    at a time: instruction counts do not depend on how busy the machine is)."""
    if large <= small:
        raise ValueError("large must be more requests than small")
    valgrind = shutil.which("valgrind")
    if valgrind is None or shutil.which("callgrind_control") is None:
        return [Count(n, error="valgrind is not installed") for n in names]
    with tempfile.TemporaryDirectory() as tmp:
        where = workdir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            return list(pool.map(lambda n: count_one(n, small, large, where, valgrind), names))


def table(counts: Sequence[Count], small: int, large: int) -> str:
    """The Markdown table: instructions per request, x bare, and what that leaves of
    bare's throughput for a worker bound by its CPU."""
    bare = next((c.per_request for c in counts if c.name == "bare"), None)
    lines = [
        f"Instructions per request inside one gunicorn sync worker under callgrind: "
        f"{WARM_UP} requests of warm-up, then the worker's counts over {small} and over "
        f"{large} requests (one at a time), difference / difference of requests. "
        "*Throughput bound*: 1 / (x bare), the share of bare's throughput a worker bound "
        "by its CPU keeps if time follows instructions (cache misses and kernel time come "
        "on top).",
        "",
        "| variant | instructions/request | x bare | + vs bare | throughput bound |",
        "|---|---:|---:|---:|---:|",
    ]
    for count in counts:
        if count.per_request is None:
            lines.append(f"| {count.name} | - ({count.error}) | | | |")
            continue
        if bare:
            ratio = count.per_request / bare
            cells = f"{ratio:.3f} | {count.per_request - bare:+,.0f} | {100 / ratio:.0f} %"
        else:
            cells = "- | - | -"
        lines.append(f"| {count.name} | {count.per_request:,.0f} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_instructions")
    add_arguments(parser, "two variants, few requests")
    args = parser.parse_args(argv)
    sizes, names = chosen(args, (FULL, QUICK), (DEFAULT_VARIANTS, QUICK_VARIANTS))
    counts = measure(names, sizes["small"], sizes["large"])
    show(counts, args.json, table(counts, sizes["small"], sizes["large"]))
    return 0 if all(c.per_request is not None for c in counts) else 1


if __name__ == "__main__":
    sys.exit(main())
