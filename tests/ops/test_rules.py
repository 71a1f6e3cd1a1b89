"""The Prometheus rules: promtool's checks and unit tests pass, and the rules follow the
namespace, the job and the objectives."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from flask_gateway_obs.ops.names import sample_names
from flask_gateway_obs.ops.rules import ALERT_NAMES, RulesOptions, render_rules, rule_groups

from ..conftest import unavailable

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


def test_every_runbook_url_names_a_readme_section() -> None:
    """Each alert's runbook_url anchor is a section of the README that says what to do."""
    import docutils.core

    readme = Path(__file__).resolve().parents[2] / "README.rst"
    tree = docutils.core.publish_doctree(readme.read_text(), settings_overrides={"report_level": 5})
    sections = {
        section["ids"][0]: section.astext()
        for section in tree.findall(lambda n: n.tagname == "section")
    }
    for alert in _alerts(RulesOptions(job="x")):
        anchor = alert["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in sections, alert["alert"]
        assert len(sections[anchor]) > 200, f"{alert['alert']}: the runbook says too little"
