"""A real gunicorn master for the tests that need one (multiprocess metrics, the drain)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import flask_gateway_obs

from .conftest import free_port

#: The checkout under test, ahead of whatever copy of the package the interpreter has.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(flask_gateway_obs.__file__)))


class Gunicorn:
    """A gunicorn master started with our config module; stopped with SIGTERM."""

    def __init__(self, workdir: str, multiproc_dir: str | None, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        if multiproc_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
        env["PYTHONPATH"] = os.pathsep.join([workdir, PACKAGE_ROOT])
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

    def get(self, path: str, headers: dict[str, str] | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as response:
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
