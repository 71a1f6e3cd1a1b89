"""The Grafana dashboard: the SDK's output shipped as package data, rendered for a
namespace, a job and a data source."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from flask_gateway_obs.ops import dashboard as ops_dashboard
from flask_gateway_obs.ops.names import FAMILIES, sample_names

from ..conftest import MakeApp, unavailable


def test_shipped_dashboard_is_what_the_sdk_builds() -> None:
    """dashboard.json is byte for byte what the generator builds with grafana-foundation-sdk."""
    try:
        from flask_gateway_obs.ops import build_dashboard
    except ImportError as exc:
        unavailable(f"grafana-foundation-sdk is not installed: {exc}")
        raise AssertionError from exc  # unreachable
    shipped = Path(ops_dashboard.__file__).with_name(ops_dashboard.DASHBOARD_FILE)
    assert shipped.read_text(encoding="utf-8") == build_dashboard.dump(build_dashboard.build()), (
        "dashboard.json is stale: run python -m flask_gateway_obs.ops.build_dashboard"
    )
    assert build_dashboard.main(["--check"]) == 0


def test_dashboard_has_the_rows_and_variables() -> None:
    """Rows per concern; data source, service, job and instance as template variables."""
    board = ops_dashboard.shipped_dashboard()
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == [
        "Traffic", "Errors", "Latency", "Saturation", "Dependencies", "Resilience", "Health",
    ]  # fmt: skip
    variables = {v["name"]: v["type"] for v in board["templating"]["list"]}
    assert variables == {
        "datasource": "datasource", "service": "query", "job": "query", "instance": "query",
    }  # fmt: skip
    assert board["schemaVersion"] >= 39
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["description"]


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\{)", expr))
    return {n for n in names if n != "up"}


def test_every_metric_has_a_panel() -> None:
    """Each family of the catalogue is read by at least one panel, and nothing else is."""
    board = ops_dashboard.shipped_dashboard()
    used = set().union(*(_metric_names(expr) for _, expr in ops_dashboard.panel_queries(board)))
    assert used <= set(sample_names())
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert families | {"app_info"} == set(FAMILIES)


def test_catalogue_covers_every_metric_the_app_exposes(make_app: MakeApp) -> None:
    """Every family on /metrics of an app is in the catalogue the dashboard and rules use."""
    app = make_app({"GATEWAY_OBS_HEALTH_CHECK_DISK": False})
    text = app.test_client().get("/metrics").get_data(as_text=True)
    exposed = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    ours = {n for n in exposed if not n.startswith(("process_", "python_"))}
    ours = {n if n in FAMILIES else n + "_total" for n in ours}  # text format: counters sans _total
    assert ours <= set(FAMILIES), ours - set(FAMILIES)


def test_dashboard_follows_the_namespace() -> None:
    """Under a namespace every metric a query reads is prefixed, up excepted."""
    board = ops_dashboard.render_dashboard(namespace="gw")
    for _, expr in ops_dashboard.panel_queries(board):
        for name in _metric_names(expr):
            assert name.startswith("gw_"), expr
    queries = {v["name"]: v.get("query") for v in board["templating"]["list"]}
    assert queries["service"] == "label_values(gw_app_info, service)"
    assert board["uid"] == "flask-gateway-obs-gw"
    assert "`gw_http_requests_total`" in json.dumps(board)


def test_dashboard_job_option_pins_the_job() -> None:
    """--job selects that job in every query and drops the job variable."""
    board = ops_dashboard.render_dashboard(job="edge", namespace="gw")
    text = json.dumps(board)
    assert "$job" not in text
    for _, expr in ops_dashboard.panel_queries(board):
        assert 'job="edge"' in expr
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert "job" not in variables
    assert variables["service"]["query"] == 'label_values(gw_app_info{job="edge"}, service)'
    assert variables["instance"]["query"] == 'label_values(gw_app_info{job="edge"}, instance)'


def test_dashboard_datasource_uid_pins_the_data_source() -> None:
    """--datasource-uid points every panel and variable at that uid."""
    board = ops_dashboard.render_dashboard(datasource_uid="prom-main")
    text = json.dumps(board)
    assert "${datasource}" not in text
    assert text.count('"uid": "prom-main"') > 20
    assert "datasource" not in {v["name"] for v in board["templating"]["list"]}
    assert board["uid"] == ops_dashboard.DASHBOARD_UID


def test_long_qualifiers_keep_the_uid_within_grafanas_limit() -> None:
    """A long namespace and job still make a valid, distinct Grafana uid."""
    one = ops_dashboard.render_dashboard(namespace="n" * 30, job="a-very-long-job-name-1")
    two = ops_dashboard.render_dashboard(namespace="n" * 30, job="a-very-long-job-name-2")
    assert len(one["uid"]) <= 40 and one["uid"] != two["uid"]


@pytest.mark.parametrize(
    "options",
    [{"namespace": "1bad"}, {"job": ""}, {"job": "a$job"}, {"datasource_uid": "has space"}],
)
def test_bad_dashboard_options_are_refused(options: dict[str, Any]) -> None:
    """A namespace, job or uid that cannot be one fails with a clear error."""
    with pytest.raises(ValueError, match=next(iter(options)).split("_")[0]):
        ops_dashboard.render_dashboard(**options)


def test_dashboard_json_is_deterministic() -> None:
    """The same options print the same JSON."""
    assert ops_dashboard.dashboard_json(job="x") == ops_dashboard.dashboard_json(job="x")


@pytest.mark.parametrize("namespace", [None, "gw"])
def test_breaker_state_panel_shows_the_worst_instance(
    tmp_path: Path, namespace: str | None
) -> None:
    """Per breaker the panel reads open when any instance is open, else half-open when any
    is, else closed: the state codes (0, 1, 2) stay what its value mappings name."""
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (Debian package prometheus)")
        raise AssertionError  # unreachable
    board = ops_dashboard.render_dashboard(namespace=namespace, job="gateway")
    (expr,) = [e for t, e in ops_dashboard.panel_queries(board) if t == "Circuit breaker state"]
    name = f"{namespace}_circuit_breaker_state" if namespace else "circuit_breaker_state"
    instances = {"open-and-half-open": (1, 2), "half-open-and-closed": (2, 0), "closed": (0, 0)}
    series = [
        {"series": f'{name}{{job="gateway", instance="{i}", breaker="{b}"}}', "values": f"{v}x5"}
        for b, values in instances.items()
        for i, v in zip(("a:1", "b:1"), values, strict=True)
    ]
    series.append(  # another job is left out
        {"series": f'{name}{{job="other", instance="c:1", breaker="closed"}}', "values": "1x5"}
    )
    expected = {"open-and-half-open": 1, "half-open-and-closed": 2, "closed": 0}
    test = {
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr.replace('"$instance"', '".+"'),
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": f'{{breaker="{b}"}}', "value": v}
                            for b, v in expected.items()
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "panel.test.yml").write_text(yaml.safe_dump(test))
    done = subprocess.run(
        [promtool, "test", "rules", "panel.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (panel,) = [p for p in board["panels"] if p.get("title") == "Circuit breaker state"]
    mapped = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {k: m["text"] for k, m in mapped.items()} == {
        "0": "closed",
        "1": "open",
        "2": "half-open",
    }


def test_readme_describes_every_panel() -> None:
    """Each row and panel title of the dashboard is described in the README."""
    readme = (Path(__file__).resolve().parents[2] / "README.rst").read_text()
    section = readme.split("The dashboard\n-------------", 1)[1].split("The rules\n---------")[0]
    text = " ".join(section.split())
    board = ops_dashboard.shipped_dashboard()
    for panel in board["panels"]:
        title = panel["title"]
        if panel["type"] == "row":
            assert f"**{title}.**" in text, title
        else:
            latency = title.startswith("Latency p")
            assert ("Latency p50 / p95 / p99 by route" if latency else title) in text, title
