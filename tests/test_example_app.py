"""The example gateway: its routes, and the demo command serving JSON logs with request IDs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from subprocess import Popen
from typing import IO

import pytest

from example_app import create_app
from tests.conftest import free_port


def test_example_routes_answer_per_contract() -> None:
    """The example's routes show success, a 404 AppError, a 422 and a hidden 500."""
    client = create_app({"TESTING": True}).test_client()
    assert client.get("/items/1").get_json()["name"] == "keyboard"
    missing = client.get("/items/99")
    assert missing.status_code == 404 and missing.get_json()["code"] == "item_not_found"
    invalid = client.post("/items", json={"name": 5})
    assert invalid.status_code == 422 and invalid.get_json()["errors"]
    assert client.post("/items", json={"name": "pad"}).status_code == 201
    boom = client.get("/boom")
    assert boom.status_code == 500 and b"s3cret" not in boom.data
    who = client.get("/whoami", headers={"X-Request-ID": "demo-1"}).get_json()
    assert who == {"request_id": "demo-1", "outgoing_headers": {"X-Request-ID": "demo-1"}}


def test_example_reads_settings_from_the_environment(monkeypatch) -> None:
    """FLASK_GATEWAY_OBS_* variables configure the example."""
    monkeypatch.setenv("FLASK_GATEWAY_OBS_SERVICE_NAME", "from-env")
    app = create_app({"TESTING": True})
    assert app.extensions["gateway_obs"].service == "from-env"


@pytest.mark.slow
def test_demo_server_serves_and_logs_json_with_request_ids(tmp_path) -> None:
    """The demo command's server answers and its stdout is JSON lines with request IDs."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "GATEWAY_OBS_"))}
    env.pop("SENTRY_DSN", None)
    flask_cli = os.path.join(os.path.dirname(sys.executable), "flask")
    log_path = tmp_path / "out.log"
    with log_path.open("w") as out:
        process = _start_demo(flask_cli, port, out, env)
    try:
        deadline = time.monotonic() + 20
        body = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(
                        f"http://127.0.0.1:{port}/items/1", headers={"X-Request-ID": "demo-42"}
                    ),
                    timeout=2,
                ) as response:
                    body = json.loads(response.read())
                    assert response.headers["X-Request-ID"] == "demo-42"
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert body == {"id": 1, "name": "keyboard"}
    finally:
        process.terminate()
        process.wait(timeout=10)
    lines = log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    access = [r for r in records if r["logger"] == "flask_gateway_obs.access"]
    assert access and access[-1]["request_id"] == "demo-42"


def _start_demo(flask_cli: str, port: int, out: IO[str], env: dict[str, str]) -> Popen[bytes]:
    command = [flask_cli, "--app", "example_app:create_app", "run"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
