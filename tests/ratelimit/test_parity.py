"""Counts, keys and headers exactly as raw Flask-Limiter's, request by request, on both paths.

Each scenario builds the same routes on our app and on a raw Flask-Limiter app and sends
both the same requests: statuses, headers and the storage's keys and counts must match.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Blueprint, Flask, request
from flask_limiter import Limiter

from flask_gateway_obs.config import Keys

from .helpers import (
    CLIENT,
    ITEM_ROUTE,
    add_routes,
    delete_keys,
    limiter_of,
    memory_counts,
    redis_counts,
    statuses,
    unique_service,
)

pytestmark = pytest.mark.usefixtures("limiter_path")


Routes = Callable[[Flask, Limiter], None]


Call = tuple[str, str, str]  # method, path, client address


A, B = "192.0.2.7", "192.0.2.8"


def basic_routes(app: Flask, limiter: Limiter) -> None:
    @app.get("/free")
    def free() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/items/<int:item_id>")
    @limiter.limit("2/minute")
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    @app.get("/exempt")
    @limiter.exempt
    def exempt() -> dict[str, Any]:
        return {"ok": True}


def several_windows(app: Flask, limiter: Limiter) -> None:
    @app.route("/free", methods=["GET", "POST"])
    def free() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/items/<int:item_id>")
    @limiter.limit("5/hour;2/minute")
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}


def shared_blueprint_and_methods(app: Flask, limiter: Limiter) -> None:
    group = limiter.shared_limit("3/minute", scope="group")

    @app.get("/one")
    @group
    def one() -> str:
        return "one"

    @app.get("/two")
    @group
    def two() -> str:
        return "two"

    @app.route("/write", methods=["GET", "POST"])
    @limiter.limit("1/minute", methods=["POST"])
    def write() -> str:
        return "write"

    @app.route("/scoped", methods=["GET", "POST"])
    @limiter.limit("2/minute", per_method=True, scope="s")
    def scoped() -> str:
        return "scoped"

    bp = Blueprint("reports", __name__)

    @bp.get("/reports")
    def reports() -> str:
        return "reports"

    limiter.limit("2/minute")(bp)
    app.register_blueprint(bp)


def defaults_kept_and_empty_keys(app: Flask, limiter: Limiter) -> None:
    @app.get("/both")
    @limiter.limit("3/minute", override_defaults=False)
    def both() -> str:
        return "both"

    @app.get("/keyed")
    @limiter.limit("2/minute", key_func=lambda: request.headers.get("X-Key", ""))
    def keyed() -> str:
        return "keyed"


def limit_inside_the_view(app: Flask, limiter: Limiter) -> None:
    @app.get("/inside")
    def inside() -> str:
        with limiter.limit("2/minute"):
            return "inside"


def get(path: str, addr: str = A) -> Call:
    return ("GET", path, addr)


def post(path: str, addr: str = A) -> Call:
    return ("POST", path, addr)


SCENARIOS: dict[str, tuple[dict[str, Any], Routes, list[Call], str]] = {
    "defaults-and-a-route-limit": (
        {"RATELIMIT_DEFAULT": "3/minute"},
        basic_routes,
        [get("/free")] * 4
        + [get("/items/1"), get("/items/2"), get("/items/3"), get("/items/1", B)]
        + [get("/exempt")] * 4
        + [get("/free", B), get("/nowhere")],
    ),
    "several-windows-application-and-per-method-defaults": (
        {
            "RATELIMIT_DEFAULT": "3/hour;2/minute",
            "RATELIMIT_APPLICATION": "7/minute",
            "RATELIMIT_DEFAULTS_PER_METHOD": True,
        },
        several_windows,
        [get("/free")] * 3 + [post("/free")] * 3 + [get("/items/1")] * 3 + [get("/free", B)] * 2,
    ),
    "shared-blueprint-method-and-scoped-limits": (
        {"RATELIMIT_DEFAULT": "4/minute"},
        shared_blueprint_and_methods,
        [get("/one"), get("/two"), get("/one"), get("/two"), get("/one", B)]
        + [get("/write")] * 5
        + [post("/write")] * 2
        + [get("/scoped"), post("/scoped")] * 3
        + [get("/reports")] * 3,
    ),
    "defaults-kept-beside-a-route-limit-and-empty-keys": (
        {"RATELIMIT_DEFAULT": "2/minute", "RATELIMIT_FAIL_ON_FIRST_BREACH": False},
        defaults_kept_and_empty_keys,
        [get("/both")] * 4 + [get("/keyed")] * 3,
    ),
    "moving-window-through-the-strategy": (
        {"RATELIMIT_DEFAULT": "3/minute", "RATELIMIT_STRATEGY": "moving-window"},
        basic_routes,
        [get("/free")] * 4 + [get("/items/1")] * 3 + [get("/free", B)],
    ),
    "sliding-window-counter-through-the-strategy": (
        {"RATELIMIT_DEFAULT": "3/minute", "RATELIMIT_STRATEGY": "sliding-window-counter"},
        basic_routes,
        [get("/free")] * 4 + [get("/items/1")] * 3 + [get("/free", B)],
    ),
    "a-limit-inside-the-view": (
        {"RATELIMIT_DEFAULT": "3/minute"},
        limit_inside_the_view,
        [get("/inside")] * 4,
    ),
}


def raw_app(config: dict[str, Any], storage: str = "memory://", key_prefix: str = "") -> Flask:
    """The same app with Flask-Limiter alone (its own hooks, its own paths)."""
    from flask_limiter.util import get_remote_address

    app = Flask("raw")
    app.config.update(config)
    Limiter(
        get_remote_address,
        app=app,
        storage_uri=storage,
        headers_enabled=True,
        key_prefix=key_prefix,
    )
    return app


def raw_limiter(app: Flask) -> Limiter:
    (limiter,) = app.extensions["limiter"]
    assert isinstance(limiter, Limiter)
    return limiter


def replay(app: Flask, calls: list[Call]) -> list[tuple[int, str | None, str | None, int]]:
    """Status, X-RateLimit-Limit, X-RateLimit-Remaining and -Reset of each call."""
    client = app.test_client()
    seen = []
    for method, path, addr in calls:
        headers = {"X-Key": "k"} if len(seen) % 2 else {}
        response = client.open(
            path, method=method, environ_base={"REMOTE_ADDR": addr}, headers=headers
        )
        reset = int(response.headers.get("X-RateLimit-Reset", 0))
        seen.append(
            (
                response.status_code,
                response.headers.get("X-RateLimit-Limit"),
                response.headers.get("X-RateLimit-Remaining"),
                reset,
            )
        )
    return seen


def assert_same_responses(ours: list[Any], theirs: list[Any]) -> None:
    assert [r[:3] for r in ours] == [r[:3] for r in theirs]
    for mine, raw in zip(ours, theirs, strict=True):
        assert abs(mine[3] - raw[3]) <= 1  # the same window (a second may tick in between)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_counts_keys_and_headers_are_flask_limiters(make_app, scenario) -> None:
    """Same statuses, headers, storage keys and counts as raw Flask-Limiter, request by request."""
    config, routes, calls = SCENARIOS[scenario]
    ours = make_app(config)
    routes(ours, limiter_of(ours))
    theirs = raw_app(config)
    routes(theirs, raw_limiter(theirs))
    assert_same_responses(replay(ours, calls), replay(theirs, calls))
    assert memory_counts(limiter_of(ours)) == memory_counts(raw_limiter(theirs))


def dynamic_limit() -> str:
    """A limit string read per request."""
    return "2/minute"


DYNAMIC: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "callable-limit": ({}, {"limit_value": dynamic_limit}),
    "exempt-when": ({}, {"exempt_when": lambda: request.args.get("free") == "1"}),
    "deduct-when": ({}, {"deduct_when": lambda response: response.status_code == 200}),
    "callable-cost": ({}, {"cost": lambda: 1}),
    "callable-scope": ({}, {"scope": lambda endpoint: "dyn"}),
    "on-breach": ({}, {"on_breach": lambda limit: None}),
    "meta-limits": ({"RATELIMIT_META": "100/hour"}, {}),
    "request-identifier": ({"RATELIMIT_REQUEST_IDENTIFIER": lambda: "everything"}, {}),
    "swallow-errors": ({"RATELIMIT_SWALLOW_ERRORS": True}, {}),
    "in-memory-fallback": ({"RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True}, {}),
}


@pytest.mark.parametrize("case", list(DYNAMIC))
def test_dynamic_limits_count_like_flask_limiter(make_app, case) -> None:
    """Callables, meta limits and unusual settings count as raw Flask-Limiter counts them."""
    config, options = DYNAMIC[case]
    limit_value = options.pop("limit_value", "2/minute") if options else "2/minute"

    def routes(app: Flask, limiter: Limiter) -> None:
        @app.get("/items/<int:item_id>")
        @limiter.limit(limit_value, **options)
        def item(item_id: int) -> dict[str, Any]:
            return {"id": item_id}

    ours = make_app(config)
    routes(ours, limiter_of(ours))
    theirs = raw_app(config)
    routes(theirs, raw_limiter(theirs))
    calls = [get("/items/1")] * 3
    assert_same_responses(replay(ours, calls), replay(theirs, calls))
    assert [status for status, *_ in replay(ours, [get("/items/1")])] == [429]


def test_memory_keys_are_flask_limiters(make_app) -> None:
    """The storage keys are limits' own: namespace/[prefix/]client/scope/amount/multiples/unit."""
    app = add_routes(make_app({"RATELIMIT_DEFAULT": "3/minute", "RATELIMIT_KEY_PREFIX": "gw"}))
    client = app.test_client()
    statuses(client, "/free", 2)
    statuses(client, "/items/1", 1)
    assert memory_counts(limiter_of(app)) == {
        "LIMITER/gw/192.0.2.7/free/3/1/minute": 2,
        "LIMITER/gw/192.0.2.7/item/3/1/minute": 1,
    }


