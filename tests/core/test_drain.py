"""The drain on shutdown: readiness 503 at once, in-flight requests finished, liveness 200,
drain hooks within their bound; in one process and under real gunicorn on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import ConfigError, GatewayObs
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.state import EXTENSION_KEY, ObsState
from flask_gateway_obs.testing import capture_logs

from ..conftest import MakeApp

QUIET = {Keys.HEALTH_CHECK_MEMORY: False, Keys.HEALTH_CHECK_DISK: False}


def state_of(app: Flask) -> ObsState:
    state = app.extensions[EXTENSION_KEY]
    assert isinstance(state, ObsState)
    return state


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hung hooks and views wait on; set at the end so their threads finish."""
    event = threading.Event()
    yield event
    event.set()


# --- in one process ----------------------------------------------------------------------------


def test_readiness_answers_503_at_once_while_liveness_and_routes_still_answer(
    make_app: MakeApp,
) -> None:
    """After begin_drain, /health/ready and /health answer 503 without running a check;
    /health/live and the app's own routes answer as before."""
    app = make_app(QUIET, init=False)
    obs = GatewayObs(app)
    app.add_url_rule("/items", "items", lambda: {"items": []})
    calls: list[str] = []
    obs.health_check("dependency")(lambda: calls.append("dependency"))
    obs.health_check("process", groups=("live",))(lambda: calls.append("process"))
    client = app.test_client()
    assert client.get("/health/ready").status_code == 200
    calls.clear()

    obs.begin_drain()
    for path in ("/health/ready", "/health"):
        response = client.get(path)
        assert response.status_code == 503
        body = response.get_json()
        assert (body["status"], body["checks"], body["draining"]) == ("unhealthy", {}, True)
    assert calls == []
    live = client.get("/health/live")
    assert live.status_code == 200 and "draining" not in live.get_json()
    assert calls == ["process"]
    assert client.get("/items").status_code == 200


def test_every_app_of_the_process_drains(make_app: MakeApp) -> None:
    """begin_drain on one object drains the apps of every object in the process."""
    first, second = make_app(QUIET), make_app(QUIET)
    obs = GatewayObs()
    third = make_app(QUIET, init=False)
    obs.init_app(third)
    obs.begin_drain()
    for app in (first, second, third):
        assert app.test_client().get("/health/ready").status_code == 503
        assert app.test_client().get("/health/live").status_code == 200


def test_a_request_in_flight_finishes_with_its_own_status(
    make_app: MakeApp, release: threading.Event
) -> None:
    """A request in flight when the drain begins completes with the status it chose."""
    app = make_app(QUIET, init=False)
    obs = GatewayObs(app)
    started = threading.Event()

    @app.post("/orders")
    def create() -> tuple[dict[str, str], int]:
        started.set()
        release.wait(10)
        return {"id": "o-1"}, 201

    statuses: list[int] = []
    caller = threading.Thread(
        target=lambda: statuses.append(app.test_client().post("/orders").status_code)
    )
    caller.start()
    assert started.wait(10)
    obs.begin_drain()
    assert app.test_client().get("/health/ready").status_code == 503
    release.set()
    caller.join(10)
    assert statuses == [201]


def test_drain_hooks_run_once_each_with_the_time_left(make_app: MakeApp) -> None:
    """Each app's hooks run once (a hook shared by two apps once), each given the seconds
    left of GATEWAY_OBS_DRAIN_FLUSH_TIMEOUT; a failing hook is logged and the next runs."""
    first = make_app({**QUIET, Keys.DRAIN_FLUSH_TIMEOUT: 3})
    second = make_app({**QUIET, Keys.DRAIN_FLUSH_TIMEOUT: "1.5"})
    given: list[tuple[str, float]] = []

    def shared(seconds: float) -> None:
        given.append(("shared", seconds))

    def broken(seconds: float) -> None:
        raise RuntimeError("exporter gone")

    def last(seconds: float) -> None:
        given.append(("last", seconds))

    class Exporter:
        def flush(self, seconds: float) -> None:
            given.append(("exporter", seconds))

    exporter = Exporter()
    state_of(first).drain_hooks += [shared, exporter.flush, broken]
    state_of(second).drain_hooks += [shared, exporter.flush, last]
    with capture_logs("flask_gateway_obs") as logs:
        GatewayObs().begin_drain()
    assert [name for name, _ in given] == ["shared", "exporter", "last"]
    assert all(0 < seconds <= 3 for _, seconds in given), "the largest bound of the apps"
    assert [r["message"] for r in logs.records if r["level"] == "warning"] == [
        "a drain hook failed"
    ]


def test_a_hook_that_hangs_does_not_hold_the_drain_beyond_its_bound(
    make_app: MakeApp, release: threading.Event
) -> None:
    """begin_drain returns while a hung hook is still blocked, and says so."""
    app = make_app({**QUIET, Keys.DRAIN_FLUSH_TIMEOUT: 0.2})
    inside = threading.Event()

    def hung(seconds: float) -> None:
        inside.set()
        release.wait(30)

    state_of(app).drain_hooks.append(hung)
    with capture_logs("flask_gateway_obs") as logs:
        GatewayObs().begin_drain()
    assert inside.is_set() and not release.is_set(), "returned with the hook still inside"
    assert any("did not finish within 0.2 s" in r["message"] for r in logs.records)


