"""The app the Sentry tests report from, and a request that waits for delivery."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, abort

from flask_gateway_obs import NotFoundError, ServiceUnavailableError, ValidationError, sentry
from flask_gateway_obs.config import Keys
from flask_gateway_obs.errors import AppError

from ..conftest import MakeApp

log = logging.getLogger("tests.sentry.views")


def sentry_app(make_app: MakeApp, dsn: str, **config: Any) -> Flask:
    """An app reporting to ``dsn`` with a few routes that fail in different ways."""
    settings = {Keys.SENTRY_DSN: dsn, **{getattr(Keys, k): v for k, v in config.items()}}
    app = make_app(config=settings)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        if item_id == 0:
            raise RuntimeError("item zero is broken")
        return {"id": item_id}

    @app.get("/missing")
    def missing() -> Any:
        raise NotFoundError("no such thing")

    @app.post("/validate")
    def validate() -> Any:
        raise ValidationError("bad input", details={"field": "name"})

    @app.get("/aborted")
    def aborted() -> Any:
        abort(404)

    @app.get("/bug")
    def bug() -> Any:
        raise AppError("invariant broken", 400, is_operational=False)

    @app.get("/unavailable")
    def unavailable() -> Any:
        raise ServiceUnavailableError(retry_after=3)

    return app


def report(app: Flask, path: str, **kwargs: Any) -> Any:
    """Request ``path`` and flush, so that whatever was captured has reached the sink."""
    response = app.test_client().open(path, **kwargs)
    sentry.flush(timeout=5)
    return response
