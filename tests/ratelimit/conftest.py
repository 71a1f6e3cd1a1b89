"""Fixtures of the rate-limit tests: the app factory, and the two paths every behaviour runs on.

``limiter_path`` runs a test twice: on the fast path (the Flask-Limiter, limits and Flask
versions verified in ``flask_gateway_obs._compat``) and on the public path (what any
other version gets: Flask-Limiter's own evaluation, limits' own storage behaviour and
Flask's public context proxies).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from limits.storage import RedisStorage

from flask_gateway_obs._compat import flask as compat_flask
from flask_gateway_obs._compat import flask_limiter as compat_flask_limiter
from flask_gateway_obs._compat import limits as compat_limits
from flask_gateway_obs.ratelimit import GatewayLimiter


@pytest.fixture
def make_app(make_app: Callable[..., Flask]) -> Iterator[Callable[..., Flask]]:
    """The shared app factory, closing the Redis connections of its apps' limiters at the end."""
    apps: list[Flask] = []

    def factory(*args: Any, **kwargs: Any) -> Flask:
        app = make_app(*args, **kwargs)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        state = app.extensions.get("gateway_obs")
        limiter = getattr(state, "limiter", None)
        if isinstance(limiter, GatewayLimiter) and limiter.initialized:
            storage = limiter.storage
            if isinstance(storage, RedisStorage):
                storage.storage.close()


def force_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every compat module answer as for a version it was not verified with."""
    monkeypatch.setattr(compat_flask_limiter, "VERIFIED", False)
    monkeypatch.setattr(compat_limits, "VERIFIED", False)
    compat_flask.select(False)


@pytest.fixture(params=["fast", "public"])
def limiter_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test on the fast path and on the public path."""
    if request.param == "public":
        force_public_path(monkeypatch)
    try:
        yield str(request.param)
    finally:
        compat_flask.select(True)


@pytest.fixture
def public_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The public path alone."""
    force_public_path(monkeypatch)
    try:
        yield
    finally:
        compat_flask.select(True)
