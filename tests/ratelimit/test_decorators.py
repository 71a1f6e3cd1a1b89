"""obs.limiter before and across apps: decorators that find the serving app's limiter."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from flask import Blueprint, Flask, request

from flask_gateway_obs import GatewayObs
from flask_gateway_obs.ratelimit import (
    DeferredLimiter,
)

from .helpers import (
    CLIENT,
    add_routes,
    limiter_of,
    memory_counts,
    statuses,
)

pytestmark = pytest.mark.usefixtures("limiter_path")


def test_decorators_applied_before_any_app_count_per_app(make_app) -> None:
    """@obs.limiter.limit at import time works in every app, each app counting on its own."""
    obs = GatewayObs()
    assert isinstance(obs.limiter, DeferredLimiter)

    @obs.limiter.limit("2/minute")
    def ping() -> str:
        return "pong"

    def create() -> Flask:
        app = make_app(init=False)
        obs.init_app(app)
        app.add_url_rule("/ping", view_func=ping)
        return app

    first, second = create(), create()
    assert statuses(first.test_client(), "/ping", 3) == [200, 200, 429]
    assert statuses(second.test_client(), "/ping", 3) == [200, 200, 429]
    with first.app_context():
        assert obs.limiter is limiter_of(first)
    with second.app_context():
        assert obs.limiter is limiter_of(second)
    assert limiter_of(first).storage is not limiter_of(second).storage


def test_stacked_deferred_limits_count_each_request_once(make_app) -> None:
    """Two stacked decorators: both limits apply, each request counted once in each."""
    obs = GatewayObs()

    @obs.limiter.limit("5/minute")
    @obs.limiter.limit("2/minute")
    def ping() -> str:
        return "pong"

    app = make_app(init=False)
    obs.init_app(app)
    app.add_url_rule("/ping", view_func=ping)
    assert statuses(app.test_client(), "/ping", 3) == [200, 200, 429]


def test_views_defined_in_a_factory_count_per_app(make_app) -> None:
    """Views decorated inside an app factory (after init_app, no app context) count per app."""
    obs = GatewayObs()

    def create() -> Flask:
        app = make_app({"RATELIMIT_DEFAULT": "100/minute"}, init=False)
        obs.init_app(app)

        @app.get("/ping")
        @obs.limiter.limit("2/minute", key_func=lambda: "everyone")
        def ping() -> str:
            return "pong"

        return app

    apps = [create() for _ in range(3)]
    for app in apps:
        client = app.test_client()
        assert statuses(client, "/ping", 3) == [200, 200, 429]
        # The route's limit overrides the default: 100/minute never showed up.
        assert client.get("/ping", environ_base=CLIENT).headers["X-RateLimit-Limit"] == "2"


def test_deferred_exempt_shared_limit_blueprint_and_request_filter(make_app) -> None:
    """exempt, shared_limit, blueprint limits and request filters declared early reach each app."""
    obs = GatewayObs()
    bp = Blueprint("reports", __name__)

    @bp.get("/reports")
    def reports() -> str:
        return "reports"

    obs.limiter.limit("1/minute")(bp)
    group = obs.limiter.shared_limit("3/minute", scope="group")

    @group
    def one() -> str:
        return "one"

    @group
    def two() -> str:
        return "two"

    @obs.limiter.exempt
    def free() -> str:
        return "free"

    @obs.limiter.request_filter
    def trusted() -> bool:
        return request.headers.get("X-Trusted") == "yes"

    for _ in range(2):
        app = make_app({"RATELIMIT_DEFAULT": "1/minute"}, init=False)
        obs.init_app(app)
        app.register_blueprint(bp)
        app.add_url_rule("/one", view_func=one)
        app.add_url_rule("/two", view_func=two)
        app.add_url_rule("/free", view_func=free)
        client = app.test_client()
        assert statuses(client, "/reports", 2) == [200, 429]
        assert statuses(client, "/one", 2) + statuses(client, "/two", 2) == [200, 200, 200, 429]
        assert statuses(client, "/free", 3) == [200, 200, 200]
        assert statuses(client, "/reports", 2, headers={"X-Trusted": "yes"}) == [200, 200]


def test_deferred_limiter_outside_an_app_context(make_app) -> None:
    """Outside an app context other attributes reach the one app's limiter, or explain why not."""
    obs = GatewayObs()
    with pytest.raises(AttributeError, match="needs an app"):
        obs.limiter.reset  # noqa: B018
    first = make_app(init=False)
    obs.init_app(first)
    assert obs.limiter.storage is limiter_of(first).storage
    obs.init_app(make_app(init=False))
    with pytest.raises(AttributeError, match="app context"):
        obs.limiter.storage  # noqa: B018


