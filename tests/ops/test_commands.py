"""``flask obs dashboard`` and ``flask obs rules``: the app's names and objectives, clean
stdout, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask

from flask_gateway_obs.config import ConfigError, Keys
from flask_gateway_obs.ops.dashboard import render_dashboard
from flask_gateway_obs.ops.rules import RulesOptions, render_rules

from ..conftest import MakeApp, unavailable


def invoke(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["obs", *args])
    return result.exit_code, result.output


def test_rules_command_prints_the_rules_for_the_app(make_app: MakeApp, tmp_path: Path) -> None:
    """`flask obs rules --job` prints the rules of the app's namespace and objectives,
    which promtool accepts."""
    app = make_app(
        {
            Keys.METRICS_NAMESPACE: "gw",
            Keys.SLO_AVAILABILITY: 0.995,
            Keys.SLO_LATENCY_SECONDS: 1.0,
            Keys.SLO_LATENCY_TARGET: 0.95,
        }
    )
    code, output = invoke(app, "rules", "--job", "edge")
    assert code == 0, output
    expected = RulesOptions(
        namespace="gw", job="edge", availability=0.995, latency_seconds=1.0, latency_target=0.95
    )
    assert output == render_rules(expected)
    alerts = [r for g in yaml.safe_load(output)["groups"] for r in g["rules"] if "alert" in r]
    exprs = {(r["alert"], r["labels"]["severity"]): r["expr"] for r in alerts}
    assert "ratio_rate1h > 0.072" in exprs["GatewayObsErrorBudgetBurn", "critical"]
    assert "ratio_rate6h > 0.03" in exprs["GatewayObsErrorBudgetBurn", "warning"]
    assert "ratio_rate1h > 0.05" in exprs["GatewayObsLatencySLO", "warning"]
    _promtool_checks_rules(output, tmp_path)


def test_rules_command_prints_thresholds_without_float_noise(
    make_app: MakeApp, tmp_path: Path
) -> None:
    """At the highest availability objective (0.99999) and latency target the thresholds
    and the budget print as their decimals (0.000144, 6e-05, 0.001 %), which promtool accepts."""
    app = make_app({Keys.SLO_AVAILABILITY: 0.99999, Keys.SLO_LATENCY_TARGET: "0.99999"})
    code, output = invoke(app, "rules")
    assert code == 0, output
    alerts = [r for g in yaml.safe_load(output)["groups"] for r in g["rules"] if "alert" in r]
    rules = {(r["alert"], r["labels"]["severity"]): r for r in alerts}
    critical = rules["GatewayObsErrorBudgetBurn", "critical"]
    warning = rules["GatewayObsErrorBudgetBurn", "warning"]
    latency = rules["GatewayObsLatencySLO", "warning"]
    ratio = "job:http_requests_5xx:ratio_rate"
    assert critical["expr"] == f"{ratio}1h > 0.000144\nand\n{ratio}5m > 0.000144"
    assert warning["expr"] == f"{ratio}6h > 6e-05\nand\n{ratio}30m > 6e-05"
    assert latency["expr"].endswith("ratio_rate5m > 1e-05")
    for rule in (critical, warning):
        assert "objective of 99.999 % allows 0.001 %." in rule["annotations"]["description"]
    assert "the objective allows 0.001 %." in latency["annotations"]["description"]
    assert "99999999" not in output and "00000000" not in output
    _promtool_checks_rules(output, tmp_path)


def test_rules_command_defaults(make_app: MakeApp) -> None:
    """Without options: no job selector, 0.999 availability, 0.5 s for 99 % of requests."""
    code, output = invoke(make_app(), "rules")
    assert code == 0, output
    assert output == render_rules(RulesOptions())


def test_rules_command_hidden_for_option_shortens_every_for(make_app: MakeApp) -> None:
    """The hidden --for option (for tests) sets every alert's for: and is not in --help."""
    app = make_app()
    code, output = invoke(app, "rules", "--for", "2s")
    assert code == 0, output
    fors = {r["for"] for g in yaml.safe_load(output)["groups"] for r in g["rules"] if "alert" in r}
    assert fors == {"2s"}
    assert "--for" not in invoke(app, "rules", "--help")[1]
    code, output = invoke(app, "rules", "--for", "later")
    assert code == 2 and "for_duration must look like" in output


