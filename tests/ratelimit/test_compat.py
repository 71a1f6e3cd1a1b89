"""The fences around private names: version gates, the public path said once, both paths alike."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_gateway_obs._compat import flask as compat_flask
from flask_gateway_obs._compat import flask_limiter as compat_flask_limiter
from flask_gateway_obs._compat import limits as compat_limits
from flask_gateway_obs.ratelimit import GatewayLimiter
from flask_gateway_obs.ratelimit.fastpath import FastLimiter
from flask_gateway_obs.testing import capture_logs

from .helpers import add_routes, limiter_of, statuses


def test_the_installed_versions_are_the_verified_ones() -> None:
    """This environment runs the fast path; a version outside the series would not."""
    assert compat_flask_limiter.VERIFIED and compat_limits.VERIFIED and compat_flask.VERIFIED
    assert compat_flask_limiter.series("4.2.0") not in compat_flask_limiter.VERIFIED_SERIES
    assert compat_flask_limiter.series("4.1.7") in compat_flask_limiter.VERIFIED_SERIES
    assert compat_flask.series("3.2.0") not in compat_flask.VERIFIED_SERIES
    assert compat_limits.major("6.0.0") not in compat_limits.VERIFIED_MAJORS
    assert compat_limits.major("4.1") in compat_limits.VERIFIED_MAJORS


def test_a_verified_flask_limiter_gets_the_fast_path(make_app) -> None:
    """With the verified versions the app's limiter is the fast one."""
    assert isinstance(limiter_of(make_app()), FastLimiter)


@pytest.mark.usefixtures("public_path")
def test_another_flask_limiter_gets_its_own_evaluation_said_once(make_app) -> None:
    """Unverified versions: Flask-Limiter evaluates the limits, and one info line says so."""
    with capture_logs("flask_gateway_obs") as logs:
        apps = [add_routes(make_app(), "1/minute") for _ in range(2)]
    for app in apps:
        limiter = limiter_of(app)
        assert isinstance(limiter, GatewayLimiter) and not isinstance(limiter, FastLimiter)
        assert statuses(app.test_client(), "/items/1", 2) == [200, 429]
    said = logs.find(level="info", logger="flask_gateway_obs.ratelimit")
    assert len(said) == 1 and "evaluated by Flask-Limiter itself" in said[0]["message"]


def test_both_context_paths_find_the_same_request_and_app() -> None:
    """The context variables and the public proxies agree, inside and outside a request."""
    app = Flask("contexts")
    try:
        for fast in (True, False):
            compat_flask.select(fast)
            assert compat_flask.request_ctx() is None
            assert compat_flask.current_app_or_none() is None
            assert compat_flask.request_environ() == {}
            with app.test_request_context(environ_base={"REMOTE_ADDR": "192.0.2.1"}) as ctx:
                assert compat_flask.request_ctx() is ctx
                assert compat_flask.current_app_or_none() is app
                assert compat_flask.request_environ()["REMOTE_ADDR"] == "192.0.2.1"
    finally:
        compat_flask.select(True)
