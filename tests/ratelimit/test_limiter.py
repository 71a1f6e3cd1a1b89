"""The limiter in one app: problem+json 429s, headers, switches, breaches, Flask-Limiter's API."""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import pytest
from flask import Blueprint, g, request
from flask_limiter import Limiter
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from flask_gateway_obs import GatewayObs, ServiceUnavailableError
from flask_gateway_obs.config import Keys
from flask_gateway_obs.ratelimit import (
    GatewayLimiter,
)
from flask_gateway_obs.testing import capture_logs, metric_value

from .helpers import (
    CLIENT,
    ITEM_ROUTE,
    RecordingRecorder,
    add_routes,
    limiter_of,
    problem,
    statuses,
)

pytestmark = pytest.mark.usefixtures("limiter_path")


def test_request_over_the_limit_gets_problem_json_429_with_retry_after(make_app) -> None:
    """The N+1th request is a problem+json 429 with Retry-After and the X-RateLimit headers."""
    client = add_routes(make_app()).test_client()
    ok = [client.get("/items/1", environ_base=CLIENT) for _ in range(3)]
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in ok] == ["2", "1", "0"]
    assert all(r.headers["X-RateLimit-Limit"] == "3" for r in ok)
    assert int(ok[0].headers["X-RateLimit-Reset"]) > time.time()
    assert "Retry-After" not in ok[0].headers  # it means something only on the 429

    refused = client.get("/items/1", environ_base=CLIENT)
    assert refused.status_code == 429
    body = problem(refused)
    assert body["code"] == "too_many_requests"
    assert body["title"] == "Too Many Requests"
    assert body["detail"] == "Rate limit exceeded: 3 per 1 minute."
    assert body["instance"] == "/items/1"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"


def test_limit_counts_per_route_and_per_client(make_app) -> None:
    """Another client, and another route, each have their own count."""
    client = add_routes(make_app(), "1/minute").test_client()
    assert statuses(client, "/items/1", 2) == [200, 429]
    other = client.get("/items/1", environ_base={"REMOTE_ADDR": "192.0.2.8"})
    assert other.status_code == 200
    assert statuses(client, "/free", 3) == [200, 200, 200]


def test_nothing_is_limited_without_a_limit(make_app) -> None:
    """With no RATELIMIT_DEFAULT, undecorated routes are never limited and carry no headers."""
    client = add_routes(make_app()).test_client()
    responses = [client.get("/free", environ_base=CLIENT) for _ in range(20)]
    assert {r.status_code for r in responses} == {200}
    assert "X-RateLimit-Limit" not in responses[-1].headers


def test_ratelimit_default_limits_every_route_except_exempt_ones(make_app) -> None:
    """RATELIMIT_DEFAULT applies to undecorated routes; @exempt and decorated ones keep theirs."""
    client = add_routes(make_app({"RATELIMIT_DEFAULT": "2/minute"})).test_client()
    assert statuses(client, "/free", 3) == [200, 200, 429]
    assert statuses(client, "/exempt", 5) == [200] * 5
    assert statuses(client, "/items/1", 4) == [200, 200, 200, 429]


def test_a_limited_routes_own_retry_after_is_left_alone(make_app) -> None:
    """A 503 with its own Retry-After (an open breaker) keeps it under a rate limit."""
    app = make_app({"RATELIMIT_DEFAULT": "100/minute"})

    @app.get("/upstream")
    def upstream() -> dict[str, Any]:
        raise ServiceUnavailableError("upstream down", retry_after=10)

    response = app.test_client().get("/upstream", environ_base=CLIENT)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "10"
    assert response.headers["X-RateLimit-Remaining"] == "99"


def test_retry_after_is_set_even_with_rate_limit_headers_off(make_app) -> None:
    """RATELIMIT_HEADERS_ENABLED=False drops X-RateLimit-*, but a 429 still has Retry-After."""
    client = add_routes(make_app({"RATELIMIT_HEADERS_ENABLED": False}), "1/minute").test_client()
    ok = client.get("/items/1", environ_base=CLIENT)
    assert "X-RateLimit-Limit" not in ok.headers and "Retry-After" not in ok.headers
    refused = client.get("/items/1", environ_base=CLIENT)
    assert refused.status_code == 429
    assert "X-RateLimit-Limit" not in refused.headers
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_internal_endpoints_are_never_limited(make_app) -> None:
    """Health, metrics and any path marked internal pass even under strict application limits."""
    app = make_app({"RATELIMIT_DEFAULT": "1/minute", "RATELIMIT_APPLICATION": "1/minute"})
    state = app.extensions["gateway_obs"]

    @app.get("/internal/probe")
    def probe() -> dict[str, Any]:
        return {"ok": True}

    state.add_internal_path("/internal/probe")
    add_routes(app)
    client = app.test_client()
    internal = ["/health", "/health/live", "/health/ready", "/metrics", "/internal/probe"]
    served = {rule.rule for rule in app.url_map.iter_rules()}
    assert set(internal) <= served
    for path in internal:
        for _ in range(4):
            response = client.get(path, environ_base=CLIENT)
            assert response.status_code != 429, path
            assert "X-RateLimit-Limit" not in response.headers
    assert statuses(client, "/free", 2) == [200, 429]


