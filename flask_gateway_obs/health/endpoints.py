"""The health endpoints: ``/health``, ``/health/live`` and ``/health/ready``.

Each endpoint runs its group's checks through the app's runner and renders the report;
while the app drains (``state.draining``, see :mod:`flask_gateway_obs.core.drain`),
readiness and ``/health`` answer unhealthy at once without running a check, always with
503 whatever ``GATEWAY_OBS_HEALTH_HTTP_STATUS_UNHEALTHY`` says (the status that takes a
draining worker out of rotation is not a matter of taste), and liveness answers as always.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, request

from .model import DEGRADED, HEALTHY, LIVE, READY, UNHEALTHY
from .runner import runner_of

if TYPE_CHECKING:
    from ..core.state import ObsState

__all__ = ["DRAINING_HTTP_STATUS", "HealthEndpoint", "register"]

#: The status of readiness and ``/health`` while the app drains, whatever the configured
#: status of an unhealthy report: a load balancer must stop sending traffic.
DRAINING_HTTP_STATUS = 503


class HealthEndpoint:
    """The view of one health endpoint: runs the group's checks and renders the body."""

    def __init__(self, state: ObsState, group: str | None) -> None:
        settings = state.settings
        self.state = state
        self.group = group
        self.policy = settings.health_show_details
        self.token = (settings.health_token or "").encode("utf-8")
        self.token_header = settings.health_token_header
        self.status_codes = {
            HEALTHY: settings.health_http_status_healthy,
            DEGRADED: settings.health_http_status_degraded,
            UNHEALTHY: settings.health_http_status_unhealthy,
        }

    def __call__(self) -> Response:
        runner = runner_of(self.state)
        if self.state.draining and self.group != LIVE:
            report = runner.draining_report(self.group)
            status = DRAINING_HTTP_STATUS
        else:
            report = runner.run(self.group)
            status = self.status_codes[report.status]
        body = report.to_dict(details=self.show_details())
        return Response(
            json.dumps(body, default=str),
            status=status,
            mimetype="application/json",
            headers={"Cache-Control": "no-store"},
        )

    def show_details(self) -> bool:
        """Whether this request may see details, by the configured policy."""
        if self.policy == "never":
            return False
        if self.policy == "always":
            return True
        offered = request.headers.get("Authorization", "")
        if offered[:7].lower() == "bearer ":
            offered = offered[7:].strip()
        else:
            offered = request.headers.get(self.token_header, "")
        if not offered or not self.token:
            return False
        return hmac.compare_digest(offered.encode("utf-8", "replace"), self.token)


def register(app: Flask, state: ObsState) -> None:
    """Serve the three endpoints on ``app`` at the configured paths."""
    settings = state.settings
    blueprint = Blueprint("gateway_obs_health", __name__)
    routes = (
        (settings.health_path, "health", None),
        (settings.health_live_path, "live", LIVE),
        (settings.health_ready_path, "ready", READY),
    )
    for path, endpoint, group in routes:
        blueprint.add_url_rule(path, endpoint, HealthEndpoint(state, group), methods=["GET"])
        state.add_internal_path(path)
    app.register_blueprint(blueprint)
