"""Real gunicorn with several workers: /metrics of any worker reports the exact total."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from .conftest import free_port

pytestmark = pytest.mark.slow

APP = textwrap.dedent(
    """
    import os
    import time

    from flask import Flask, request

    from flask_gateway_obs import GatewayObs

    app = Flask("gunicorn_gateway")
    app.config.update(
        GATEWAY_OBS_LOG_ACCESS=False,
        GATEWAY_OBS_HEALTH_CHECK_DISK=False,
        GATEWAY_OBS_HEALTH_CHECK_MEMORY=False,
    )
    GatewayObs(app)


    @app.get("/work")
    def work():
        time.sleep(float(request.args.get("sleep", "0")))
        return {"pid": os.getpid()}
    """
)


class Gunicorn:
    """A gunicorn master started with our config module; stopped with SIGTERM."""

    def __init__(self, workdir: str, multiproc_dir: str | None, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        if multiproc_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
        env["PYTHONPATH"] = workdir
        self.log = open(os.path.join(workdir, f"gunicorn-{self.port}.log"), "w+b")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "python:flask_gateway_obs.gunicorn",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--graceful-timeout",
                "5",
                *args,
                "gw_app:app",
            ],
            cwd=workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("gunicorn exited:\n" + self.output())
            try:
                self.get("/health/live")
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("gunicorn did not answer:\n" + self.output())

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return bytes(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


@pytest.fixture
def workdir(tmp_path: Any) -> str:
    (tmp_path / "gw_app.py").write_text(APP)
    return str(tmp_path)


@pytest.fixture
def start(workdir: str) -> Iterator[Callable[..., Gunicorn]]:
    """Start gunicorn: ``start(multiproc_dir, *args)``; every server is stopped at the end."""
    servers: list[Gunicorn] = []

    def starter(multiproc_dir: str | None, *args: str) -> Gunicorn:
        server = Gunicorn(workdir, multiproc_dir, *args)
        servers.append(server)
        return server

    yield starter
    for server in servers:
        server.stop()


def scrape(server: Gunicorn) -> dict[str, float]:
    """The total of each sample name of one scrape (over all label sets)."""
    totals: dict[str, float] = {}
    text = server.get("/metrics").decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("route", "/work") == "/work":
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def hit(server: Gunicorn, count: int, sleep: float = 0.0, threads: int = 1) -> set[int]:
    """Send ``count`` requests to /work; the worker pids that answered."""

    def one(_: int) -> int:
        return int(server.get(f"/work?sleep={sleep}").split(b'"pid":')[1].strip(b" }\n"))

    with ThreadPoolExecutor(threads) as pool:
        return set(pool.map(one, range(count)))


def test_every_worker_reports_the_total(start: Callable[..., Gunicorn], tmp_path: Any) -> None:
    """3 workers, a directory that does not exist yet: each scrape reports exactly N."""
    metrics_dir = str(tmp_path / "not-yet" / "prom")
    server = start(metrics_dir, "--workers", "3")
    server.wait_ready()
    pids = hit(server, 60, sleep=0.02, threads=6)
    assert len(pids) >= 2, "requests did not spread over the workers"
    for _ in range(12):
        totals = scrape(server)
        assert totals["http_requests_total"] == 60
        assert totals["http_request_duration_seconds_count"] == 60
        assert totals["active_connections"] == 0
    assert os.path.isdir(metrics_dir)


def test_totals_survive_recycled_workers(start: Callable[..., Gunicorn], tmp_path: Any) -> None:
    """--max-requests recycles workers; counters stay exact and dead workers' gauges go."""
    metrics_dir = str(tmp_path / "prom")
    server = start(metrics_dir, "--workers", "3", "--max-requests", "5")
    server.wait_ready()
    hit(server, 50)
    counter_pids = {
        re.findall(r"\d+", os.path.basename(p))[0] for p in glob.glob(f"{metrics_dir}/counter_*.db")
    }
    assert len(counter_pids) > 3, "no worker was recycled"
    deadline = time.monotonic() + 10
    while len(glob.glob(f"{metrics_dir}/gauge_livesum_*.db")) > 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # child_exit runs when the master reaps the worker
    assert len(glob.glob(f"{metrics_dir}/gauge_livesum_*.db")) <= 3
    for _ in range(6):
        totals = scrape(server)
        assert totals["http_requests_total"] == 50
        assert totals["http_request_duration_seconds_count"] == 50
        assert totals["active_connections"] == 0


def test_stale_files_are_cleared_at_start(start: Callable[..., Gunicorn], tmp_path: Any) -> None:
    """Files of an earlier run are removed by on_starting: counts start from zero."""
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    stale = MmapedDict(str(metrics_dir / "counter_999999.db"))
    key = mmap_key(
        "http_requests",
        "http_requests_total",
        ["method", "route", "status"],
        ["GET", "/work", "200"],
        "HTTP requests served, by method, route template and status code.",
    )
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    (metrics_dir / "notes.txt").write_text("not ours")
    server = start(str(metrics_dir), "--workers", "2")
    server.wait_ready()
    hit(server, 5)
    assert scrape(server)["http_requests_total"] == 5
    assert not (metrics_dir / "counter_999999.db").exists()
    assert (metrics_dir / "notes.txt").exists()
    assert "removed 1 stale metric files" in server.output()


def test_missing_variable_with_workers_is_a_loud_warning(
    start: Callable[..., Gunicorn],
) -> None:
    """Several workers without PROMETHEUS_MULTIPROC_DIR: gunicorn warns at start."""
    server = start(None, "--workers", "2")
    server.wait_ready()
    assert "PROMETHEUS_MULTIPROC_DIR is not set" in server.output()
    assert "ONE worker" in server.output()


def test_unusable_directory_stops_the_workers_loudly(
    start: Callable[..., Gunicorn], tmp_path: Any
) -> None:
    """A directory that cannot be created: a warning, then workers refuse to boot."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    server = start(str(blocker / "prom"), "--workers", "2")
    assert server.process.wait(timeout=60) != 0
    output = server.output()
    assert "is not a writable directory" in output
    assert "metrics cannot be shared between workers" in output


def test_hooks_leave_a_single_worker_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker without the variable: no warning; child_exit without it is a no-op."""
    from flask_gateway_obs import gunicorn as hooks

    class Log:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def warning(self, msg: str, *args: Any) -> None:
            self.lines.append(msg % args)

        info = warning

    class Config:
        workers = 1

    class Server:
        log = Log()
        cfg = Config()

    class Worker:
        pid = 12345

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    hooks.on_starting(Server)
    hooks.child_exit(Server, Worker)
    assert Server.log.lines == []
