"""Multiprocess mode: the reader of the workers' files, processes that load or serve the
app with PROMETHEUS_MULTIPROC_DIR set, and a variable set too late."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

import flask_gateway_obs
from flask_gateway_obs.metrics.exposition import render
from flask_gateway_obs.metrics.multiprocess import MultiprocessReader
from flask_gateway_obs.testing import capture_logs, metric_value

from ..conftest import MakeApp
from .helpers import gateway, parsed, promtool_check, promtool_check_openmetrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(flask_gateway_obs.__file__)))


def _write(
    path: str,
    kind: str,
    pid: int,
    entries: list[tuple[str, str, dict[str, str], float, float]],
    help_text: str = "help",
) -> None:
    store = MmapedDict(os.path.join(path, f"{kind}_{pid}.db"))
    for metric, sample, labels, value, stamp in entries:
        key = mmap_key(metric, sample, list(labels), list(labels.values()), help_text)
        store.write_value(key, value, stamp)
    store.close()


def _mp_files(path: str) -> None:
    hist = "lat"
    for pid in (101, 102, 103):
        _write(
            path,
            "counter",
            pid,
            [
                ("reqs", "reqs_total", {"route": "/a", "status": "200"}, pid * 1.0, 0.0),
                ("reqs", "reqs_total", {"route": '/b"\\', "status": "500"}, 2.0, 0.0),
            ],
        )
        _write(
            path,
            "histogram",
            pid,
            [
                (hist, "lat_sum", {"route": "/a"}, 0.5, 0.0),
                *[
                    (hist, "lat_bucket", {"route": "/a", "le": le}, float(i + pid % 2), 0.0)
                    for i, le in enumerate(["0.1", "1.0", "+Inf"])
                ],
            ],
        )
        _write(
            path,
            "summary",
            pid,
            [
                ("sz", "sz_count", {}, 3.0, 0.0),
                ("sz", "sz_sum", {}, 30.0, 0.0),
            ],
        )
        for mode in ("livesum", "max", "min", "livemostrecent", "all"):
            _write(
                path,
                f"gauge_{mode}",
                pid,
                [
                    (f"g_{mode}", f"g_{mode}", {"k": "v"}, float(pid % 7), 1000.0 + pid),
                ],
            )
    _write(path, "gauge_livemostrecent", 104, [("g_never", "g_never", {}, 5.0, 0.0)])
    # An older release with another help text: still the same series.
    _write(
        path,
        "counter",
        105,
        [("reqs", "reqs_total", {"route": "/a", "status": "200"}, 1.0, 0.0)],
        "old help",
    )


def test_multiprocess_reader_matches_prometheus_client(tmp_path: Any) -> None:
    """Our merge of worker files gives prometheus_client's numbers for every type and mode."""
    path = str(tmp_path)
    _mp_files(path)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    theirs = parsed(generate_latest(registry).decode())
    reader = MultiprocessReader(path)
    ours = parsed(render(reader.families()).decode())
    assert ours == theirs
    assert ours[("reqs_total", (("route", "/a"), ("status", "200")))] == 307
    again = parsed(render(reader.families()).decode())  # from the cached layouts
    assert again == ours
    om = render(reader.families(), openmetrics=True).decode()
    assert {f.name for f in parse_openmetrics(om)} >= {"reqs", "lat", "sz", "g_livesum"}


def test_multiprocess_reader_follows_growth_and_dead_workers(tmp_path: Any) -> None:
    """New series, a removed live-gauge file and a truncated file are all handled."""
    path = str(tmp_path)
    _mp_files(path)
    reader = MultiprocessReader(path)
    reader.families()
    _write(
        path, "counter", 101, [("reqs", "reqs_total", {"route": "/new", "status": "201"}, 4.0, 0.0)]
    )
    os.remove(os.path.join(path, "gauge_livesum_102.db"))
    with open(os.path.join(path, "counter_999.db"), "wb") as handle:
        handle.write((4096).to_bytes(4, "little") + b"\0" * 12)  # claims more than it holds
    with capture_logs("flask_gateway_obs.metrics"):
        text = render(reader.families()).decode()
    values = parsed(text)
    assert values[("reqs_total", (("route", "/new"), ("status", "201")))] == 4
    assert values[("g_livesum", (("k", "v"),))] == 101 % 7 + 103 % 7


def test_multiprocess_reader_rereads_a_file_written_anew_with_the_same_size(
    tmp_path: Any,
) -> None:
    """A file replaced under the same name by one of the same size with its keys in
    another order (a new process with a dead one's pid) is parsed again, not misread."""
    path = str(tmp_path)
    first = [("g", "g", {"k": "a"}, 1.0, 0.0), ("g", "g", {"k": "b"}, 2.0, 0.0)]
    _write(path, "gauge_livesum", 7, first)
    reader = MultiprocessReader(path)
    assert parsed(render(reader.families()).decode()) == {
        ("g", (("k", "a"),)): 1.0,
        ("g", (("k", "b"),)): 2.0,
    }
    newer = tmp_path / "newer"
    newer.mkdir()
    _write(str(newer), "gauge_livesum", 7, [(*first[1][:3], 20.0, 0.0), (*first[0][:3], 10.0, 0.0)])
    old_size = os.path.getsize(os.path.join(path, "gauge_livesum_7.db"))
    assert os.path.getsize(newer / "gauge_livesum_7.db") == old_size
    os.replace(newer / "gauge_livesum_7.db", os.path.join(path, "gauge_livesum_7.db"))
    assert parsed(render(reader.families()).decode()) == {
        ("g", (("k", "a"),)): 10.0,
        ("g", (("k", "b"),)): 20.0,
    }


