"""Real gunicorn, 3 workers forked from a preloaded app: every span exported once, at exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import flask_gateway_obs

from ..conftest import free_port
from .receiver import OtlpReceiver

pytestmark = pytest.mark.slow

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(flask_gateway_obs.__file__)))
REQUESTS = 30

APP = textwrap.dedent(
    """
    import os
    import time

    from flask import Flask
    from opentelemetry import trace

    from flask_gateway_obs import GatewayObs

    app = Flask("gunicorn_traced")
    app.config.update(
        GATEWAY_OBS_LOG_ACCESS=False,
        GATEWAY_OBS_HEALTH_CHECK_DISK=False,
        GATEWAY_OBS_HEALTH_CHECK_MEMORY=False,
        GATEWAY_OBS_TRACING_ENABLED=True,
        GATEWAY_OBS_TRACING_OTLP_ENDPOINT=os.environ["TEST_TRACES_URL"],
    )
    GatewayObs(app)


    @app.get("/work")
    def work():
        trace.get_current_span().set_attribute("worker.pid", os.getpid())
        time.sleep(0.02)
        return {"pid": os.getpid()}
    """
)


def test_each_worker_exports_its_spans_once_at_exit(tmp_path: Any, receiver: OtlpReceiver) -> None:
    """N requests over 3 preloaded workers give N server spans, each once; with a batch
    delay longer than the test, they leave at worker exit (SIGTERM), not before."""
    (tmp_path / "traced_app.py").write_text(APP)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), PACKAGE_ROOT]),
        "TEST_TRACES_URL": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing leaves before exit
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = open(tmp_path / "gunicorn.log", "w+b")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "python:flask_gateway_obs.gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "3",
            "--preload",
            "--graceful-timeout",
            "10",
            "traced_app:app",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def output() -> str:
        log.flush()
        log.seek(0)
        return log.read().decode("utf-8", "replace")

    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/health/live", timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("gunicorn did not start:\n" + output()) from None
                time.sleep(0.1)

        def one(_: int) -> str:
            with urllib.request.urlopen(f"{url}/work", timeout=10) as response:
                return str(response.headers["X-Request-ID"])

        with ThreadPoolExecutor(6) as pool:
            request_ids = list(pool.map(one, range(REQUESTS)))
        assert receiver.requests == 0  # still queued in the workers
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
    spans = [s for s in receiver.spans if s.name == "GET /work"]
    assert sorted(s.attributes["request_id"] for s in spans) == sorted(request_ids)
    assert len({s.span_id for s in spans}) == REQUESTS
    assert len({s.attributes["worker.pid"] for s in spans}) >= 2
