"""The clients: shared or per app, across forks, at exit, when Sentry is down or slow."""

from __future__ import annotations

import gc
import http.client
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
import weakref
from typing import Any

import pytest

from flask_gateway_obs import (
    capture_message,
    sentry,
)
from flask_gateway_obs.sentry import EVENT_ID_MEMBER, EXTENSION_KEY

from ..conftest import MakeApp, free_port
from ..sentry_sink import SentrySink
from .apps import log, report, sentry_app


def test_two_apps_share_one_client_or_get_their_own(make_app: MakeApp) -> None:
    """Same configuration -> one client; another DSN -> a client of its own, no mixing."""
    first_sink, second_sink = SentrySink().start(), SentrySink().start()
    try:
        a = sentry_app(make_app, first_sink.dsn)
        b = sentry_app(make_app, first_sink.dsn)
        assert a.extensions[EXTENSION_KEY].client is b.extensions[EXTENSION_KEY].client
        c = sentry_app(make_app, second_sink.dsn)
        assert c.extensions[EXTENSION_KEY].client is not a.extensions[EXTENSION_KEY].client
        report(a, "/items/0")
        report(c, "/items/0")
        report(c, "/items/0")
        assert len(first_sink.events()) == 1
        assert len(second_sink.events()) == 2
    finally:
        first_sink.stop()
        second_sink.stop()


def test_apps_that_are_gone_are_not_kept_alive(make_app: MakeApp, sink: SentrySink) -> None:
    """An app factory called many times: the apps (and their reporters) can be collected."""
    refs = []
    for _ in range(5):
        app = sentry_app(make_app, sink.dsn)
        report(app, "/items/1")
        refs.append(weakref.ref(app))
        del app
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []


def test_log_events_of_a_second_app_go_to_its_client_with_its_rules(make_app: MakeApp) -> None:
    """Two apps with different clients and denylists: a log record at ERROR in the second
    app's request reaches the second app's DSN, scrubbed by its rules; the first gets nothing."""
    first_sink, second_sink = SentrySink().start(), SentrySink().start()
    try:
        sentry_app(make_app, first_sink.dsn)
        second = sentry_app(make_app, second_sink.dsn, SENTRY_DENYLIST=["signature"])
        secret = f"sig{uuid.uuid4().hex}"

        @second.get("/webhook")
        def webhook() -> Any:
            log.error("webhook rejected", extra={"signature": secret})
            raise RuntimeError("webhook failed")

        report(second, "/webhook")
        assert first_sink.events() == []
        messages = sorted(
            e.get("logentry", {}).get("message") or e["exception"]["values"][-1]["value"]
            for e in second_sink.events()
        )
        assert messages == ["webhook failed", "webhook rejected"]
        assert secret.encode() not in second_sink.all_bytes()
    finally:
        first_sink.stop()
        second_sink.stop()


