"""The operations kit: the rules pass promtool's checks and unit tests; the dashboard is
the SDK's output and renders for a namespace, a job and a data source."""

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
from flask_gateway_obs.ops.rules import ALERT_NAMES, RulesOptions, render_rules, rule_groups

from .conftest import MakeApp, unavailable

PROMTOOL_TESTS = Path(__file__).with_name("promtool")


@pytest.fixture(scope="module")
def promtool() -> str:
    """Path of promtool (Debian's prometheus package)."""
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool is not installed (Debian package prometheus)")
        raise AssertionError  # unreachable
    return path


def _run(promtool: str, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def _alerts(options: RulesOptions | None = None) -> list[dict[str, Any]]:
    groups = rule_groups(options)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# --- rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        RulesOptions(),
        RulesOptions(namespace="gw", job="payments-gateway"),
        RulesOptions(job='we"ird\\job', availability=0.9999, latency_seconds=2.5),
    ],
    ids=["default", "namespaced", "quoted-job"],
)
def test_rules_pass_promtool_check(promtool: str, tmp_path: Path, options: RulesOptions) -> None:
    """`promtool check rules` accepts the rules for the default and a namespaced config."""
    (tmp_path / "rules.yml").write_text(render_rules(options))
    output = _run(promtool, "check", "rules", "rules.yml", cwd=tmp_path)
    assert "SUCCESS" in output


@pytest.mark.parametrize(
    ("test_file", "options"),
    [
        ("alerts.test.yml", RulesOptions()),
        ("alerts_job.test.yml", RulesOptions(job="gateway")),
        (
            "alerts_namespace.test.yml",
            RulesOptions(namespace="gw", availability=0.99, latency_seconds=1.0),
        ),
    ],
)
def test_rules_pass_promtool_unit_tests(
    promtool: str, tmp_path: Path, test_file: str, options: RulesOptions
) -> None:
    """Every alert fires on the series that should fire it and stays silent on healthy
    series and on its boundary (tests/promtool/*.test.yml)."""
    (tmp_path / "rules.yml").write_text(render_rules(options))
    shutil.copy(PROMTOOL_TESTS / test_file, tmp_path / test_file)
    output = _run(promtool, "test", "rules", test_file, cwd=tmp_path)
    assert "SUCCESS" in output


def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    """Each alert named in the contract has a unit test expecting it to fire."""
    texts = "".join(p.read_text() for p in PROMTOOL_TESTS.glob("*.test.yml"))
    tests = yaml.safe_load_all(texts.replace("rule_files:", "---\nrule_files:"))
    fired = {
        case["alertname"]
        for doc in tests
        if doc
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == set(ALERT_NAMES)


def test_rules_yaml_is_the_rule_groups() -> None:
    """The YAML printed parses back to exactly the rule groups built."""
    options = RulesOptions(namespace="gw", job="a: b # c")
    assert yaml.safe_load(render_rules(options)) == rule_groups(options)


def test_every_alert_carries_severity_and_annotations() -> None:
    """Each alert has severity, summary, description and a runbook_url naming its section."""
    alerts = _alerts()
    assert {a["alert"] for a in alerts} == set(ALERT_NAMES)
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert alert["annotations"]["summary"]
        assert alert["annotations"]["description"]
        assert alert["annotations"]["runbook_url"].endswith("#" + alert["alert"].lower())


def test_recording_rules_follow_level_metric_operations() -> None:
    """Recorded series are named level:metric:operations and carry the namespace."""
    groups = rule_groups(RulesOptions(namespace="gw"))["groups"]
    records = [rule["record"] for group in groups for rule in group["rules"] if "record" in rule]
    assert records
    for name in records:
        level, metric, operations = name.split(":")
        assert re.fullmatch(r"[a-z_]+", level) and re.fullmatch(r"[a-z0-9_]+", operations)
        assert metric.startswith("gw_")


def test_error_budget_alert_is_multi_window_multi_burn_rate() -> None:
    """The page burns 14.4x over 1h and 5m, the ticket 6x over 6h and 30m, of 1 - SLO."""
    burns = [a for a in _alerts(RulesOptions(availability=0.995)) if a["alert"].endswith("Burn")]
    assert [(a["labels"]["severity"], a["expr"]) for a in burns] == [
        (
            "critical",
            "job:http_requests_5xx:ratio_rate1h > 0.072\nand\n"
            "job:http_requests_5xx:ratio_rate5m > 0.072",
        ),
        (
            "warning",
            "job:http_requests_5xx:ratio_rate6h > 0.03\nand\n"
            "job:http_requests_5xx:ratio_rate30m > 0.03",
        ),
    ]


def test_job_selects_every_series() -> None:
    """With a job, every selector of every rule names it."""
    groups = rule_groups(RulesOptions(job="edge"))["groups"]
    text = "\n".join(rule["expr"] for group in groups for rule in group["rules"])
    for name in sample_names():
        for found in re.finditer(rf"\b{name}\b(\{{[^}}]*\}})?", text):
            assert found.group(1) and 'job="edge"' in found.group(1), found.group(0)
    assert 'up{job="edge"} == 0' in text


def test_for_duration_option_shortens_every_for() -> None:
    """The test option replaces every alert's for: and nothing else."""
    short = _alerts(RulesOptions(for_duration="1s"))
    normal = _alerts()
    assert {a["for"] for a in short} == {"1s"}
    assert len({a["for"] for a in normal}) > 1
    assert [{**a, "for": None} for a in short] == [{**a, "for": None} for a in normal]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"latency_seconds": 0.3}, "not a bucket bound of http_request_duration_seconds"),
        ({"latency_seconds": 3, "buckets": (1.0, 2.0)}, "(1.0, 2.0)"),
        ({"availability": 1.0}, "availability must be between 0 and 1"),
        ({"latency_target": 0}, "latency_target must be between 0 and 1"),
        ({"for_duration": "soon"}, "for_duration must look like"),
    ],
)
def test_bad_rule_options_are_refused(options: dict[str, Any], message: str) -> None:
    """An objective that is no bucket bound, or out of range, fails with a clear error."""
    with pytest.raises(ValueError, match=re.escape(message)):
        RulesOptions(**options)


def test_latency_bound_matches_every_spelling_of_le() -> None:
    """A whole-second bound matches le="1.0" (prometheus_client) and le="1" (Prometheus 3)."""
    (slow, *_) = [
        rule["expr"]
        for group in rule_groups(RulesOptions(latency_seconds=1))["groups"]
        for rule in group["rules"]
        if rule.get("record", "").startswith("job:http_requests_slow:")
    ]
    assert 'le=~"1|1\\\\.0"' in slow
    assert 'le="0.5"' in render_rules()


# --- dashboard ----------------------------------------------------------------------


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
