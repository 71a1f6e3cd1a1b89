"""``flask obs ...`` commands.

``flask obs health [--group ready]`` prints the health report as JSON and exits 0
when it is healthy or degraded and 1 when it is unhealthy, for container
``HEALTHCHECK`` lines and exec probes.

``flask obs dashboard [--job JOB] [--datasource-uid UID]`` prints the Grafana dashboard
and ``flask obs rules [--job JOB]`` the Prometheus rules, both for the app's metric
names (``GATEWAY_OBS_METRICS_NAMESPACE``) and objectives (``GATEWAY_OBS_SLO_*``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

if TYPE_CHECKING:
    from .core.state import ObsState

__all__ = ["obs_cli", "register"]

obs_cli = AppGroup("obs", help="flask-gateway-obs: health, dashboard and alerting rules.")

_JOB_HELP = 'Name of the Prometheus scrape job; every query then selects job="JOB".'


def _state() -> ObsState:
    from .core.state import state_of

    state = state_of(current_app)
    if state is None:
        raise click.UsageError("flask-gateway-obs is not set up on this app (call init_app)")
    return state


@obs_cli.command("health")
@click.option(
    "--group",
    default=None,
    metavar="NAME",
    help="Only the checks of this group (ready, live or your own); default: every check.",
)
@click.option(
    "--details/--no-details",
    default=True,
    show_default=True,
    help="Include reasons, errors, targets and figures (passwords are always masked).",
)
def health_command(group: str | None, details: bool) -> None:
    """Run the health checks now and print the report as JSON.

    Exits 0 when healthy or degraded, 1 when unhealthy. Only the report goes to
    stdout; anything logged or printed meanwhile goes to stderr, and so does a summary:
    which checks ran (and against what), which built-in dependency was not checked and
    why, and any ``GATEWAY_OBS_*`` variable of the environment that app.config never
    received. The run feeds no
    metric: this process is not the server, and in a multi-worker deployment
    (``PROMETHEUS_MULTIPROC_DIR``) its numbers would add to the workers' for good.
    """
    from .config import unreceived_environment
    from .core.contracts import Recorder
    from .health import UNHEALTHY, UnknownGroupError, runner_of, unchecked_builtins

    state = _state()
    runner = runner_of(state)
    log_changes, recorder = runner.log_changes, state.recorder
    runner.log_changes = False  # a one-off process has no previous status to compare with
    state.recorder = Recorder()
    try:
        with _stdout_for_the_report_only() as stdout:
            try:
                report = runner.run(group, fresh=True)
            except UnknownGroupError as exc:
                raise click.BadParameter(str(exc), param_hint="'--group'") from None
            click.echo(json.dumps(report.to_dict(details=details), indent=2, default=str), stdout)
        registered = runner.checks
        checked = [
            _described(name, registered[name].target if details else None) for name in report.checks
        ]
        click.echo(f"checked: {', '.join(checked) or 'nothing'}", err=True)
        unchecked = [f"{name} ({why})" for name, why in unchecked_builtins(state)]
        if unchecked:
            click.echo(f"not checked: {', '.join(unchecked)}", err=True)
        unreceived = unreceived_environment(current_app.config)
        if unreceived:
            click.echo(f"not received by app.config (no effect): {', '.join(unreceived)}", err=True)
    finally:
        runner.log_changes = log_changes
        state.recorder = recorder
    if report.status == UNHEALTHY:
        raise click.exceptions.Exit(1)


def _described(name: str, target: Mapping[str, Any] | None) -> str:
    """``name``, with what it talks to when known (passwords masked)."""
    from .health import mask_secrets

    if not target:
        return name
    return f"{name} ({', '.join(mask_secrets(str(value)) for value in target.values())})"


@obs_cli.command("dashboard")
@click.option("--job", default=None, metavar="JOB", help=_JOB_HELP + " Default: a variable.")
@click.option(
    "--datasource-uid",
    default=None,
    metavar="UID",
    help="Grafana uid of the Prometheus data source to use. Default: a variable.",
)
def dashboard_command(job: str | None, datasource_uid: str | None) -> None:
    """Print a Grafana dashboard (JSON) of the app's metrics, to import into Grafana.

    Rows: traffic, errors, latency, saturation, dependencies, resilience and health.
    The data source, service, job and instance are template variables unless pinned.
    """
    from .ops.dashboard import dashboard_json

    settings = _state().settings
    try:
        text = dashboard_json(
            namespace=settings.metrics_namespace, job=job, datasource_uid=datasource_uid
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with _stdout_for_the_report_only() as stdout:
        click.echo(text, stdout, nl=False)


@obs_cli.command("rules")
@click.option("--job", default=None, metavar="JOB", help=_JOB_HELP)
@click.option(
    "--runbook-base",
    default=None,
    metavar="URL",
    help="Page whose sections the runbook_url annotations point to (#<alert name>); "
    "default: the project's README.",
)
# For tests that cannot wait minutes: replaces every alert's ``for:``.
@click.option("--for", "for_duration", default=None, hidden=True)
def rules_command(job: str | None, runbook_base: str | None, for_duration: str | None) -> None:
    """Print Prometheus recording rules and alerts (YAML) for the app's metrics.

    The error-budget and latency alerts follow GATEWAY_OBS_SLO_AVAILABILITY,
    GATEWAY_OBS_SLO_LATENCY_SECONDS and GATEWAY_OBS_SLO_LATENCY_TARGET. Check the
    output with `promtool check rules`.
    """
    from .config import ConfigError
    from .config.slo import DEFAULT_LATENCY_SECONDS, latency_problem
    from .ops.rules import RUNBOOK_BASE, RulesOptions, render_rules

    settings = _state().settings
    problem = latency_problem(settings)
    if problem is not None:
        raise click.ClickException(f"{ConfigError([problem])}\n  (set it to generate the rules)")
    if job is not None and (not job or not job.isprintable()):
        raise click.BadParameter("a non-empty printable name is needed", param_hint="'--job'")
    try:
        options = RulesOptions(
            namespace=settings.metrics_namespace,
            job=job,
            availability=settings.slo_availability,
            latency_seconds=settings.slo_latency_seconds or DEFAULT_LATENCY_SECONDS,
            latency_target=settings.slo_latency_target,
            buckets=settings.metrics_buckets,
            runbook_base=runbook_base or RUNBOOK_BASE,
            for_duration=for_duration,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with _stdout_for_the_report_only() as stdout:
        click.echo(render_rules(options), stdout, nl=False)


@contextlib.contextmanager
def _stdout_for_the_report_only() -> Iterator[IO[str]]:
    """Send what would be logged or printed to stdout to stderr; yield the real stdout.

    The extension's log handler writes to whatever ``sys.stdout`` is, so swapping it
    covers that handler and ``print``; a plain ``StreamHandler`` bound to stdout (e.g.
    ``logging.basicConfig(stream=sys.stdout)``) is pointed at stderr meanwhile.
    """
    stdout, stderr = sys.stdout, sys.stderr
    moved: list[logging.StreamHandler[IO[str]]] = []
    known = list(logging.Logger.manager.loggerDict.values())  # a copy: it may grow meanwhile
    loggers = [logging.getLogger(), *(v for v in known if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            if (
                isinstance(handler, logging.StreamHandler)
                and handler.stream is stdout
                and handler not in moved
            ):
                handler.setStream(stderr)
                moved.append(handler)
    try:
        with contextlib.redirect_stdout(stderr):
            yield stdout
    finally:
        for handler in moved:
            handler.setStream(stdout)


def register(app: Flask) -> None:
    """Add the ``obs`` command group to ``app`` (once)."""
    if "obs" not in app.cli.commands:
        app.cli.add_command(obs_cli)
