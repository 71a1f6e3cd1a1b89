"""The ``/metrics`` endpoint: protection (token, networks), content negotiation, gzip."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import TYPE_CHECKING, Protocol

from flask import Blueprint, Response, request

from .. import errors
from .exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, wants_openmetrics

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["MetricsEndpoint", "blueprint"]

_log = logging.getLogger("flask_gateway_obs.metrics")


class Exposes(Protocol):
    """What the endpoint needs of the app's metrics."""

    settings: Settings

    def exposition(self, openmetrics: bool, compress: bool) -> bytes:
        """The rendered exposition, gzipped when ``compress``."""
        ...


def blueprint(metrics: Exposes) -> Blueprint:
    """The blueprint that serves the exposition at ``GATEWAY_OBS_METRICS_PATH``."""
    bp = Blueprint("gateway_obs_metrics", __name__)
    bp.add_url_rule(
        metrics.settings.metrics_path,
        endpoint="metrics",
        view_func=MetricsEndpoint(metrics),
        methods=["GET"],
    )
    return bp


class MetricsEndpoint:
    """The ``/metrics`` view: protection, content negotiation, gzip."""

    def __init__(self, metrics: Exposes) -> None:
        settings = metrics.settings
        self.metrics = metrics
        self._token = settings.metrics_token.encode("utf-8") if settings.metrics_token else None
        self._networks = [ipaddress.ip_network(n) for n in settings.metrics_allowed_networks]
        self._type_base = settings.error_type_base

    def __call__(self) -> Response:
        if self._networks and not self._address_allowed(request.remote_addr):
            _log.info("metrics scrape refused: address not allowed")
            return self._refuse(errors.ForbiddenError("This address may not read the metrics."), {})
        if self._token is not None and not self._token_ok(request.headers.get("Authorization")):
            _log.info("metrics scrape refused: missing or wrong token")
            return self._refuse(
                errors.UnauthorizedError("A valid bearer token is required to read the metrics."),
                {"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        openmetrics = wants_openmetrics(request.headers.get("Accept"))
        compress = request.accept_encodings["gzip"] > 0
        body = self.metrics.exposition(openmetrics, compress)
        response = Response(
            body, content_type=CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT
        )
        if compress:
            response.headers["Content-Encoding"] = "gzip"
        response.headers["Vary"] = "Accept, Accept-Encoding"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _address_allowed(self, remote: str | None) -> bool:
        if not remote:
            return False
        try:
            address = ipaddress.ip_address(remote.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def _token_ok(self, header: str | None) -> bool:
        if not header or self._token is None:
            return False
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8"), self._token)

    def _refuse(self, error: errors.AppError, headers: dict[str, str]) -> Response:
        # Rendered here rather than raised: a refused scrape is neither an app error
        # to count nor one to send to Sentry.
        info = errors.describe(error)
        body = errors.problem_body(info, self._type_base)
        return errors.problem_response(body, info.status, headers)
