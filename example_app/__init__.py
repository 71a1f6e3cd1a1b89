"""A small API gateway built on flask-gateway-obs.

Run it with ``make demo``; every setting comes from the environment, for example
``FLASK_GATEWAY_OBS_LOG_FORMAT=console make demo``. Without Redis, PostgreSQL or
Sentry settings it runs on embedded defaults.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from flask_gateway_obs import (
    GatewayObs,
    NotFoundError,
    ValidationError,
    get_logger,
    get_request_id,
)

obs = GatewayObs()
log = get_logger("example_app")

_ITEMS = {1: {"id": 1, "name": "keyboard"}, 2: {"id": 2, "name": "mouse"}}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the example gateway; ``config`` wins over the environment."""
    app = Flask(__name__)
    app.config["GATEWAY_OBS_SERVICE_NAME"] = "example-gateway"
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
    def create_item() -> tuple[dict[str, Any], int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ValidationError(
                "the body must be a JSON object with a string 'name'",
                details=[{"field": "name", "problem": "required string"}],
            )
        item = {"id": max(_ITEMS) + 1, "name": body["name"]}
        return item, 201

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"request_id": get_request_id(), "outgoing_headers": obs.propagation_headers()}

    @app.get("/boom")
    def boom() -> dict[str, Any]:
        # A programming error: the client gets a generic 500; the log gets the stack,
        # with the password in the URL masked.
        raise RuntimeError("lost connection to postgresql://orders:s3cret@db.internal/orders")

    return app