def test_a_client_initialised_by_the_application_is_left_alone(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """sentry_sdk.init() done by the app stays global; our errors go to our DSN."""
    import sentry_sdk

    own = SentrySink().start()
    try:
        sentry_sdk.init(dsn=own.dsn, default_integrations=False)
        theirs = sentry_sdk.get_client()
        app = sentry_app(make_app, sink.dsn)
        assert sentry_sdk.get_client() is theirs
        report(app, "/items/0")
        assert len(sink.events()) == 1
        theirs.flush(timeout=2)
        assert own.events() == []
    finally:
        sentry_sdk.get_client().close(timeout=1)
        sentry_sdk.Scope.get_global_scope().set_client(None)
        own.stop()


def test_a_forked_child_keeps_the_applications_own_global_client(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """The extension first, then the app's own sentry_sdk.init(): after a fork the child's
    global client is still the app's, and each side's events reach its own DSN."""
    import sentry_sdk

    own = SentrySink().start()
    try:
        app = sentry_app(make_app, sink.dsn)
        sentry_sdk.init(dsn=own.dsn, default_integrations=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork in a threaded process
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                with app.app_context():
                    capture_message("ours from the child")
                kept = sentry_sdk.get_client().dsn == own.dsn
                sentry_sdk.capture_message("theirs from the child")
                sentry_sdk.flush(timeout=5)
                sentry.flush(timeout=5)
                code = 0 if kept else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [e.get("message") for e in sink.wait_for("event", 1)] == ["ours from the child"]
        assert [e.get("message") for e in own.wait_for("event", 1)] == ["theirs from the child"]
    finally:
        sentry_sdk.get_client().close(timeout=1)
        sentry_sdk.Scope.get_global_scope().set_client(None)
        own.stop()


_EXIT_SCRIPT = """
import sys
from flask import Flask
from flask_gateway_obs import GatewayObs, capture_message

def make(dsn):
    app = Flask("exiting")
    app.config["GATEWAY_OBS_SENTRY_DSN"] = dsn
    GatewayObs(app)
    return app

first, second = make(sys.argv[1]), make(sys.argv[2])
for n in range(5):
    with second.app_context():
        capture_message(f"second {n}")
"""


def test_a_second_apps_client_is_flushed_at_exit(make_app: MakeApp) -> None:
    """A process that exits without flushing still delivers the events of an app with a
    client of its own (not only the global one's), within the shutdown timeout."""
    first_sink, second_sink = SentrySink().start(), SentrySink(delay=0.05).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")}
        subprocess.run(
            [sys.executable, "-c", _EXIT_SCRIPT, first_sink.dsn, second_sink.dsn],
            env=env,
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )
        assert len(second_sink.events()) == 5
    finally:
        first_sink.stop()
        second_sink.stop()


def test_unreachable_sentry_leaves_requests_normal(
    make_app: MakeApp, black_hole: tuple[str, int]
) -> None:
    """DSN at a closed port or a server that never answers: 200s and 500s as usual and
    each reported request far below a generous bound (nothing waits on the network);
    shutdown waits only its timeout."""
    closed = f"http://key@127.0.0.1:{free_port()}/1"
    hole = f"http://key@{black_hole[0]}:{black_hole[1]}/1"
    for dsn in (closed, hole):
        app = sentry_app(make_app, dsn, SENTRY_QUEUE_SIZE=3, SENTRY_SHUTDOWN_TIMEOUT=0.2)
        client = app.test_client()
        took = []
        for _ in range(20):
            started = time.perf_counter()
            assert client.get("/items/0").status_code == 500
            took.append(time.perf_counter() - started)
            assert client.get("/items/1").status_code == 200
        # about 3 ms each here; a capture that waited for Sentry would take 300 ms or more
        assert statistics.median(took) < 0.2
        started = time.monotonic()
        sentry.shutdown()
        assert time.monotonic() - started < 5  # bounded: the sender waits up to 30 s


_COST_SCRIPT = """
import cProfile, pstats, sys
from flask import Flask
from werkzeug.test import EnvironBuilder
from flask_gateway_obs import GatewayObs

def build(dsn):
    app = Flask("costs")
    if dsn is not None:
        app.config["GATEWAY_OBS_SENTRY_DSN"] = dsn
    GatewayObs(app)

    @app.get("/items/<int:item_id>")
    def item(item_id):
        return {"id": item_id}

    return app

def calls(app, count=200):
    environs = [EnvironBuilder(path="/items/1").get_environ() for _ in range(count + 20)]
    def call(environ):
        body = app(environ, lambda status, headers, exc_info=None: lambda data: None)
        for _ in body:
            pass
        getattr(body, "close", lambda: None)()
    for environ in environs[:20]:
        call(environ)
    profile = cProfile.Profile()
    profile.enable()
    for environ in environs[20:]:
        call(environ)
    profile.disable()
    return pstats.Stats(profile).total_calls / count

print(calls(build(sys.argv[1] if sys.argv[2] == "sentry" else None)), file=sys.stderr)
"""


def _calls_per_request(kind: str, dsn: str) -> float:
    """Python calls per request (cProfile counts are deterministic) through the WSGI
    callable of a fresh process (no sentry-sdk patches left by other tests): ``core``
    extension, or ``sentry`` reporting to ``dsn``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")}
    done = subprocess.run(
        [sys.executable, "-c", _COST_SCRIPT, dsn, kind],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
        timeout=60,
        text=True,
    )
    return float(done.stderr.strip().splitlines()[-1])


def test_sentry_without_tracing_adds_only_its_isolation_step_per_request() -> None:
    """Per request Sentry (tracing off) adds only its observer step over the core:
    request_started (the isolation scope, its ContextVar read, Scope.clear() and the
    breadcrumbs it clears) and request_finished = 6 calls; no fresh Scope per request
    (about 30 calls more, and a debug log line on sentry-sdk 2.0), no Flask integration
    (~800 calls), no access lines as breadcrumbs."""
    closed = f"http://key@127.0.0.1:{free_port()}/1"
    core = _calls_per_request("core", closed)
    with_sentry = _calls_per_request("sentry", closed)
    # rounded: a clock tick (the log timestamp's cache) adds a call now and then
    assert round(with_sentry - core) <= 6


def test_events_queue_while_sentry_is_slow_and_the_queue_is_bounded(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Sentry holding every answer: all 20 failing requests are answered before a single
    event is delivered (capture only queues), and of the 20 at most the one in flight
    plus GATEWAY_OBS_SENTRY_QUEUE_SIZE (3) are sent; the rest are dropped."""
    app = sentry_app(make_app, sink.dsn, SENTRY_QUEUE_SIZE=3)
    client = app.test_client()
    sink.hold()
    try:
        ids = [client.get("/items/0").get_json().get(EVENT_ID_MEMBER) for _ in range(20)]
        assert all(ids)  # captured, with an id for the body
        assert sink.events() == []  # ...and yet nothing has arrived
    finally:
        sink.release()
    sentry.flush(timeout=5)
    assert 1 <= len(sink.events()) <= 4


def test_a_forked_child_reports_through_a_fresh_client(make_app: MakeApp, sink: SentrySink) -> None:
    """After os.fork() the child keeps the parent's client until its first event (a fork
    that never reports pays nothing), then gets its own transport; its events arrive."""
    app = sentry_app(make_app, sink.dsn)
    report(app, "/items/0")  # the parent's sender thread and connection are in use
    parent_client = app.extensions[EXTENSION_KEY].client
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork in a threaded process
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            lazy = app.extensions[EXTENSION_KEY].client is parent_client
            with app.app_context():
                sent = capture_message("from the child") is not None
            fresh = app.extensions[EXTENSION_KEY].client is not parent_client
            sentry.flush(timeout=5)
            code = 0 if lazy and fresh and sent else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    events = sink.wait_for("event", 2)
    assert "from the child" in [e.get("message") for e in events]
    assert sentry.after_fork() is False  # the parent keeps its own client


_GUNICORN_APP = """
import os
from flask import Flask
from flask_gateway_obs import GatewayObs, capture_message

app = Flask("preloaded")
app.config["GATEWAY_OBS_SENTRY_DSN"] = os.environ["TEST_SINK_DSN"]
GatewayObs(app)

with app.app_context():
    capture_message("master loaded")  # uses the transport before the fork


@app.get("/boom/<int:n>")
def boom(n):
    raise RuntimeError(f"boom {n} in {os.getpid()}")
"""


@pytest.mark.slow
def test_gunicorn_preload_workers_deliver_events_and_stop_promptly(
    sink: SentrySink, tmp_path: Any
) -> None:
    """gunicorn --preload, 2 workers, an event sent by the master before forking: the
    workers' errors all arrive, and no worker hangs (SIGTERM stops them at once)."""
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    if not os.path.exists(gunicorn):
        pytest.skip("gunicorn is not installed")
    (tmp_path / "preloaded_app.py").write_text(textwrap.dedent(_GUNICORN_APP))
    port = free_port()
    env = {**os.environ, "TEST_SINK_DSN": sink.dsn, "PYTHONPATH": str(tmp_path)}
    hooks = ["-c", "python:flask_gateway_obs.gunicorn"]  # post_fork and worker_exit included
    command = [gunicorn, *hooks, "--preload", "-w", "2", "--graceful-timeout", "30"]
    errors = (tmp_path / "gunicorn.err").open("w")
    process = subprocess.Popen(
        [*command, "-b", f"127.0.0.1:{port}", "preloaded_app:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    try:
        _wait_for_port(port)
        for n in range(6):
            assert _status(port, f"/boom/{n}") == 500
        events = sink.wait_for("event", 7)
        messages = [e.get("message") or e["exception"]["values"][-1]["value"] for e in events]
        assert "master loaded" in messages
        assert len([m for m in messages if m.startswith("boom")]) == 6
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            # A worker hung since the fork would hold the exit for the graceful timeout.
            process.wait(timeout=20)
        finally:
            process.kill()
            process.wait()
            errors.close()


def _status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _status(port, "/items")
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"gunicorn did not listen on {port}")


def test_the_drain_hook_sends_this_apps_pending_events(make_app: MakeApp, sink: SentrySink) -> None:
    """The app's drain hook (what begin_drain and SIGTERM run) gives up when its seconds
    are spent while Sentry holds its answers, and sends the pending events once it can."""
    app = sentry_app(make_app, sink.dsn)
    [drain] = app.extensions["gateway_obs"].drain_hooks
    client = app.test_client()
    sink.hold()
    try:
        ids = [client.get("/items/0").get_json()[EVENT_ID_MEMBER] for _ in range(3)]
        drain(0.05)  # returns although nothing could be delivered
        assert sink.events() == []
    finally:
        sink.release()
    drain(5.0)
    assert sorted(e["event_id"] for e in sink.events()) == sorted(ids)


def test_the_drain_hook_of_an_app_without_a_client_does_nothing(make_app: MakeApp) -> None:
    """After a reset (the clients closed) an app's drain hook is a no-op, not an error."""
    app = sentry_app(make_app, f"http://key@127.0.0.1:{free_port()}/1")
    [drain] = app.extensions["gateway_obs"].drain_hooks
    sentry.shutdown(timeout=0)
    drain(1.0)
