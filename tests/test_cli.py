"""``flask obs health``: JSON report on stdout, exit 0 healthy/degraded, 1 unhealthy."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask

from flask_gateway_obs import CheckResult, GatewayObs
from flask_gateway_obs.config import Keys

from .conftest import MakeApp, free_port

QUIET = {Keys.HEALTH_CHECK_MEMORY: False, Keys.HEALTH_CHECK_DISK: False}


def build(make_app: MakeApp, config: dict[str, Any] | None = None) -> tuple[Flask, GatewayObs]:
    """An app and the GatewayObs set up on it."""
    app = make_app(config, init=False)
    return app, GatewayObs(app)


def invoke(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["obs", "health", *args])
    return result.exit_code, result.output


def test_healthy_report_exits_0_with_json(
    make_app: MakeApp, redis_url: str, database_url: str
) -> None:
    """Real Redis and PostgreSQL: exit 0 and the report as JSON."""
    app, _ = build(make_app, {Keys.REDIS_URL: redis_url, Keys.DATABASE_URL: database_url})
    code, output = invoke(app)
    assert code == 0
    report = json.loads(output)
    assert report["status"] == "healthy"
    assert set(report["checks"]) == {"redis", "postgres", "memory", "disk"}


def test_degraded_report_exits_0(make_app: MakeApp) -> None:
    """Degraded still serves traffic, so the probe passes."""
    app, obs = build(make_app, QUIET)
    obs.health_check("queue")(lambda: CheckResult.degraded("backlog"))
    code, output = invoke(app)
    assert code == 0
    assert json.loads(output)["status"] == "degraded"


def test_unhealthy_report_exits_1_with_masked_details(make_app: MakeApp) -> None:
    """A critical dependency down: exit 1; the details say why, with the password masked."""
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    app, _ = build(make_app, {**QUIET, Keys.REDIS_URL: url})
    code, output = invoke(app)
    assert code == 1
    report = json.loads(output)
    assert report["status"] == "unhealthy"
    assert report["checks"]["redis"]["reason"] == "ConnectionError"
    assert "s3cret" not in output


def test_no_details_prints_the_short_body(make_app: MakeApp) -> None:
    """--no-details prints what an unauthenticated HTTP probe would see."""
    app, obs = build(make_app, QUIET)
    obs.health_check("broken")(lambda: CheckResult.unhealthy("disk on fire"))
    code, output = invoke(app, "--no-details")
    assert code == 1
    assert json.loads(output)["checks"]["broken"] == {
        "status": "unhealthy",
        "response_time_ms": json.loads(output)["checks"]["broken"]["response_time_ms"],
    }
    assert "disk on fire" not in output


def test_group_option_selects_the_checks(make_app: MakeApp) -> None:
    """--group ready runs the ready group only; a non-ready failure does not count."""
    app, obs = build(make_app, QUIET)
    obs.health_check("dependency")(lambda: None)
    obs.health_check("batch_only", groups=("batch",))(lambda: False)
    code, output = invoke(app, "--group", "ready")
    assert code == 0
    assert set(json.loads(output)["checks"]) == {"dependency"}
    code, output = invoke(app, "--group", "batch")
    assert code == 1
    assert set(json.loads(output)["checks"]) == {"batch_only"}


def test_live_group_never_touches_dependencies(make_app: MakeApp) -> None:
    """--group live passes while Redis is unreachable."""
    app, _ = build(make_app, {**QUIET, Keys.REDIS_URL: f"redis://127.0.0.1:{free_port()}/0"})
    code, output = invoke(app, "--group", "live")
    assert code == 0
    assert json.loads(output)["checks"] == {}


def test_unknown_group_is_a_usage_error(make_app: MakeApp) -> None:
    """An unknown group exits 2 with the known groups in the message."""
    app, _ = build(make_app, QUIET)
    code, output = invoke(app, "--group", "nope")
    assert code == 2
    assert "unknown health group 'nope'" in output
    assert "live, ready" in output


def test_cli_ignores_the_cache(make_app: MakeApp) -> None:
    """Each invocation runs the checks, whatever a previous probe cached."""
    app, obs = build(make_app, QUIET)
    calls: list[int] = []
    obs.health_check("counted")(lambda: calls.append(1))
    invoke(app)
    invoke(app)
    assert len(calls) == 2


def test_help_lists_the_command(make_app: MakeApp) -> None:
    """`flask obs --help` shows the health command."""
    app, _ = build(make_app, QUIET)
    result = app.test_cli_runner().invoke(args=["obs", "--help"])
    assert result.exit_code == 0
    assert "health" in result.output
