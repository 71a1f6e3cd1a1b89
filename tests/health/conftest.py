"""Shared helpers of the health tests: an app with its GatewayObs, the runner, a hung
check's release, a listener that never accepts."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import GatewayObs
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.contracts import Recorder
from flask_gateway_obs.core.state import EXTENSION_KEY
from flask_gateway_obs.health import (
    HealthRunner,
)

from ..conftest import MakeApp, ManualClock

#: Most tests look at custom or network checks only.
QUIET = {Keys.HEALTH_CHECK_MEMORY: False, Keys.HEALTH_CHECK_DISK: False}
#: Generous scheduling allowance for a loaded 2-core machine; bounds, not speeds.
MARGIN = 0.6


FakeClock = ManualClock


class RecordingRecorder(Recorder):
    """A recorder that remembers what health reported to it."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str]] = []
        self.latencies: list[tuple[str, str, float, bool]] = []

    def health_check(self, check: str, status: str) -> None:
        self.statuses.append((check, status))

    def dependency(self, dependency: str, operation: str, seconds: float, failed: bool) -> None:
        self.latencies.append((dependency, operation, seconds, failed))


def build(make_app: MakeApp, config: dict[str, Any] | None = None) -> tuple[Flask, GatewayObs]:
    """An app and the GatewayObs set up on it."""
    app = make_app(config, init=False)
    return app, GatewayObs(app)


def runner_of(app: Flask) -> HealthRunner:
    runner = app.extensions[EXTENSION_KEY].health
    assert isinstance(runner, HealthRunner)
    return runner


def with_clock(app: Flask) -> FakeClock:
    clock = FakeClock()
    runner_of(app).clock = clock
    return clock


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hung checks wait on; set at the end so their threads finish."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def full_backlog() -> Iterator[tuple[str, int]]:
    """A loopback listener with backlog 0, filled and never accepted: a connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers: list[socket.socket] = []
    for _ in range(64):
        try:
            fillers.append(socket.create_connection(address, timeout=0.1))
        except OSError:
            break
    else:
        pytest.fail("could not fill the listen backlog")
    yield "127.0.0.1", int(address[1])
    for sock in fillers:
        sock.close()
    listener.close()


class FreezingProxy:
    """A TCP proxy on loopback in front of a real server; ``freeze()`` makes it stop
    forwarding while keeping every connection open: an established connection whose
    server accepts what it is sent (the kernel acknowledges it) and never answers."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=5)
            with self.lock:
                self.sockets += [client, server]
                if self.closed.is_set():
                    return
                for source, sink in ((client, server), (server, client)):
                    pump = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                    self.threads.append(pump)
                    pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while not self.closed.is_set():
            if self.frozen.is_set():
                time.sleep(0.01)
                continue
            try:
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready:
                    continue
                data = source.recv(65536)
                if not data:
                    return
                sink.sendall(data)
            except (OSError, ValueError):
                return

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(5)
        with self.lock:
            for sock in self.sockets:
                sock.close()


@pytest.fixture
def pg_proxy(database_url: str) -> Iterator[FreezingProxy]:
    """A freezable proxy in front of the real PostgreSQL."""
    from urllib.parse import urlsplit

    parts = urlsplit(database_url)
    proxy = FreezingProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield proxy
    proxy.close()
