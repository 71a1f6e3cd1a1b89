"""``flask obs ...`` commands.

``flask obs health [--group ready]`` prints the health report as JSON and exits 0
when it is healthy or degraded and 1 when it is unhealthy, for container
``HEALTHCHECK`` lines and exec probes.
"""

from __future__ import annotations

import json

import click
from flask import Flask, current_app
from flask.cli import AppGroup

__all__ = ["obs_cli", "register"]

obs_cli = AppGroup("obs", help="flask-gateway-obs: health and diagnostics.")


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

    Exits 0 when healthy or degraded, 1 when unhealthy.
    """
    from .extension import EXTENSION_KEY
    from .health import UNHEALTHY, UnknownGroupError, runner_of

    state = current_app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise click.UsageError("flask-gateway-obs is not set up on this app (call init_app)")
    runner = runner_of(state)
    runner.log_changes = False  # stdout is for the report
    try:
        report = runner.run(group, fresh=True)
    except UnknownGroupError as exc:
        raise click.BadParameter(str(exc), param_hint="'--group'") from None
    click.echo(json.dumps(report.to_dict(details=details), indent=2, default=str))
    if report.status == UNHEALTHY:
        raise click.exceptions.Exit(1)


def register(app: Flask) -> None:
    """Add the ``obs`` command group to ``app`` (once)."""
    if "obs" not in app.cli.commands:
        app.cli.add_command(obs_cli)