def test_memory_storage_is_chosen_without_a_warning(make_app) -> None:
    """Without a storage setting the limiter uses memory and Flask-Limiter does not warn."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = make_app()
    assert not caught
    assert isinstance(limiter_of(app).storage, MemoryStorage)


def test_flask_limiter_keys_keep_their_meaning(make_app) -> None:
    """RATELIMIT_* keys are Flask-Limiter's: strategy, header names and its own switch."""
    app = add_routes(
        make_app({"RATELIMIT_STRATEGY": "moving-window", "RATELIMIT_HEADER_LIMIT": "X-Quota"})
    )
    assert isinstance(limiter_of(app).limiter, MovingWindowRateLimiter)
    assert app.test_client().get("/items/1", environ_base=CLIENT).headers["X-Quota"] == "3"

    off = add_routes(make_app({"RATELIMIT_ENABLED": False}), "1/minute")
    assert statuses(off.test_client(), "/items/1", 3) == [200, 200, 200]


def test_limiter_enabled_switched_off_at_run_time_limits_nothing(make_app) -> None:
    """limiter.enabled = False, Flask-Limiter's switch, turns every limit and header off at once."""
    app = add_routes(make_app({"RATELIMIT_DEFAULT": "1/minute"}), "1/minute")
    limiter = limiter_of(app)
    client = app.test_client()
    limiter.enabled = False
    for path in ("/free", "/items/1"):
        responses = [client.get(path, environ_base=CLIENT) for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 200], path
        assert "X-RateLimit-Limit" not in responses[-1].headers
    limiter.enabled = True  # and back on: counting starts again
    assert statuses(client, "/free", 2) == [200, 429]
    assert statuses(client, "/items/1", 2) == [200, 429]


