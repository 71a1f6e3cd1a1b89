"""Shared fixtures: an app factory, real Redis/PostgreSQL, free ports, a private redis-server."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import GatewayObs
from flask_gateway_obs.core.context import current_request
from flask_gateway_obs.testing import reset as reset_process

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip on a user's machine; fail in CI, which must never pass by skipping."""
    if IN_CI:
        pytest.fail(f"required service unavailable in CI: {reason}")
    pytest.skip(reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a run in which no test passed (all skipped or deselected) fails."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", ())) if reporter is not None else 0
    if IN_CI and exitstatus == pytest.ExitCode.OK and passed == 0:
        if reporter is not None:
            reporter.write("\n")
            reporter.write_sep("!", "CI: no test passed", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _reset_global_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no request context, no Sentry settings from the environment
    and no process-wide breakers, and leaves root logging as it found it."""
    for name in ("SENTRY_DSN", "SENTRY_ENVIRONMENT", "SENTRY_RELEASE"):
        monkeypatch.delenv(name, raising=False)
    reset_process()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    current_request.set(None)
    yield
    current_request.set(None)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


MakeApp = Callable[..., Flask]


class ManualClock:
    """A clock the test moves by hand (``clock()`` reads it, ``advance(s)`` moves it)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def make_app(tmp_path: Any) -> MakeApp:
    """Build a Flask app with the extension: ``make_app(config={...}, **overrides)``."""

    def factory(
        config: dict[str, Any] | None = None, *, init: bool = True, **overrides: Any
    ) -> Flask:
        app = Flask("testapp", instance_path=str(tmp_path))
        app.config["TESTING"] = True
        app.config.update(config or {})
        if init:
            GatewayObs(app, **overrides)
        return app

    return factory


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis (``TEST_REDIS_URL``, default the local server, db 15)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL} is unreachable: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def database_url() -> str:
    """DSN of a reachable PostgreSQL (``TEST_DATABASE_URL``, default the local server)."""
    import psycopg2

    try:
        psycopg2.connect(DATABASE_URL, connect_timeout=2).close()
    except psycopg2.Error as exc:
        unavailable(f"PostgreSQL at {DATABASE_URL} is unreachable: {exc}")
    return DATABASE_URL


class RedisServer:
    """A private ``redis-server`` on a free loopback port that a test may stop and restart."""

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[RedisServer]:
    """A private redis-server, started; stopped at the end of the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
        raise AssertionError  # unreachable: unavailable() skips or fails
    server = RedisServer(binary, str(tmp_path))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def black_hole() -> Iterator[tuple[str, int]]:
    """A loopback socket whose kernel completes every handshake (the listen backlog) while
    nobody ever reads or answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield "127.0.0.1", int(listener.getsockname()[1])
    listener.close()