MULTIPROCESS_SCRIPT = """
import json
import sys

from flask import Flask

from flask_gateway_obs import GatewayObs

app = Flask("script")
app.config.update(
    GATEWAY_OBS_LOG_CONFIGURE=False,
    GATEWAY_OBS_HEALTH_CHECK_DISK=False,
    GATEWAY_OBS_HEALTH_CHECK_MEMORY=False,
)
GatewayObs(app)
app.add_url_rule("/x", "x", lambda: "x")
if sys.argv[1] == "serve":
    client = app.test_client()
    client.get("/x")
    client.get("/x", headers={"traceparent": "00-%s-00f067aa0ba902b7-01" % sys.argv[2]})
    text = client.get("/metrics").get_data(as_text=True)
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    print(json.dumps({"text": text, "openmetrics": om.get_data(as_text=True)}))
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _run_script(prom: Any, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom), "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, mode, TRACE_ID],
        env=env,
        capture_output=True,
        timeout=60,
        text=True,
    )


@pytest.mark.parametrize("mode", ["load", "serve"])
def test_process_in_multiprocess_mode_leaves_no_live_gauge_file(tmp_path: Any, mode: str) -> None:
    """PROMETHEUS_MULTIPROC_DIR set: a process that only loads the app writes no metric
    file; one that served requests leaves its counters and histograms, no live gauge."""
    prom = tmp_path / "prom"
    prom.mkdir()
    result = _run_script(prom, mode)
    assert result.returncode == 0, result.stderr
    kinds = sorted(name.rsplit("_", 1)[0] for name in os.listdir(prom))
    if mode == "load":
        assert kinds == []
    else:
        assert kinds == ["counter", "histogram"]
        scraped = parsed(json.loads(result.stdout)["text"])
        assert scraped[("active_connections", ())] == 0  # present, though it was idle
        key = ("http_requests_total", (("method", "GET"), ("route", "/x"), ("status", "200")))
        assert scraped[key] == 2


def test_multiprocess_openmetrics_carries_this_workers_exemplars(tmp_path: Any) -> None:
    """In multiprocess mode the OpenMetrics scrape carries the exemplar of the sampled
    request this process served, on a bucket line; the text format none; promtool
    accepts both."""
    prom = tmp_path / "prom"
    prom.mkdir()
    result = _run_script(prom, "serve")
    assert result.returncode == 0, result.stderr
    bodies = json.loads(result.stdout)
    assert "trace_id" not in bodies["text"]
    families = {f.name: f for f in parse_openmetrics(bodies["openmetrics"])}
    exemplars = [
        s.exemplar
        for s in families["http_request_duration_seconds"].samples
        if s.exemplar is not None
    ]
    assert [e.labels for e in exemplars] == [{"trace_id": TRACE_ID}]
    promtool_check(bodies["text"])
    promtool_check_openmetrics(bodies["openmetrics"])


def test_late_multiproc_variable_is_warned_about(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """PROMETHEUS_MULTIPROC_DIR set after prometheus_client's import: a warning, one process."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with capture_logs("flask_gateway_obs.metrics") as logs:
        app = gateway(make_app)
    assert any("imported before" in r["message"] for r in logs.records)
    app.test_client().get("/items/1")
    assert metric_value(app, "http_requests_total") == 1
    assert not os.listdir(tmp_path)


FORK_SCRIPT = """
import json
import os
import threading

from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from flask_gateway_obs import GatewayObs

app = Flask("script")
app.config.update(
    GATEWAY_OBS_LOG_CONFIGURE=False,
    GATEWAY_OBS_HEALTH_CHECK_DISK=False,
    GATEWAY_OBS_HEALTH_CHECK_MEMORY=False,
)
GatewayObs(app)
app.add_url_rule("/x", "x", lambda: "x")


def serve(count):
    client = app.test_client()
    for _ in range(count):
        assert client.get("/x").status_code == 200


threads = [threading.Thread(target=serve, args=(50,)) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
pid = os.fork()
if pid == 0:
    serve(30)
    os._exit(0)
serve(10)
os.waitpid(pid, 0)
serve(10)
registry = CollectorRegistry()
MultiProcessCollector(registry)
found = {}
for family in registry.collect():
    for sample in family.samples:
        if sample.labels.get("route", "/x") == "/x" and sample.name in (
            "http_requests_total", "http_request_duration_seconds_count", "active_connections"
        ):
            found[sample.name] = found.get(sample.name, 0) + sample.value
print(json.dumps({"found": found, "parent": os.getpid(), "child": pid}))
"""


def test_threads_and_a_forked_child_lose_no_count_in_multiprocess_mode(tmp_path: Any) -> None:
    """4 threads x 50 requests, a fork, 30 in the child and 20 in the parent: 250 counted
    across the files, the child's 30 in its own file, nothing left in flight."""
    prom = tmp_path / "prom"
    prom.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom), "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], env=env, capture_output=True, timeout=60, text=True
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["found"] == {
        "http_requests_total": 250.0,
        "http_request_duration_seconds_count": 250.0,
        "active_connections": 0.0,
    }
    child = MmapedDict.read_all_values_from_file(os.path.join(prom, f"counter_{out['child']}.db"))
    assert [v for key, v, _, _ in child if "http_requests_total" in key] == [30.0]
