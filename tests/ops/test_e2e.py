"""End to end: the example gateway under gunicorn, scraped every second by a real
Prometheus that loads the generated rules; every dashboard query returns data and the
breaker and health alerts go off."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flask_gateway_obs
from flask_gateway_obs.ops.dashboard import panel_queries, render_dashboard
from flask_gateway_obs.ops.rules import RulesOptions, render_rules

from ..conftest import RedisServer, free_port, unavailable

pytestmark = pytest.mark.slow

JOB = "gateway"
#: The checkout under test (it holds example_app), ahead of any installed copy.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(flask_gateway_obs.__file__)))
#: Families whose concern is not built yet: their panels may be empty only while the
#: gateway does not expose them at all (no ``# TYPE`` line). Once one is exposed, its
#: panel must return data like every other, so the example gateway must exercise it.
NOT_BUILT_YET = {
    "bulkhead_in_use",
    "bulkhead_rejected_total",
    "circuit_breaker_calls_total",
    "circuit_breaker_failure_rate",
    "tracing_spans_dropped_total",
}


class Process:
    """A child process with its output in a file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, args: list[str], log: Path, **kwargs: Any) -> None:
        self.log_path = log
        self.log = log.open("w+b")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, **kwargs)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


def _get(url: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_for(url: str, process: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise AssertionError(f"{url}: the server exited:\n{process.output()}")
        try:
            if _get(url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer:\n{process.output()}")


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Servers a test starts; each is stopped at the end."""
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


def _start_gateway(tmp_path: Path, redis_url: str, started: list[Process]) -> str:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "GATEWAY_OBS_"))}
    env.update(
        PYTHONPATH=PACKAGE_ROOT,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "multiproc"),
        FLASK_GATEWAY_OBS_REDIS_URL=redis_url,
        FLASK_GATEWAY_OBS_HEALTH_CACHE_TTL="0",
        FLASK_GATEWAY_OBS_LOG_ACCESS="false",
        FLASK_RATELIMIT_STORAGE_URI="memory://",  # limits keep working once Redis is killed
    )
    args = [sys.executable, "-m", "gunicorn", "-c", "python:flask_gateway_obs.gunicorn"]
    args += ["--bind", f"127.0.0.1:{port}", "--workers", "2", "--graceful-timeout", "5"]
    started.append(Process([*args, "example_app:create_app()"], tmp_path / "gunicorn.log", env=env))
    return f"http://127.0.0.1:{port}"


def _start_prometheus(tmp_path: Path, target: str, started: list[Process]) -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("the prometheus server is not installed (Debian package prometheus)")
    rules = render_rules(RulesOptions(job=JOB, for_duration="1s"))
    (tmp_path / "rules.yml").write_text(rules)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [target.split("//")[1]]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    args = [
        str(binary),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    started.append(Process(args, tmp_path / "prometheus.log", cwd=tmp_path))
    return f"http://127.0.0.1:{port}"


def _api(prometheus: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    status, body = _get(f"{prometheus}/api/v1/{path}{query}")
    payload = json.loads(body)
    assert status == 200 and payload["status"] == "success", payload
    return payload["data"]


def _wait_for_first_scrape(prometheus: str, process: Process, timeout: float = 20.0) -> None:
    """Until Prometheus scraped the gateway (it applies new targets every 5 seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _api(prometheus, "query", query=f'up{{job="{JOB}"}} == 1')["result"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus never scraped the gateway:\n{process.output()}")


def _drive_traffic(gateway: str, redis: RedisServer) -> None:
    """Successes, 404s, 500s, 429s, a breaker opened by failures, then Redis killed."""
    for round_ in range(8):
        for _ in range(4):
            _get(f"{gateway}/items/1")
        _get(f"{gateway}/items/999")
        _get(f"{gateway}/boom")
        for _ in range(4):
            _get(f"{gateway}/items", method="POST")  # 10 per minute per worker, then 429
        _get(f"{gateway}/quotes/ACME?fail=1")  # two failed calls per request open it
        if round_ == 5:
            redis.stop()  # the Redis health check fails from now on
        _get(f"{gateway}/health")
        time.sleep(0.4)


def test_dashboard_and_alerts_against_real_prometheus(
    tmp_path: Path, redis_server: RedisServer, processes: list[Process]
) -> None:
    """Every panel query returns data from Prometheus scraping the gunicorn gateway, and
    GatewayObsCircuitBreakerOpen and GatewayObsHealthCheckFailing go off."""
    gateway = _start_gateway(tmp_path, redis_server.url, processes)
    prometheus = _start_prometheus(tmp_path, gateway, processes)
    _wait_for(f"{gateway}/health/live", processes[0])
    _wait_for(f"{prometheus}/-/ready", processes[1])
    _wait_for_first_scrape(prometheus, processes[1])

    _drive_traffic(gateway, redis_server)
    exposed = _get(f"{gateway}/metrics")[1].decode()

    queries = [
        (title, expr.replace('"$instance"', '".+"').replace("$__rate_interval", "15s"))
        for title, expr in panel_queries(render_dashboard(job=JOB))
    ]
    pending = [n for n in NOT_BUILT_YET if f"# TYPE {n.removesuffix('_total')}" not in exposed]
    wanted_alerts = {"GatewayObsCircuitBreakerOpen", "GatewayObsHealthCheckFailing"}
    seen: set[str] = set()
    deadline = time.monotonic() + 45
    while True:
        # With Redis gone each worker's breaker runs on its own copy of the state, and the
        # gauge keeps the most recent write of any worker: a worker whose copy says closed
        # can write last. Failing calls open every worker's breaker on its own.
        if "GatewayObsCircuitBreakerOpen" not in seen:
            _get(f"{gateway}/quotes/ACME?fail=1")
        empty = [
            (title, expr)
            for title, expr in queries
            if not _api(prometheus, "query", query=expr)["result"]
        ]
        # A panel may stay empty only when it reads a family the gateway does not expose.
        unexplained = [(t, e) for t, e in empty if not any(n in e for n in pending)]
        seen |= {
            alert["labels"]["alertname"]
            for alert in _api(prometheus, "alerts")["alerts"]
            if alert["state"] in ("pending", "firing")
        }
        if (not unexplained and wanted_alerts <= seen) or time.monotonic() > deadline:
            break
        time.sleep(1)

    assert not unexplained, f"panels without data: {unexplained}\n{processes[1].output()}"
    assert wanted_alerts <= seen, (seen, processes[0].output())

    # The rules evaluate without error, and the data behind the panels is what was driven.
    groups = _api(prometheus, "rules")["groups"]
    assert all(rule["health"] == "ok" for g in groups for rule in g["rules"]), groups
    ratio = _api(prometheus, "query", query=f'job:http_requests_5xx:ratio_rate5m{{job="{JOB}"}}')
    assert float(ratio["result"][0]["value"][1]) > 0
    limited = _api(prometheus, "query", query="sum(rate_limit_exceeded_total)")["result"]
    assert float(limited[0]["value"][1]) > 0