def test_rules_command_runbook_base(make_app: MakeApp) -> None:
    """--runbook-base points every runbook_url at another page, one section per alert."""
    code, output = invoke(make_app(), "rules", "--runbook-base", "https://wiki.example/gw")
    assert code == 0, output
    urls = {
        r["annotations"]["runbook_url"]
        for g in yaml.safe_load(output)["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert "https://wiki.example/gw#gatewayobstargetdown" in urls


def test_rules_command_needs_a_latency_objective_on_a_bucket(make_app: MakeApp) -> None:
    """Buckets without 0.5 s are fine until rules are generated: then the error names
    GATEWAY_OBS_SLO_LATENCY_SECONDS and the bounds it may take."""
    app = make_app({Keys.METRICS_BUCKETS: [0.1, 0.2, 1.0]})
    code, output = invoke(app, "rules")
    assert code == 1
    assert "GATEWAY_OBS_SLO_LATENCY_SECONDS" in output and "(0.1, 0.2, 1)" in output


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({Keys.SLO_LATENCY_SECONDS: 0.3}, Keys.SLO_LATENCY_SECONDS),
        (
            {Keys.SLO_LATENCY_SECONDS: 0.25, Keys.METRICS_BUCKETS: [0.1, 0.5]},
            Keys.SLO_LATENCY_SECONDS,
        ),
        ({Keys.SLO_AVAILABILITY: 1.0}, Keys.SLO_AVAILABILITY),
        ({Keys.SLO_AVAILABILITY: "high"}, Keys.SLO_AVAILABILITY),
        ({Keys.SLO_LATENCY_TARGET: 0.1}, Keys.SLO_LATENCY_TARGET),
    ],
)
def test_bad_objectives_fail_at_init_app(
    make_app: MakeApp, config: dict[str, Any], key: str
) -> None:
    """An objective out of range, or a latency that is no bucket bound, is a ConfigError."""
    with pytest.raises(ConfigError) as info:
        make_app(config)
    assert [problem[0] for problem in info.value.problems] == [key]


def test_objectives_from_the_environment(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """String values (from_prefixed_env) parse like numbers."""
    app = make_app({Keys.SLO_AVAILABILITY: "0.99", Keys.SLO_LATENCY_SECONDS: "0.25"})
    code, output = invoke(app, "rules")
    assert code == 0, output
    assert output == render_rules(RulesOptions(availability=0.99, latency_seconds=0.25))


def test_dashboard_command_prints_the_dashboard(make_app: MakeApp) -> None:
    """`flask obs dashboard` prints the shipped dashboard for the app's namespace, with
    the job and data source pinned when asked."""
    app = make_app({Keys.METRICS_NAMESPACE: "gw"})
    code, output = invoke(app, "dashboard", "--job", "edge", "--datasource-uid", "prom1")
    assert code == 0, output
    board = json.loads(output)
    assert board == render_dashboard(namespace="gw", job="edge", datasource_uid="prom1")
    code, output = invoke(app, "dashboard")
    assert json.loads(output) == render_dashboard(namespace="gw")


def test_dashboard_command_refuses_a_bad_uid(make_app: MakeApp) -> None:
    """A data source uid Grafana would refuse is a usage error, not a broken dashboard."""
    code, output = invoke(make_app(), "dashboard", "--datasource-uid", "not a uid")
    assert code == 2 and "datasource uid" in output


def test_commands_need_the_extension(tmp_path: Path) -> None:
    """On an app without the extension the commands say what is missing."""
    from flask_gateway_obs.cli import register

    app = Flask("bare", instance_path=str(tmp_path))
    register(app)
    for command in ("rules", "dashboard"):
        code, output = invoke(app, command)
        assert code == 2 and "not set up on this app" in output


def _promtool_checks_rules(output: str, tmp_path: Path) -> None:
    """``promtool check rules`` accepts ``output``."""
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (Debian package prometheus)")
        return
    (tmp_path / "rules.yml").write_text(output)
    done = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