def test_a_limiter_kept_in_a_variable_works_in_the_views_of_two_apps(make_app) -> None:
    """A limiter kept from import: with-blocks, current_limit and enabled reach the serving app."""
    obs = GatewayObs()
    limiter = obs.limiter  # kept, as `limiter = Limiter(...)` would be

    @limiter.limit("2/minute")
    def ping() -> dict[str, Any]:
        current = limiter.current_limit
        return {"remaining": current.remaining if current else None}

    def inside() -> str:
        with limiter.limit("1/minute"):
            return "inside"

    def create() -> Flask:
        app = make_app(init=False)
        obs.init_app(app)
        app.add_url_rule("/ping", view_func=ping)
        app.add_url_rule("/inside", view_func=inside)
        return app

    first, second = create(), create()  # two apps alive
    for app in (first, second):
        client = app.test_client()
        pings = [client.get("/ping", environ_base=CLIENT) for _ in range(3)]
        assert [r.status_code for r in pings] == [200, 200, 429]
        assert [r.get_json() for r in pings[:2]] == [{"remaining": 1}, {"remaining": 0}]
        assert statuses(client, "/inside", 2) == [200, 429]
    with second.app_context():
        limiter.enabled = False  # the serving app's switch, not an attribute of the variable
    assert not limiter_of(second).enabled and limiter_of(first).enabled
    assert statuses(second.test_client(), "/inside", 2) == [200, 200]
    assert statuses(first.test_client(), "/inside", 1) == [429]


def test_views_decorated_in_one_apps_context_count_in_the_app_serving_them(tmp_path) -> None:
    """A view decorated inside app A's context counts in app B's storage, also once A is gone."""
    obs = GatewayObs()

    def create() -> Flask:
        app = Flask("decorated-in-context", instance_path=str(tmp_path))
        app.config["TESTING"] = True
        obs.init_app(app)
        return app

    first = create()
    with first.app_context():  # e.g. views imported inside the factory's app context

        @obs.limiter.limit("1/minute")
        def ping() -> str:
            return "pong"

    second = create()
    second.add_url_rule("/ping", view_func=ping)
    client = second.test_client()
    assert statuses(client, "/ping", 2) == [200, 429]
    assert memory_counts(limiter_of(second)) and not memory_counts(limiter_of(first))
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None
    assert statuses(client, "/ping", 1) == [429]


def blueprint_app(make_app: Callable[..., Flask], obs: GatewayObs, limit: str) -> Flask:
    """An app of ``obs`` with a blueprint ``api`` (``/r``) of its own, limited to ``limit``."""
    app = make_app(init=False)
    obs.init_app(app)
    bp = Blueprint("api", __name__)

    @bp.get("/r")
    def r() -> str:
        return "r"

    obs.limiter.limit(limit)(bp)  # outside an app context, as for views
    app.register_blueprint(bp)
    return app


def test_blueprint_limits_apply_only_to_the_apps_the_blueprint_is_on(make_app) -> None:
    """A blueprint limit declared in a factory reaches its own app, not later or earlier ones."""
    obs = GatewayObs()
    strict = blueprint_app(make_app, obs, "1/minute")
    lenient = blueprint_app(make_app, obs, "100/minute")
    assert statuses(lenient.test_client(), "/r", 3) == [200, 200, 200]
    headers = lenient.test_client().get("/r", environ_base=CLIENT).headers
    assert headers["X-RateLimit-Limit"] == "100"
    assert statuses(strict.test_client(), "/r", 2) == [200, 429]
    plain = make_app(init=False)  # a later app, with a blueprint of the same name, unlimited
    obs.init_app(plain)
    bp = Blueprint("api", __name__)
    bp.add_url_rule("/r", "r", lambda: "r")
    plain.register_blueprint(bp)
    responses = [plain.test_client().get("/r", environ_base=CLIENT) for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 3
    assert "X-RateLimit-Limit" not in responses[-1].headers


def test_blueprint_limits_reach_apps_in_any_order_of_set_up(make_app) -> None:
    """Registered before init_app, or limited after being registered: the limits still apply."""
    obs = GatewayObs()
    early, late, free = (Blueprint(name, __name__) for name in ("early", "late", "free"))
    for bp in (early, late, free):
        bp.add_url_rule(f"/{bp.name}", bp.name, lambda: "ok")
    obs.limiter.limit("1/minute")(early)
    obs.limiter.exempt(free)
    app = make_app({"RATELIMIT_DEFAULT": "2/minute"}, init=False)
    app.register_blueprint(early)
    app.register_blueprint(free)
    obs.init_app(app)
    app.register_blueprint(late)
    obs.limiter.limit("1/minute")(late)  # after it was registered
    other = make_app({"RATELIMIT_DEFAULT": "2/minute"}, init=False)
    obs.init_app(other)
    other.register_blueprint(late)
    client = app.test_client()
    assert statuses(client, "/early", 2) == [200, 429]
    assert statuses(client, "/late", 2) == [200, 429]
    assert statuses(client, "/free", 4) == [200] * 4
    assert statuses(other.test_client(), "/late", 2) == [200, 429]


def test_request_filters_in_an_app_context_are_that_apps_own(make_app) -> None:
    """A request filter declared in app A's context exempts requests of app A only."""
    obs = GatewayObs()
    limiter = obs.limiter

    def create(secret: str) -> Flask:
        app = make_app({"RATELIMIT_DEFAULT": "1/minute"}, init=False)
        obs.init_app(app)
        add_routes(app, "1/minute")
        with app.app_context():

            @limiter.request_filter
            def internal() -> bool:
                return request.headers.get("X-Secret") == secret

        return app

    create("a-secret")
    second = create("b-secret")
    client = second.test_client()
    assert statuses(client, "/free", 3, headers={"X-Secret": "b-secret"}) == [200] * 3
    assert statuses(client, "/free", 2, headers={"X-Secret": "a-secret"}) == [200, 429]
