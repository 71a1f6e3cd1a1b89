"""A small API gateway built on flask-gateway-obs.

Run it with ``make demo``; every setting comes from the environment, for example
``FLASK_GATEWAY_OBS_LOG_FORMAT=console make demo``. Without Redis, PostgreSQL or
Sentry settings it runs on embedded defaults. :func:`create_upstream` is the quotes
service it can call (``FLASK_QUOTES_UPSTREAM_URL``); with
``FLASK_GATEWAY_OBS_TRACING_ENABLED=true`` on both, one request is one trace.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from flask import Flask, current_app, request

from flask_gateway_obs import (
    AppError,
    CheckResult,
    GatewayObs,
    NotFoundError,
    ValidationError,
    get_logger,
    get_request_id,
)

obs = GatewayObs()
log = get_logger("example_app")

_ITEMS = {1: {"id": 1, "name": "keyboard"}, 2: {"id": 2, "name": "mouse"}}


# Health: /health, /health/live and /health/ready check Redis and PostgreSQL when
# GATEWAY_OBS_REDIS_URL / GATEWAY_OBS_DATABASE_URL are set, memory and disk always,
# and this check of the app's own.
@obs.health_check("items_store", critical=False)
def items_store() -> CheckResult | None:
    """Degraded (still serving) when the store is empty."""
    if not _ITEMS:
        return CheckResult.degraded("no items loaded")
    return None


# Resilience: the quotes upstream is flaky on request (``?fail=1`` injects a failure).
# Each call retries (policy "quotes") around the circuit breaker "quotes": two failing
# requests open it (logged; ``circuit_breaker_state{breaker="quotes"} 1`` on /metrics),
# then /quotes answers 503 with Retry-After without calling the upstream, and after
# reset_timeout one good call closes it again.
# With QUOTES_UPSTREAM_URL set (e.g. the app of create_upstream()), the call is a real
# HTTP request: timed as a dependency, a CLIENT span when tracing is on, and sent with
# the request ID and traceparent so the upstream's spans and logs join this request's.
@obs.resilient("quotes")
def fetch_quote(symbol: str, fail: bool) -> dict[str, Any]:
    """Calls the quotes service at ``QUOTES_UPSTREAM_URL``, or stands in for it."""
    if fail:
        raise AppError("the quotes service answered 502", 502, code="upstream_error")
    upstream = current_app.config.get("QUOTES_UPSTREAM_URL")
    if not upstream:
        return {"symbol": symbol, "price": 42.0}
    with obs.track_dependency("quotes", "GET /quotes/<symbol>"):
        outgoing = urllib.request.Request(
            f"{upstream.rstrip('/')}/quotes/{urllib.parse.quote(symbol)}",
            headers=obs.propagation_headers(),
        )
        try:
            with urllib.request.urlopen(outgoing, timeout=2) as response:
                quote: dict[str, Any] = json.load(response)
        except OSError as error:  # refused, timed out, or an HTTP error status
            raise AppError("the quotes service failed", 502, code="upstream_error") from error
    return quote


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the example gateway; ``config`` wins over the environment."""
    app = Flask(__name__)
    app.config["GATEWAY_OBS_SERVICE_NAME"] = "example-gateway"
    # Rate limits: every route 120/minute per client (Flask-Limiter's own key), counted
    # in Redis when GATEWAY_OBS_REDIS_URL is set (shared by every instance), else in memory.
    app.config["RATELIMIT_DEFAULT"] = "120 per minute"
    app.config["GATEWAY_OBS_BREAKERS"] = {"quotes": {"fail_max": 3, "reset_timeout": 10}}
    app.config["GATEWAY_OBS_RETRY_POLICIES"] = {"quotes": {"max_attempts": 2, "base_delay": 0.05}}
    app.config.from_prefixed_env()
    app.config.update(config or {})
    obs.init_app(app)

    @app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> dict[str, Any]:
        item = _ITEMS.get(item_id)
        if item is None:
            raise NotFoundError(f"item {item_id} does not exist", code="item_not_found")
        log.info("item served", item_id=item_id)
        return item

    @app.post("/items")
    @obs.limiter.limit("10 per minute")  # stricter: a 429 problem+json past 10
    def create_item() -> tuple[dict[str, Any], int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ValidationError(
                "the body must be a JSON object with a string 'name'",
                details=[{"field": "name", "problem": "required string"}],
            )
        item = {"id": max(_ITEMS) + 1, "name": body["name"]}
        return item, 201

    @app.get("/quotes/<symbol>")
    def get_quote(symbol: str) -> dict[str, Any]:
        return fetch_quote(symbol[:12], request.args.get("fail") == "1")

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"request_id": get_request_id(), "outgoing_headers": obs.propagation_headers()}

    @app.get("/boom")
    def boom() -> dict[str, Any]:
        # A programming error: the client gets a generic 500; the log gets the stack,
        # with the password in the URL masked.
        raise RuntimeError("lost connection to postgresql://orders:s3cret@db.internal/orders")

    return app


def create_upstream(config: dict[str, Any] | None = None) -> Flask:
    """The quotes service the gateway calls when ``QUOTES_UPSTREAM_URL`` points at it."""
    app = Flask("example_upstream")
    app.config["GATEWAY_OBS_SERVICE_NAME"] = "quotes-upstream"
    app.config.from_prefixed_env()
    app.config.update(config or {})
    GatewayObs(app)

    @app.get("/quotes/<symbol>")
    def quote(symbol: str) -> dict[str, Any]:
        log.info("quote served", symbol=symbol)
        return {"symbol": symbol, "price": 42.0}

    return app
