"""Real gunicorn with several workers: /metrics of any worker reports the exact total,
with the answering worker's exemplars in OpenMetrics."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from ..gunicorn_server import Gunicorn
from .helpers import OPENMETRICS, promtool_check, promtool_check_openmetrics

pytestmark = pytest.mark.slow

APP = textwrap.dedent(
    """
    import os
    import time

    from flask import Flask, request

    from flask_gateway_obs import GatewayObs

    HERE = os.path.dirname(os.path.abspath(__file__))
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


    @app.get("/gather")
    def gather():
        # Answers once n requests are being served at the same time. A sync worker
        # serves one request at a time, so n answers come from n different workers.
        arrivals = os.path.join(HERE, "arrivals")
        os.makedirs(arrivals, exist_ok=True)
        open(os.path.join(arrivals, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 30
        while len(os.listdir(arrivals)) < int(request.args["n"]):
            if time.monotonic() > deadline:
                return {"pid": os.getpid(), "gathered": False}, 500
            time.sleep(0.01)
        return {"pid": os.getpid()}


    @app.get("/hang")
    def hang():
        # Leaves a breaker state and a health result in this worker, then never answers.
        recorder = app.extensions["gateway_obs"].recorder
        recorder.breaker_state("doomed", 1)
        recorder.health_check("doomed", "unhealthy")
        open(os.path.join(HERE, f"hanging-{os.getpid()}"), "w").close()
        time.sleep(120)
        return {"pid": os.getpid()}
    """
)


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
    """The total of each sample name of one scrape (over the app's routes and no route)."""
    totals: dict[str, float] = {}
    text = server.get("/metrics").decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("route", "/work") in ("/work", "/gather"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def series(server: Gunicorn) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every (sample name, labels) of one scrape."""
    text = server.get("/metrics").decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def hit(server: Gunicorn, count: int, sleep: float = 0.0, threads: int = 1) -> set[int]:
    """Send ``count`` requests to /work; the worker pids that answered."""

    def one(_: int) -> int:
        return int(server.get(f"/work?sleep={sleep}").split(b'"pid":')[1].strip(b" }\n"))

    with ThreadPoolExecutor(threads) as pool:
        return set(pool.map(one, range(count)))


def traceparent(index: int) -> str:
    """A sampled W3C traceparent whose trace ID is made of ``index``."""
    return f"00-{index + 1:032x}-00f067aa0ba902b7-01"


def gather(server: Gunicorn, workers: int, traced: bool = False) -> set[int]:
    """One request per worker at the same time (see /gather); the pids that answered.

    :param traced: send each request with its own sampled ``traceparent(i)``.
    """

    def one(index: int) -> int:
        headers = {"traceparent": traceparent(index)} if traced else None
        return int(json.loads(server.get(f"/gather?n={workers}", headers))["pid"])

    with ThreadPoolExecutor(workers) as pool:
        return set(pool.map(one, range(workers)))


def test_every_worker_reports_the_total(start: Callable[..., Gunicorn], tmp_path: Any) -> None:
    """3 workers, a directory that does not exist yet: each worker serves requests and
    each scrape reports exactly N."""
    metrics_dir = str(tmp_path / "not-yet" / "prom")
    server = start(metrics_dir, "--workers", "3")
    server.wait_ready()
    assert len(gather(server, 3)) == 3, "each of the 3 workers served one request"
    hit(server, 57, sleep=0.01, threads=6)
    for _ in range(12):
        totals = scrape(server)
        assert totals["http_requests_total"] == 60
        assert totals["http_request_duration_seconds_count"] == 60
        assert totals["active_connections"] == 0
    assert os.path.isdir(metrics_dir)


def test_each_worker_scrape_carries_its_own_exemplar(
    start: Callable[..., Gunicorn], tmp_path: Any
) -> None:
    """2 workers, each served one sampled request: every OpenMetrics scrape carries the
    answering worker's exemplar (a trace ID that was sent) over every worker's counts;
    the text format none; promtool accepts both."""
    server = start(str(tmp_path / "prom"), "--workers", "2")
    server.wait_ready()
    assert len(gather(server, 2, traced=True)) == 2, "each worker served one traced request"
    sent = {traceparent(i).split("-")[1] for i in range(2)}
    for _ in range(8):
        body = server.get("/metrics", OPENMETRICS).decode()
        families = {f.name: f for f in parse_openmetrics(body)}
        duration = families["http_request_duration_seconds"]
        exemplars = [s.exemplar.labels["trace_id"] for s in duration.samples if s.exemplar]
        assert len(exemplars) == 1 and exemplars[0] in sent
        counts = [s.value for s in duration.samples if s.name.endswith("_count")]
        assert counts == [2.0]
    promtool_check_openmetrics(body)
    text = server.get("/metrics").decode()
    assert "trace_id" not in text
    promtool_check(text)


def test_worker_killed_mid_request_leaves_no_live_gauge(
    start: Callable[..., Gunicorn], tmp_path: Any
) -> None:
    """SIGKILL a worker in the middle of a request: active_connections returns to 0 and
    the breaker state and health result it set disappear; its counts stay."""
    metrics_dir = str(tmp_path / "prom")
    server = start(metrics_dir, "--workers", "3", "--timeout", "120")
    server.wait_ready()
    hit(server, 5)

    def hang() -> None:
        with contextlib.suppress(OSError):  # the connection dies with the worker
            server.get("/hang")

    client = threading.Thread(target=hang, daemon=True)
    client.start()
    deadline = time.monotonic() + 20
    while not glob.glob(os.path.join(str(tmp_path), "hanging-*")):
        assert time.monotonic() < deadline, "the /hang request never started"
        time.sleep(0.02)
    doomed = int(glob.glob(os.path.join(str(tmp_path), "hanging-*"))[0].rsplit("-", 1)[1])
    during = scrape(server)  # served by another worker: the doomed one is busy
    assert during["active_connections"] == 1
    assert ("circuit_breaker_state", (("breaker", "doomed"),)) in series(server)
    assert ("health_check_status", (("check", "doomed"),)) in series(server)

    os.kill(doomed, signal.SIGKILL)
    client.join(timeout=30)
    deadline = time.monotonic() + 20
    while glob.glob(os.path.join(metrics_dir, f"gauge_live*_{doomed}.db")):
        assert time.monotonic() < deadline, "child_exit did not mark the worker dead"
        time.sleep(0.05)
    for _ in range(6):
        totals = scrape(server)
        assert totals["active_connections"] == 0
        assert totals["http_requests_total"] == 5
        names = series(server)
        assert ("circuit_breaker_state", (("breaker", "doomed"),)) not in names
        assert ("health_check_status", (("check", "doomed"),)) not in names


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