@pytest.mark.parametrize("value", [0, -1, 301, "soon", float("inf")])
def test_bad_drain_flush_timeout_is_a_config_error(make_app: MakeApp, value: Any) -> None:
    """The flush bound is seconds > 0 and at most 300."""
    with pytest.raises(ConfigError) as caught:
        make_app({Keys.DRAIN_FLUSH_TIMEOUT: value})
    assert [key for key, _, _ in caught.value.problems] == [Keys.DRAIN_FLUSH_TIMEOUT]


# --- under gunicorn ----------------------------------------------------------------------------

APP = textwrap.dedent(
    """
    import os
    import threading
    import time

    from flask import Flask

    from flask_gateway_obs import GatewayObs

    HERE = os.path.dirname(os.path.abspath(__file__))
    app = Flask("drain_gateway")
    app.config.update(
        GATEWAY_OBS_LOG_ACCESS=False,
        GATEWAY_OBS_HEALTH_CHECK_DISK=False,
        GATEWAY_OBS_HEALTH_CHECK_MEMORY=False,
        GATEWAY_OBS_DRAIN_FLUSH_TIMEOUT=1.0,
    )
    obs = GatewayObs(app)
    state = app.extensions["gateway_obs"]


    def flushed(seconds):
        with open(os.path.join(HERE, "flushed"), "w") as out:
            out.write(repr(seconds))


    def hangs(seconds):
        time.sleep(60)


    state.drain_hooks += [flushed, hangs]


    @app.get("/slow")
    def slow():
        # In flight until the worker has been asked to stop, and a little after.
        name = f"slow-{os.getpid()}-{threading.get_ident()}"
        open(os.path.join(HERE, name), "w").close()
        deadline = time.monotonic() + 30
        while not state.draining and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        return {"draining_seen": state.draining}
    """
)


def accept_queue(port: int) -> int | None:
    """Connections waiting in the backlog of the loopback listener on ``port`` (Linux)."""
    try:
        with open("/proc/net/tcp") as table:
            lines = table.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # LISTEN
            return int(fields[4].split(":")[1], 16)
    return None


def fetch(url: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a GET on a new connection; an HTTP error is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


@pytest.mark.slow
def test_sigterm_under_gunicorn_drains_a_gthread_worker(tmp_path: Any) -> None:
    """A gthread worker gets SIGTERM (through the master, as Kubernetes sends it) with two
    slow requests in flight and a readiness and a liveness probe waiting for a thread: the
    slow requests complete with 200, readiness answers 503, liveness 200; at exit the drain
    hooks run within GATEWAY_OBS_DRAIN_FLUSH_TIMEOUT though one of them hangs."""
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux's /proc/net/tcp to see that the probes were accepted")
    from ..gunicorn_server import Gunicorn

    (tmp_path / "gw_app.py").write_text(APP)
    server = Gunicorn(
        str(tmp_path),
        None,
        "--worker-class",
        "gthread",
        "--workers",
        "1",
        "--threads",
        "2",
    )
    try:
        server.wait_ready()
        answers: dict[str, tuple[int, dict[str, Any]]] = {}

        def ask(name: str, path: str) -> Callable[[], None]:
            return lambda: answers.__setitem__(name, fetch(server.url + path))

        def answer(name: str, connection: http.client.HTTPConnection) -> Callable[[], None]:
            def read() -> None:
                response = connection.getresponse()
                answers[name] = (response.status, json.loads(response.read()))
                connection.close()

            return read

        calls = [threading.Thread(target=ask(f"slow{i}", "/slow"), daemon=True) for i in range(2)]
        for call in calls:
            call.start()
        deadline = time.monotonic() + 20
        while len(list(tmp_path.glob("slow-*"))) < 2:
            assert time.monotonic() < deadline, "the slow requests never started"
            time.sleep(0.02)
        # The probes connect and send now; both threads are busy, so they wait for one.
        # Once the worker has accepted them (the listener's backlog is empty again) they
        # will be answered, whatever happens to the listener afterwards.
        probes = []
        for name, path in (("ready", "/health/ready"), ("live", "/health/live")):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            connection.request("GET", path)
            probes.append(threading.Thread(target=answer(name, connection), daemon=True))
        for probe in probes:
            probe.start()
        while accept_queue(server.port) != 0:
            assert time.monotonic() < deadline, "the worker never accepted the probes"
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        for thread in calls + probes:
            thread.join(30)
        assert answers["slow0"] == (200, {"draining_seen": True})
        assert answers["slow1"] == (200, {"draining_seen": True})
        status, body = answers["ready"]
        assert (status, body["status"], body["draining"]) == (503, "unhealthy", True)
        assert answers["live"][0] == 200
        assert server.process.wait(timeout=20) == 0, server.output()
        assert 0 < float((tmp_path / "flushed").read_text()) <= 1.0
        assert "drain hooks did not finish within 1 s" in server.output()
    finally:
        server.stop()