def test_disabled_rate_limiting_limits_nothing(make_app) -> None:
    """GATEWAY_OBS_RATELIMIT_ENABLED=False: decorators still apply, nothing is counted."""
    app = make_app({Keys.RATELIMIT_ENABLED: False, "RATELIMIT_DEFAULT": "1/minute"})
    limiter = app.extensions["gateway_obs"].limiter
    assert isinstance(limiter, Limiter) and not isinstance(limiter, GatewayLimiter)

    @app.get("/items/<int:item_id>")
    @limiter.limit("1/minute")
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    responses = [app.test_client().get("/items/1", environ_base=CLIENT) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "X-RateLimit-Limit" not in responses[-1].headers


def test_unexpected_error_in_a_key_function_is_not_taken_for_a_storage_outage(make_app) -> None:
    """A bug in a key function is a 500 (hidden text), not a silently disabled limiter."""

    def broken_key() -> str:
        raise ValueError("key function bug with secret hunter2")

    app = add_routes(make_app({Keys.RATELIMIT_KEY_FUNC: broken_key}))
    response = app.test_client().get("/items/1", environ_base=CLIENT)
    assert response.status_code == 500 and b"hunter2" not in response.data
    assert not limiter_of(app).storage_down


def test_breach_is_counted_by_route_template_and_logged_with_the_request_id(make_app) -> None:
    """Each 429 adds one to rate_limit_exceeded_total{route} and logs at info with request_id."""
    app = add_routes(make_app(), "1/minute")
    client = app.test_client()
    client.get("/items/1", environ_base=CLIENT)
    with capture_logs() as logs:  # the root: every logger's records, Flask-Limiter's too
        refused = client.get("/items/1", environ_base=CLIENT, headers={"X-Request-ID": "rl-1"})
        other = client.get("/items/2", environ_base=CLIENT)  # same route: same count
    assert refused.status_code == 429 and other.status_code == 429
    assert metric_value(app, "rate_limit_exceeded_total", route=ITEM_ROUTE) == 2
    records = logs.find(message="rate limit exceeded")
    assert len(records) == 2
    first = records[0]
    assert first["level"] == "info" and first["request_id"] == "rl-1"
    assert first["route"] == ITEM_ROUTE and first["method"] == "GET"
    assert first["rate_limit"] == "1 per 1 minute" and first["retry_after"] >= 1
    limiter_lines = [r["message"] for r in logs.find(logger="flask-limiter")]
    assert limiter_lines == ["ratelimit 1 per 1 minute exceeded at endpoint: item"] * 2
    # The key (an address, maybe a token) stays out of every record but the access line's
    # remote_addr, which is there by design.
    not_access = [r for r in logs.records if r["logger"] != "flask_gateway_obs.access"]
    assert not_access and "192.0.2.7" not in json.dumps(not_access)


def secret_token() -> str:
    """A key function whose key is a secret (an API token)."""
    return request.headers.get("X-API-Key", "anonymous")


@pytest.mark.parametrize("path", ["/free", "/dynamic"], ids=["fast-path", "flask-limiters-path"])
def test_client_keys_reach_no_log_handler_on_a_breach(make_app, path) -> None:
    """Flask-Limiter's breach line names the limit and endpoint, never the client key."""
    app = make_app({Keys.RATELIMIT_KEY_FUNC: secret_token, "RATELIMIT_DEFAULT": "1/minute"})

    @app.get("/free")
    def free() -> str:
        return "free"

    @app.get("/dynamic")
    @limiter_of(app).limit(lambda: "1/minute")  # a callable limit: evaluated per request
    def dynamic() -> str:
        return "dynamic"

    client = app.test_client()
    token = {"X-API-Key": "sk_live_SECRET123"}
    with capture_logs() as logs:
        assert statuses(client, path, 3, headers=token) == [200, 429, 429]
    endpoint = path.strip("/")
    assert [r["message"] for r in logs.find(logger="flask-limiter")] == [
        f"ratelimit 1 per 1 minute exceeded at endpoint: {endpoint}"
    ] * 2
    assert "SECRET123" not in "\n".join(logs.lines)


def test_breach_reports_to_the_recorder(make_app) -> None:
    """Concerns report through state.recorder: one rate_limit_exceeded(route) per breach."""
    app = add_routes(make_app({"RATELIMIT_DEFAULT": "1/minute"}))
    recorder = RecordingRecorder()
    app.extensions["gateway_obs"].recorder = recorder
    statuses(app.test_client(), "/free", 3)
    assert recorder.breaches == ["/free", "/free"]


def test_current_limit_in_a_view_describes_this_requests_hit(make_app) -> None:
    """limiter.current_limit / current_limits in a view describe this request's hit."""
    app = make_app({"RATELIMIT_DEFAULT": "5/minute;10/hour"})
    limiter = limiter_of(app)

    @app.get("/me")
    def me() -> dict[str, Any]:
        current = limiter.current_limit
        assert current is not None
        return {
            "limit": str(current.limit),
            "remaining": current.remaining,
            "key": current.key,
            "all": [str(limit.limit) for limit in limiter.current_limits],
        }

    client = app.test_client()
    client.get("/me", environ_base=CLIENT)
    response = client.get("/me", environ_base=CLIENT)
    assert response.get_json() == {
        "limit": "5 per 1 minute",
        "remaining": 3,
        "key": "LIMITER/192.0.2.7/me/5/1/minute",
        "all": ["5 per 1 minute", "10 per 1 hour"],
    }
    assert response.headers["X-RateLimit-Remaining"] == "3"


def test_limits_added_after_requests_apply_at_once(make_app) -> None:
    """Exemptions and filters added after the first requests drop the resolved limits."""
    app = add_routes(make_app({"RATELIMIT_DEFAULT": "2/minute"}))
    limiter = limiter_of(app)
    client = app.test_client()
    assert statuses(client, "/free", 1) == [200]
    limiter.exempt(app.view_functions["free"])
    assert statuses(client, "/free", 4) == [200] * 4

    @limiter.request_filter
    def internal() -> bool:
        return request.headers.get("X-Internal") == "1"

    assert statuses(client, "/items/1", 4, headers={"X-Internal": "1"}) == [200] * 4
    assert statuses(client, "/items/1", 4) == [200, 200, 200, 429]


def test_a_first_limit_added_later_runs_where_init_app_would_have_put_it(make_app) -> None:
    """A blueprint limit added after requests applies after hooks from before init_app only."""
    order: list[str] = []
    app = make_app(init=False)

    @app.before_request
    def early() -> None:
        g.user = request.headers.get("X-User", "anonymous")
        order.append("early")

    obs = GatewayObs(app, ratelimit_key_func=lambda: g.user)

    @app.before_request
    def late() -> None:
        order.append("late")

    bp = Blueprint("api", __name__)
    bp.add_url_rule("/r", "r", lambda: "r")
    app.register_blueprint(bp)
    client = app.test_client()
    assert statuses(client, "/r", 2) == [200, 200]  # no limit yet
    obs.limiter.limit("1/minute")(bp)  # registered and served already
    order.clear()
    users = ("u1", "u1", "u2")
    assert [client.get("/r", headers={"X-User": u}).status_code for u in users] == [200, 429, 200]
    assert order == ["early", "late", "early", "early", "late"]  # the 429 stopped before late


def test_a_decorated_view_of_an_app_without_other_limits_gets_its_headers(make_app) -> None:
    """The first call of the only limited view already carries the X-RateLimit headers."""
    app = make_app()

    @app.get("/limited")
    @limiter_of(app).limit("2/minute")
    def limited() -> str:
        return "limited"

    app.add_url_rule("/free", "free", lambda: "free")
    client = app.test_client()
    assert "X-RateLimit-Limit" not in client.get("/free", environ_base=CLIENT).headers
    responses = [client.get("/limited", environ_base=CLIENT) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r.headers.get("X-RateLimit-Remaining") for r in responses] == ["1", "0", "0"]
