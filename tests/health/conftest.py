"""Shared helpers of the health tests: an app with its GatewayObs, the runner, a hung
check's release, a listener that never accepts."""

from __future__ import annotations

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
