"""``flask obs health``: JSON report on stdout, exit 0 healthy/degraded, 1 unhealthy."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from typing import Any

from flask import Flask

import flask_gateway_obs
from flask_gateway_obs import CheckResult, GatewayObs
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.state import EXTENSION_KEY

from .conftest import MakeApp, free_port

QUIET = {Keys.HEALTH_CHECK_MEMORY: False, Keys.HEALTH_CHECK_DISK: False}
#: The checkout under test, ahead of whatever copy of the package the interpreter has.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(flask_gateway_obs.__file__)))


def build(make_app: MakeApp, config: dict[str, Any] | None = None) -> tuple[Flask, GatewayObs]:
    """An app and the GatewayObs set up on it."""
    app = make_app(config, init=False)
    return app, GatewayObs(app)


def invoke(app: Flask, *args: str) -> tuple[int, str]:
    """Exit code and stdout (stderr apart) of ``flask obs health *args``."""
    result = app.test_cli_runner().invoke(args=["obs", "health", *args])
    return result.exit_code, result.stdout


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
    result = app.test_cli_runner().invoke(args=["obs", "health", "--group", "nope"])
    assert result.exit_code == 2
    assert "unknown health group 'nope'" in result.stderr
    assert "live, ready" in result.stderr
    assert result.stdout == ""


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


def test_stdout_is_only_the_report_while_checks_log_and_print(make_app: MakeApp) -> None:
    """Records logged and text printed during the run go to stderr; stdout is pure JSON;
    the runner's status-change logging and the app's recorder are put back afterwards."""
    app, obs = build(make_app, QUIET)  # the extension's JSON log handler on stdout

    @obs.health_check("noisy")
    def noisy() -> None:
        logging.getLogger("mylib").warning("retrying connection")
        print("chatter")

    state = app.extensions[EXTENSION_KEY]
    recorder = state.recorder
    result = app.test_cli_runner().invoke(args=["obs", "health"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["checks"]["noisy"]["status"] == "healthy"
    assert "retrying connection" in result.stderr
    assert "chatter" in result.stderr
    assert state.health.log_changes is True
    assert state.recorder is recorder


def test_a_failed_run_restores_the_runner_and_recorder(make_app: MakeApp) -> None:
    """Even when the command fails, status-change logging and the recorder come back."""
    app, _ = build(make_app, QUIET)
    state = app.extensions[EXTENSION_KEY]
    recorder = state.recorder
    assert invoke(app, "--group", "nope")[0] == 2
    assert state.health.log_changes is True
    assert state.recorder is recorder


def test_the_command_feeds_no_metric(make_app: MakeApp) -> None:
    """A CLI run is not the server's: health_check_status and errors_total stay untouched."""
    from flask_gateway_obs.testing import metric_value

    app, obs = build(make_app, QUIET)
    obs.health_check("down")(lambda: False)
    assert invoke(app)[0] == 1
    assert metric_value(app, "health_check_status") == 0
    assert metric_value(app, "dependency_latency_seconds_count") == 0
    assert metric_value(app, "errors_total") == 0


CLI_APP = textwrap.dedent(
    """
    import logging
    import sys

    from flask import Flask

    from flask_gateway_obs import GatewayObs

    # a library logging to stdout with a handler of its own, besides the extension's
    logging.getLogger("mylib").addHandler(logging.StreamHandler(sys.stdout))
    app = Flask("cliapp")
    app.config.update(
        GATEWAY_OBS_HEALTH_CHECK_DISK=False,
        GATEWAY_OBS_HEALTH_CHECK_MEMORY=False,
        GATEWAY_OBS_REDIS_URL="redis://127.0.0.1:{port}/0",
    )
    obs = GatewayObs(app)


    @obs.health_check("noisy", critical=False)
    def noisy():
        logging.getLogger("mylib").warning("retrying connection")
        return False
    """
)


def test_command_in_a_multiprocess_deployment_leaves_the_directory_alone(tmp_path: Any) -> None:
    """A real `flask obs health` with PROMETHEUS_MULTIPROC_DIR set: no metric file is
    written or left behind (the workers' scrapes would count it forever), the workers'
    files are untouched, stdout is the report alone and the exit code is 1."""
    (tmp_path / "cliapp.py").write_text(CLI_APP.format(port=free_port()))
    prom = tmp_path / "prom"
    prom.mkdir()
    live_worker = prom / "gauge_livesum_999999.db"  # a worker of the running server
    live_worker.write_bytes(b"")
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), PACKAGE_ROOT]),
        "FLASK_APP": "cliapp",
    }
    result = subprocess.run(
        [sys.executable, "-m", "flask", "obs", "health"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["checks"]["redis"]["status"] == "unhealthy"
    assert report["checks"]["noisy"]["status"] == "unhealthy"
    assert result.stderr.count("retrying connection") == 2  # JSON line and plain line
    assert sorted(os.listdir(prom)) == [live_worker.name]


def test_the_command_says_which_dependencies_it_checked(make_app: MakeApp, redis_url: str) -> None:
    """stderr names each check that ran, with its target (password masked), and each
    built-in dependency that was not checked, with why."""
    url = redis_url.replace("redis://", "redis://:s3cret@", 1)
    app, _ = build(make_app, {Keys.REDIS_URL: url, Keys.HEALTH_CHECK_DISK: False})
    result = app.test_cli_runner().invoke(args=["obs", "health"])
    lines = result.stderr.splitlines()
    masked = redis_url.replace("redis://", "redis://:***@", 1)
    assert f"checked: redis ({masked}), memory" in lines
    assert (
        "not checked: postgres (no GATEWAY_OBS_DATABASE_URL in app.config, no pool given), "
        "disk (off: GATEWAY_OBS_HEALTH_CHECK_DISK)"
    ) in lines
    assert "s3cret" not in result.stderr + result.stdout
    result = app.test_cli_runner().invoke(args=["obs", "health", "--group", "live"])
    assert "checked: nothing" in result.stderr.splitlines()


def test_the_command_names_variables_app_config_never_received(
    make_app: MakeApp, monkeypatch: Any
) -> None:
    """A Redis URL exported without the FLASK_ prefix: the command says Redis was not
    checked and names the variable that never reached app.config (not its value)."""
    monkeypatch.setenv("GATEWAY_OBS_REDIS_URL", "redis://:s3cret@127.0.0.1:6379/0")
    app, _ = build(make_app, QUIET)
    result = app.test_cli_runner().invoke(args=["obs", "health"])
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert any(line.startswith("not checked: redis (no GATEWAY_OBS_REDIS_URL") for line in lines)
    assert "not received by app.config (no effect): GATEWAY_OBS_REDIS_URL" in lines
    assert "s3cret" not in result.stderr + result.stdout