@pytest.mark.redis
def test_counts_keys_and_expiries_are_flask_limiters_in_redis(make_app, redis_url) -> None:
    """On Redis: same statuses, headers, keys, counts and expiries as raw Flask-Limiter."""
    config, routes, calls = SCENARIOS["shared-blueprint-method-and-scoped-limits"]
    ours_prefix, raw_prefix = unique_service(), unique_service()
    ours = make_app({**config, Keys.REDIS_URL: redis_url, Keys.SERVICE_NAME: ours_prefix})
    routes(ours, limiter_of(ours))
    theirs = raw_app(config, redis_url, key_prefix=raw_prefix)
    routes(theirs, raw_limiter(theirs))
    try:
        assert_same_responses(replay(ours, calls), replay(theirs, calls))
        counted = redis_counts(redis_url, ours_prefix)
        assert counted and counted == redis_counts(redis_url, raw_prefix)
        # Four hits on the shared group (the fourth refused, and counted, as fixed windows do).
        assert counted["LIMITS:LIMITER/<prefix>/192.0.2.7/group/3/1/minute"] == (4, True)
    finally:
        delete_keys(redis_url, ours_prefix, raw_prefix)


@pytest.mark.redis
def test_our_limit_and_raw_flask_limiters_share_one_count_in_redis(make_app, redis_url) -> None:
    """Our app and a raw Flask-Limiter app with the same prefix count against one limit."""
    service = unique_service()
    ours = add_routes(make_app({Keys.REDIS_URL: redis_url, Keys.SERVICE_NAME: service}))
    theirs = raw_app({}, redis_url, key_prefix=service)
    add_routes_raw = raw_limiter(theirs)

    @theirs.get(ITEM_ROUTE)
    @add_routes_raw.limit("3/minute")
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    try:
        ours_client, raw_client = ours.test_client(), theirs.test_client()
        assert statuses(ours_client, "/items/1", 1) == [200]
        assert statuses(raw_client, "/items/1", 1) == [200]
        third = ours_client.get("/items/1", environ_base=CLIENT)
        assert third.status_code == 200 and third.headers["X-RateLimit-Remaining"] == "0"
        assert statuses(raw_client, "/items/1", 1) == [429]
        assert statuses(ours_client, "/items/1", 1) == [429]
        key = f"LIMITS:LIMITER/{service}/192.0.2.7/item/3/1/minute"
        assert redis_counts(redis_url, service) == {
            key.replace(f"/{service}/", "/<prefix>/"): (5, True)
        }
    finally:
        delete_keys(redis_url, service)
