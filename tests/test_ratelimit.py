"""Rate limiting: problem+json 429s, shared limits in Redis, fail-open/closed, client identity."""

from __future__ import annotations

import gc
import json
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask, g, request
from flask_limiter import Limiter
from limits.storage import MemoryStorage, RedisSentinelStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter

from flask_gateway_obs import ConfigError, GatewayObs, ServiceUnavailableError, ratelimit
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.contracts import Recorder
from flask_gateway_obs.ratelimit import (
    DeferredLimiter,
    GatewayLimiter,
    client_address,
    storage_uri,
)
from flask_gateway_obs.testing import capture_logs, metric_value

from .conftest import ManualClock, free_port

ITEM_ROUTE = "/items/<int:item_id>"
CLIENT = {"REMOTE_ADDR": "192.0.2.7"}


FakeClock = ManualClock


class RecordingRecorder(Recorder):
    """Keeps what the limiter reports instead of counting it."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.breaches: list[str] = []

    def error(self, error_type: str, source: str) -> None:
        self.errors.append((error_type, source))

    def rate_limit_exceeded(self, route: str) -> None:
        self.breaches.append(route)


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


def limiter_of(app: Flask) -> GatewayLimiter:
    limiter = app.extensions["gateway_obs"].limiter
    assert isinstance(limiter, GatewayLimiter)
    return limiter


def add_routes(app: Flask, item_limit: str = "3/minute", **limit_options: Any) -> Flask:
    """``/items/<id>`` limited per route, ``/free`` under the defaults, ``/exempt`` never."""
    limiter = limiter_of(app)

    @app.get(ITEM_ROUTE)
    @limiter.limit(item_limit, **limit_options)
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    @app.get("/free")
    def free() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/exempt")
    @limiter.exempt
    def exempt() -> dict[str, Any]:
        return {"ok": True}

    return app


def statuses(client: Any, path: str, count: int, **kwargs: Any) -> list[int]:
    return [client.get(path, environ_base=CLIENT, **kwargs).status_code for _ in range(count)]


def problem(response: Any) -> dict[str, Any]:
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = json.loads(response.data)
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def count_commands(monkeypatch: pytest.MonkeyPatch, limiter: GatewayLimiter) -> list[str]:
    """Every command the limiter's Redis client sends from now on (each one a backend attempt)."""
    storage = limiter.storage
    assert isinstance(storage, RedisStorage)
    client = storage.storage
    sent: list[str] = []
    original = client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return original(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    return sent


def unique_service() -> str:
    return f"rl-test-{uuid.uuid4().hex[:12]}"


# --- in memory -----------------------------------------------------------------------------


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


def test_bad_ratelimit_settings_fail_init_naming_every_key(make_app) -> None:
    """Bad values of our keys fail at init_app with one error naming each of them."""
    with pytest.raises(ConfigError) as caught:
        make_app(
            {
                Keys.TRUSTED_PROXIES: -1,
                Keys.RATELIMIT_KEY_FUNC: "no_such_module_here:key",
                Keys.RATELIMIT_PROBE_INTERVAL: 0,
                Keys.RATELIMIT_STORAGE_TIMEOUT: "soon",
                Keys.RATELIMIT_FAIL_CLOSED: "maybe",
            }
        )
    named = {key for key, _, _ in caught.value.problems}
    assert named == {
        Keys.TRUSTED_PROXIES,
        Keys.RATELIMIT_KEY_FUNC,
        Keys.RATELIMIT_PROBE_INTERVAL,
        Keys.RATELIMIT_STORAGE_TIMEOUT,
        Keys.RATELIMIT_FAIL_CLOSED,
    }


def test_unexpected_error_in_a_key_function_is_not_taken_for_a_storage_outage(make_app) -> None:
    """A bug in a key function is a 500 (hidden text), not a silently disabled limiter."""

    def broken_key() -> str:
        raise ValueError("key function bug with secret hunter2")

    app = add_routes(make_app({Keys.RATELIMIT_KEY_FUNC: broken_key}))
    response = app.test_client().get("/items/1", environ_base=CLIENT)
    assert response.status_code == 500 and b"hunter2" not in response.data
    assert not limiter_of(app).storage_down


# --- breach reporting ------------------------------------------------------------------------


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
def test_client_keys_reach_no_log_handler_on_a_breach(make_app, own_path_calls, path) -> None:
    """Flask-Limiter's breach line names the limit and endpoint, never the client key."""
    app = make_app({Keys.RATELIMIT_KEY_FUNC: secret_token, "RATELIMIT_DEFAULT": "1/minute"})

    @app.get("/free")
    def free() -> str:
        return "free"

    @app.get("/dynamic")
    @limiter_of(app).limit(lambda: "1/minute")  # a callable limit: Flask-Limiter's own path
    def dynamic() -> str:
        return "dynamic"

    client = app.test_client()
    token = {"X-API-Key": "sk_live_SECRET123"}
    with capture_logs() as logs:
        assert statuses(client, path, 3, headers=token) == [200, 429, 429]
    assert bool(own_path_calls) == (path == "/dynamic")
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


# --- client identity ---------------------------------------------------------------------------


def test_rotating_x_forwarded_for_does_not_reset_the_limit_without_trusted_proxies(
    make_app,
) -> None:
    """With no trusted proxy the socket address counts, whatever X-Forwarded-For says."""
    client = add_routes(make_app({"RATELIMIT_DEFAULT": "2/minute"})).test_client()
    codes = [
        client.get(
            "/free", environ_base=CLIENT, headers={"X-Forwarded-For": f"198.51.100.{i}"}
        ).status_code
        for i in range(4)
    ]
    assert codes == [200, 200, 429, 429]


def test_one_trusted_proxy_counts_the_address_that_proxy_saw(make_app) -> None:
    """With one trusted proxy the rightmost hop is the client; what the client sent is ignored."""
    app = add_routes(make_app({"RATELIMIT_DEFAULT": "2/minute", Keys.TRUSTED_PROXIES: 1}))
    client = app.test_client()
    proxy = {"REMOTE_ADDR": "10.0.0.1"}

    def get(forwarded: str) -> int:
        headers = {"X-Forwarded-For": forwarded}
        return int(client.get("/free", environ_base=proxy, headers=headers).status_code)

    # The client rotates a forged first hop; the proxy appends the address it saw.
    assert [get(f"198.51.100.{i}, 203.0.113.5") for i in range(3)] == [200, 200, 429]
    assert get("203.0.113.9") == 200  # another client, its own count
    assert get("198.51.100.77,203.0.113.9") == 200
    assert get("203.0.113.9") == 429


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        (0, "198.51.100.1", "10.0.0.1"),
        (1, "198.51.100.1, 203.0.113.5", "203.0.113.5"),
        (2, "198.51.100.1, 203.0.113.5, 10.0.0.2", "203.0.113.5"),
        (2, "203.0.113.5", "10.0.0.1"),  # fewer hops than proxies: the socket address
        (1, " , ", "10.0.0.1"),  # an empty hop: the socket address
        (1, None, "10.0.0.1"),
        (3, "a, b, c", "a"),
    ],
)
def test_client_address_follows_proxyfix(
    trusted: int, forwarded: str | None, expected: str
) -> None:
    """The Nth address from the right of X-Forwarded-For, as werkzeug's ProxyFix picks it."""
    app = Flask("keys")
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    with app.test_request_context(headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"}):
        assert client_address(trusted)() == expected
    with pytest.raises(ValueError, match="trusted_proxies"):
        client_address(-1)


def api_key() -> str:
    """A key function named by import string in a test."""
    return request.headers.get("X-API-Key", "anonymous")


def test_key_function_can_be_set_by_import_string(make_app) -> None:
    """GATEWAY_OBS_RATELIMIT_KEY_FUNC names who a limit counts (here: the API key)."""
    app = add_routes(
        make_app({Keys.RATELIMIT_KEY_FUNC: "tests.test_ratelimit:api_key"}), "1/minute"
    )
    client = app.test_client()

    def get(key: str, addr: str) -> int:
        response = client.get(
            "/items/1", headers={"X-API-Key": key}, environ_base={"REMOTE_ADDR": addr}
        )
        return int(response.status_code)

    assert get("k1", "192.0.2.1") == 200
    assert get("k1", "192.0.2.2") == 429  # same key from another address
    assert get("k2", "192.0.2.1") == 200


def test_a_key_function_reads_what_a_hook_registered_before_init_app_set(make_app) -> None:
    """A before-request hook registered before init_app runs before the limit check (g.user)."""
    app = make_app(
        {Keys.RATELIMIT_KEY_FUNC: lambda: g.user, "RATELIMIT_DEFAULT": "1/minute"}, init=False
    )

    @app.before_request
    def authenticate() -> None:
        g.user = request.headers.get("X-User", "anonymous")

    GatewayObs(app)

    @app.get("/me")
    def me() -> str:
        return str(g.user)

    client = app.test_client()

    def get(user: str) -> int:
        return int(client.get("/me", headers={"X-User": user}, environ_base=CLIENT).status_code)

    assert [get("u1"), get("u1"), get("u2")] == [200, 429, 200]


# --- obs.limiter before and across apps ----------------------------------------------------------


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
    facade = obs._limiter_facade
    assert facade is not None and facade._filters == []  # nothing kept per app


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


# --- storage selection ---------------------------------------------------------------------


def test_storage_comes_from_ratelimit_storage_uri_then_redis_url_then_memory() -> None:
    """RATELIMIT_STORAGE_URI wins, then GATEWAY_OBS_REDIS_URL, else memory."""
    redis = "redis://127.0.0.1:6390/2"
    assert storage_uri({"RATELIMIT_STORAGE_URI": "memory://"}, redis) == "memory://"
    assert storage_uri({}, redis) == redis
    assert storage_uri({}, "unix:///run/redis.sock?db=1") == "redis+unix:///run/redis.sock?db=1"
    assert storage_uri({}, None) == "memory://"


def test_redis_storage_gets_short_socket_timeouts_unless_the_app_sets_them(make_app) -> None:
    """Our timeout goes to the Redis client; RATELIMIT_STORAGE_OPTIONS wins; nothing connects."""
    url = "redis://127.0.0.1:1/0"  # nothing listens: setting up must not try to connect
    app = make_app({Keys.REDIS_URL: url, Keys.RATELIMIT_STORAGE_TIMEOUT: 0.1})
    storage = limiter_of(app).storage
    assert isinstance(storage, RedisStorage)
    kwargs = storage.storage.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.1 and kwargs["socket_connect_timeout"] == 0.1

    own = make_app({Keys.REDIS_URL: url, "RATELIMIT_STORAGE_OPTIONS": {"socket_timeout": 2}})
    storage = limiter_of(own).storage
    assert isinstance(storage, RedisStorage)
    assert storage.storage.connection_pool.connection_kwargs["socket_timeout"] == 2

    memory = make_app({Keys.REDIS_URL: url, "RATELIMIT_STORAGE_URI": "memory://"})
    assert isinstance(limiter_of(memory).storage, MemoryStorage)


def test_sentinel_connections_get_the_socket_timeouts_too(make_app) -> None:
    """redis+sentinel: the connections to the sentinels time out like those to Redis."""
    from flask_gateway_obs.ratelimit import storage_options

    uri = "redis+sentinel://127.0.0.1:1/mymaster"  # nothing listens: nothing connects
    timeouts = {"socket_timeout": 0.2, "socket_connect_timeout": 0.2}
    assert storage_options(uri, 0.2) == {
        "wrap_exceptions": True,
        **timeouts,
        "sentinel_kwargs": timeouts,
    }
    assert "sentinel_kwargs" not in storage_options("redis://127.0.0.1:1/0", 0.2)
    assert storage_options("memory://", 0.2) == {"wrap_exceptions": True}

    app = make_app({"RATELIMIT_STORAGE_URI": uri, Keys.RATELIMIT_STORAGE_TIMEOUT: 0.2})
    storage = limiter_of(app).storage
    assert isinstance(storage, RedisSentinelStorage)
    (sentinel,) = storage.sentinel.sentinels
    kwargs = sentinel.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.2 and kwargs["socket_connect_timeout"] == 0.2


# --- Redis ---------------------------------------------------------------------------------------


@pytest.mark.redis
def test_two_app_instances_share_one_limit_in_redis(make_app, redis_url) -> None:
    """Two instances of one service on the same Redis count against the same limit."""
    config = {Keys.REDIS_URL: redis_url, Keys.SERVICE_NAME: unique_service()}
    first = add_routes(make_app(config)).test_client()
    second = add_routes(make_app(config)).test_client()
    assert statuses(first, "/items/1", 2) == [200, 200]
    third = second.get("/items/1", environ_base=CLIENT)
    assert third.status_code == 200
    # The headers read the shared window: 3 used of 3, resetting within the minute.
    assert third.headers["X-RateLimit-Remaining"] == "0"
    assert 0 < int(third.headers["X-RateLimit-Reset"]) - time.time() <= 61
    refused = second.get("/items/1", environ_base=CLIENT)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert statuses(first, "/items/1", 1) == [429]
    # Another service on the same Redis has its own counts.
    other = {Keys.REDIS_URL: redis_url, Keys.SERVICE_NAME: unique_service()}
    assert statuses(add_routes(make_app(other)).test_client(), "/items/1", 1) == [200]


@pytest.mark.redis
@pytest.mark.slow
def test_redis_killed_mid_test_fails_open_then_shares_limits_again(
    make_app, redis_server, monkeypatch
) -> None:
    """Redis down: served on in-memory limits, one attempt, one warning; back: shared again."""
    config = {Keys.REDIS_URL: redis_server.url, "RATELIMIT_DEFAULT": "3/minute"}
    first, second = add_routes(make_app(config)), add_routes(make_app(config))
    limiter, clock, recorder = limiter_of(first), FakeClock(), RecordingRecorder()
    limiter.clock = clock
    first.extensions["gateway_obs"].recorder = recorder
    client = first.test_client()
    assert statuses(client, "/free", 1) == [200]

    redis_server.stop()
    sent = count_commands(monkeypatch, limiter)
    with capture_logs("flask_gateway_obs.ratelimit") as logs:
        down = statuses(client, "/free", 5)
        # Limits still hold while Redis is away, per process, counted from zero.
        assert down == [200, 200, 200, 429, 429]
        assert sent == ["EVALSHA"]  # one attempt for five requests: no per-request stall
        assert limiter.storage_down
        assert recorder.errors == [("RateLimitStorageError", "ratelimit")]
        warnings_ = logs.find(level="warning")
        assert len(warnings_) == 1
        assert warnings_[0]["message"].startswith("rate limit storage unavailable")
        assert warnings_[0]["storage"] == f"redis://127.0.0.1:{redis_server.port}"

        clock.advance(0.6)  # first probe is due: Redis is still down
        assert statuses(client, "/free", 3) == [429, 429, 429]
        assert sent == ["EVALSHA", "EVALSHA"]  # the probe is a write (limits' increment)
        assert len(recorder.errors) == 2 and len(logs.find(level="warning")) == 1

        redis_server.start()
        clock.advance(0.5)  # the back-off doubled to 1 s: not yet
        assert statuses(client, "/free", 1) == [429] and len(sent) == 2
        clock.advance(0.6)
        assert statuses(client, "/free", 1) == [200]  # probe succeeds; counted in Redis again
        assert not limiter.storage_down
        assert logs.find(message="rate limit storage is back: limits are shared again")

    # Shared again: the restarted Redis holds 1 from the first app; the second adds to it.
    assert statuses(second.test_client(), "/free", 3) == [200, 200, 429]
    assert statuses(client, "/free", 1) == [429]


@pytest.mark.redis
@pytest.mark.slow
def test_fail_closed_answers_503_problem_json_while_redis_is_down(
    make_app, redis_server, monkeypatch
) -> None:
    """Fail-closed: limited routes get a 503 problem+json at once; unlimited ones are served."""
    config = {Keys.REDIS_URL: redis_server.url, Keys.RATELIMIT_FAIL_CLOSED: True}
    app = add_routes(make_app(config))
    limiter, clock = limiter_of(app), FakeClock()
    limiter.clock = clock
    client = app.test_client()
    assert statuses(client, "/items/1", 1) == [200]

    redis_server.stop()
    sent = count_commands(monkeypatch, limiter)
    refused = [client.get("/items/1", environ_base=CLIENT) for _ in range(4)]
    assert {r.status_code for r in refused} == {503}
    body = problem(refused[0])
    assert body["code"] == "rate_limit_unavailable"
    assert "Rate limiting is temporarily unavailable" in body["detail"]
    assert refused[0].headers["Retry-After"] == "1"
    assert "X-RateLimit-Limit" not in refused[0].headers
    assert sent == ["EVALSHA"]  # the rest were refused without touching Redis
    assert statuses(client, "/free", 2) == [200, 200]
    assert statuses(client, "/exempt", 2) == [200, 200]

    redis_server.start()
    clock.advance(0.6)
    assert statuses(client, "/items/1", 1) == [200]
    assert sent[:2] == ["EVALSHA", "EVALSHA"] and not limiter.storage_down


@pytest.mark.redis
def test_black_holed_redis_costs_one_timeout_not_one_per_request(
    make_app, black_hole, monkeypatch
) -> None:
    """A Redis that never answers is tried once, within its timeout; later requests skip it."""
    host, port = black_hole
    config = {
        Keys.REDIS_URL: f"redis://{host}:{port}/0",
        Keys.RATELIMIT_STORAGE_TIMEOUT: 0.1,
        "RATELIMIT_DEFAULT": "100/minute",
    }
    app = add_routes(make_app(config))
    limiter = limiter_of(app)
    limiter.clock = FakeClock()
    sent = count_commands(monkeypatch, limiter)
    client = app.test_client()
    started = time.perf_counter()
    assert statuses(client, "/free", 20) == [200] * 20
    elapsed = time.perf_counter() - started
    assert sent == ["EVALSHA"]
    assert limiter.storage_down and limiter.storage_failures == 1
    assert elapsed < 5.0  # generous: one 0.1 s timeout, not twenty


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("deduct", [False, True], ids=["headers", "deduct_when"])
def test_redis_dying_during_a_request_never_turns_it_into_a_500(
    make_app, redis_server, deduct: bool
) -> None:
    """Redis killed inside the view: the after-request step (headers, deduction) contains it."""
    # The moving window reads its window back for the headers after the view (the
    # fixed window takes them from the hit: see the next test).
    strategy = "fixed-window" if deduct else "moving-window"
    app = make_app({Keys.REDIS_URL: redis_server.url, "RATELIMIT_STRATEGY": strategy})
    limiter = limiter_of(app)
    options: dict[str, Callable[[Any], bool]] = {"deduct_when": lambda r: True} if deduct else {}

    @app.get("/kill")
    @limiter.limit("10/minute", **options)
    def kill() -> dict[str, Any]:
        redis_server.stop()
        return {"killed": True}

    response = app.test_client().get("/kill", environ_base=CLIENT)
    assert response.status_code == 200 and response.get_json() == {"killed": True}
    assert "X-RateLimit-Limit" not in response.headers
    assert limiter.storage_down


@pytest.mark.redis
@pytest.mark.slow
def test_fixed_window_headers_come_from_the_hit_when_redis_dies_in_the_view(
    make_app, redis_server
) -> None:
    """Fixed window: headers come from the hit, not Redis after the view; then it fails open."""
    app = make_app({Keys.REDIS_URL: redis_server.url})
    limiter = limiter_of(app)
    limiter.clock = FakeClock()

    @app.get("/kill")
    @limiter.limit("10/minute")
    def kill() -> dict[str, Any]:
        redis_server.stop()
        return {"killed": True}

    client = app.test_client()
    response = client.get("/kill", environ_base=CLIENT)
    assert response.status_code == 200 and response.get_json() == {"killed": True}
    assert response.headers["X-RateLimit-Remaining"] == "9"
    assert not limiter.storage_down  # nothing was asked of Redis after the view
    again = client.get("/kill", environ_base=CLIENT)
    assert again.status_code == 200 and limiter.storage_down


@pytest.mark.redis
@pytest.mark.slow
def test_a_flapping_redis_is_warned_about_once_a_minute(make_app, redis_server) -> None:
    """Down, back, down again within a minute: one warning; a minute later, another."""
    app = add_routes(make_app({Keys.REDIS_URL: redis_server.url, "RATELIMIT_DEFAULT": "50/minute"}))
    limiter, clock, recorder = limiter_of(app), FakeClock(), RecordingRecorder()
    limiter.clock = clock
    app.extensions["gateway_obs"].recorder = recorder
    client = app.test_client()

    def outage_and_return(first_probe: float) -> None:
        redis_server.stop()
        assert statuses(client, "/free", 2) == [200, 200]
        assert limiter.storage_down
        redis_server.start()
        clock.advance(first_probe)
        assert statuses(client, "/free", 1) == [200]
        assert not limiter.storage_down

    with capture_logs("flask_gateway_obs.ratelimit") as logs:
        outage_and_return(0.6)
        clock.advance(10)
        outage_and_return(1.1)  # down again soon after: the back-off went on (1 s, not 0.5 s)
        assert len(logs.find(level="warning")) == 1
        assert len(logs.find(message="rate limit storage is back: limits are shared again")) == 1
        clock.advance(60)
        outage_and_return(0.6)
        assert len(logs.find(level="warning")) == 2
    assert recorder.errors == [("RateLimitStorageError", "ratelimit")] * 3


@pytest.mark.redis
@pytest.mark.slow
def test_a_redis_that_answers_but_refuses_writes_stays_down_and_limits_hold(
    make_app, redis_server, monkeypatch
) -> None:
    """Read-only Redis answers PING but probes write: limits hold; a quick relapse keeps counts."""
    import redis

    app = add_routes(make_app({Keys.REDIS_URL: redis_server.url, "RATELIMIT_DEFAULT": "3/minute"}))
    limiter, clock = limiter_of(app), FakeClock()
    limiter.clock = clock
    client = app.test_client()
    admin = redis.Redis.from_url(redis_server.url)
    try:
        assert statuses(client, "/free", 1) == [200]  # 1 in Redis
        admin.replicaof("127.0.0.1", free_port())  # a replica of nothing: read-only
        assert admin.ping()
        sent = count_commands(monkeypatch, limiter)
        assert statuses(client, "/free", 4) == [200, 200, 200, 429]  # in memory, from zero
        assert limiter.storage_down and limiter.storage_failures == 1
        for wait in (0.6, 1.1, 2.1):  # probes due after 0.5, 1 and 2 s: each write refused
            clock.advance(wait)
            assert statuses(client, "/free", 1) == [429]
            assert limiter.storage_down
        assert limiter.storage_failures == 4 and "PING" not in sent

        admin.replicaof("NO", "ONE")  # takes writes again
        clock.advance(4.1)
        assert statuses(client, "/free", 1) == [200]  # the probe wrote: 2 of 3 in Redis
        assert not limiter.storage_down

        admin.replicaof("127.0.0.1", free_port())  # read-only again, seconds later
        clock.advance(5)
        assert statuses(client, "/free", 1) == [429]  # the outage's count holds
        assert limiter.storage_down and limiter.storage_failures == 5
        before = len(sent)
        clock.advance(4.1)  # not back to a 0.5 s wait: the back-off goes on (8 s)
        assert statuses(client, "/free", 1) == [429] and len(sent) == before
    finally:
        admin.close()


# --- the fast path: counts, keys and headers exactly as Flask-Limiter's ------------------------
#
# Each scenario builds the same routes on our app and on a raw Flask-Limiter app and sends
# both the same requests: statuses, headers and the storage's keys and counts must match.

Routes = Callable[[Flask, Limiter], None]
Call = tuple[str, str, str]  # method, path, client address
A, B = "192.0.2.7", "192.0.2.8"


@pytest.fixture
def own_path_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, bool]]:
    """Every time one of our limiters takes Flask-Limiter's own check, from now on."""
    calls: list[tuple[str | None, bool]] = []
    original = Limiter._check_request_limit

    def counting(
        self: Limiter, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        if isinstance(self, GatewayLimiter):
            calls.append((callable_name, in_middleware))
        original(self, callable_name, in_middleware)

    monkeypatch.setattr(Limiter, "_check_request_limit", counting)
    return calls


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


#: name -> (config, routes, requests, our own path: "never" | "sometimes")
SCENARIOS: dict[str, tuple[dict[str, Any], Routes, list[Call], str]] = {
    "defaults-and-a-route-limit": (
        {"RATELIMIT_DEFAULT": "3/minute"},
        basic_routes,
        [get("/free")] * 4
        + [get("/items/1"), get("/items/2"), get("/items/3"), get("/items/1", B)]
        + [get("/exempt")] * 4
        + [get("/free", B), get("/nowhere")],
        "never",
    ),
    "several-windows-application-and-per-method-defaults": (
        {
            "RATELIMIT_DEFAULT": "3/hour;2/minute",
            "RATELIMIT_APPLICATION": "7/minute",
            "RATELIMIT_DEFAULTS_PER_METHOD": True,
        },
        several_windows,
        [get("/free")] * 3 + [post("/free")] * 3 + [get("/items/1")] * 3 + [get("/free", B)] * 2,
        "never",
    ),
    "shared-blueprint-method-and-scoped-limits": (
        {"RATELIMIT_DEFAULT": "4/minute"},
        shared_blueprint_and_methods,
        [get("/one"), get("/two"), get("/one"), get("/two"), get("/one", B)]
        + [get("/write")] * 5
        + [post("/write")] * 2
        + [get("/scoped"), post("/scoped")] * 3
        + [get("/reports")] * 3,
        "never",
    ),
    "defaults-kept-beside-a-route-limit-and-empty-keys": (
        {"RATELIMIT_DEFAULT": "2/minute", "RATELIMIT_FAIL_ON_FIRST_BREACH": False},
        defaults_kept_and_empty_keys,
        [get("/both")] * 4 + [get("/keyed")] * 3,
        "never",
    ),
    "moving-window-through-the-strategy": (
        {"RATELIMIT_DEFAULT": "3/minute", "RATELIMIT_STRATEGY": "moving-window"},
        basic_routes,
        [get("/free")] * 4 + [get("/items/1")] * 3 + [get("/free", B)],
        "never",
    ),
    "sliding-window-counter-through-the-strategy": (
        {"RATELIMIT_DEFAULT": "3/minute", "RATELIMIT_STRATEGY": "sliding-window-counter"},
        basic_routes,
        [get("/free")] * 4 + [get("/items/1")] * 3 + [get("/free", B)],
        "never",
    ),
    "a-limit-inside-the-view": (
        {"RATELIMIT_DEFAULT": "3/minute"},
        limit_inside_the_view,
        [get("/inside")] * 4,
        "sometimes",
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


def memory_counts(limiter: Limiter) -> dict[str, int]:
    storage = limiter.storage
    assert isinstance(storage, MemoryStorage)
    return {key: count for key, count in storage.storage.items() if count}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fast_path_counts_exactly_like_flask_limiter(make_app, own_path_calls, scenario) -> None:
    """Same statuses, headers, storage keys and counts as raw Flask-Limiter, request by request."""
    config, routes, calls, own_path = SCENARIOS[scenario]
    ours = make_app(config)
    routes(ours, limiter_of(ours))
    theirs = raw_app(config)
    routes(theirs, raw_limiter(theirs))
    assert_same_responses(replay(ours, calls), replay(theirs, calls))
    assert memory_counts(limiter_of(ours)) == memory_counts(raw_limiter(theirs))
    if own_path == "never":
        assert own_path_calls == []
    else:
        assert own_path_calls


def dynamic_limit() -> str:
    """A limit string read per request."""
    return "2/minute"


#: Limits that run app code per request (or need Flask-Limiter's per-request machinery):
#: Flask-Limiter's own path runs every request they apply to.
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
def test_dynamic_limits_fall_back_to_flask_limiters_own_path(
    make_app, own_path_calls, case
) -> None:
    """Callables, meta limits and unusual settings keep Flask-Limiter's own path, and its counts."""
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
    assert len(own_path_calls) >= 4  # every request


def test_only_the_endpoints_with_dynamic_limits_leave_the_fast_path(
    make_app, own_path_calls
) -> None:
    """One callable limit sends its own route down Flask-Limiter's path, not the others."""
    app = add_routes(make_app({"RATELIMIT_DEFAULT": "5/minute"}))
    limiter = limiter_of(app)

    @app.get("/dynamic")
    @limiter.limit(dynamic_limit)
    def dynamic() -> str:
        return "dynamic"

    client = app.test_client()
    assert statuses(client, "/free", 2) + statuses(client, "/items/1", 2) == [200] * 4
    assert own_path_calls == []
    assert statuses(client, "/dynamic", 3) == [200, 200, 429]
    assert own_path_calls and all(call for call in own_path_calls)


def test_limits_added_after_requests_apply_at_once(make_app, own_path_calls) -> None:
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
    assert own_path_calls == []


def test_methods_clients_make_up_do_not_grow_the_cache(make_app) -> None:
    """Requests with invented methods are refused (405) and keep the resolved limits bounded."""
    app = add_routes(make_app({"RATELIMIT_DEFAULT": "1000/minute"}))
    client = app.test_client()
    codes = {
        client.open("/free", method=f"X{i}", environ_base=CLIENT).status_code for i in range(50)
    }
    assert codes == {405}
    assert statuses(client, "/free", 1) == [200]
    limiter = limiter_of(app)
    plans = [*limiter._gate_plans.values(), *limiter._view_plans.values()]
    assert sum(len(by_method) for by_method in plans) <= 16


def test_the_memory_sweeper_thread_starts_at_most_once_a_second(make_app, monkeypatch) -> None:
    """Hits more than its 10 ms apart do not each start a thread to sweep expired windows."""
    started: list[float] = []

    class CountingTimer(threading.Timer):
        def start(self) -> None:
            started.append(time.monotonic())
            super().start()

    app = add_routes(make_app({"RATELIMIT_DEFAULT": "1000/minute"}))
    monkeypatch.setattr(threading, "Timer", CountingTimer)
    client = app.test_client()
    for _ in range(5):
        assert statuses(client, "/free", 1) == [200]
        time.sleep(0.015)  # limits' one-shot sweeper (10 ms) has finished by the next hit
    assert len(started) <= 1


def test_expired_memory_windows_are_still_swept(make_app, monkeypatch) -> None:
    """A window that expired is removed from memory even if its client never comes back."""
    monkeypatch.setattr(ratelimit, "SWEEP_INTERVAL", 0.0)
    app = add_routes(make_app({"RATELIMIT_DEFAULT": "1000/minute"}))
    storage = limiter_of(app).storage
    assert isinstance(storage, MemoryStorage)
    client = app.test_client()
    assert statuses(client, "/free", 1) == [200]
    (gone,) = storage.expirations
    storage.expirations[gone] = time.time() - 1  # as if its minute were over
    deadline = time.monotonic() + 5
    while gone in storage.storage and time.monotonic() < deadline:
        time.sleep(0.02)
        client.get("/free", environ_base={"REMOTE_ADDR": "192.0.2.99"})
    assert gone not in storage.storage


def test_current_limit_in_a_view_is_flask_limiters_after_the_fast_path(make_app) -> None:
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


# --- the fast path on Redis ----------------------------------------------------------------------


def redis_counts(url: str, prefix: str) -> dict[str, tuple[int, bool]]:
    """Count and whether it expires, of each limiter key of ``prefix``, with the prefix cut out."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        found = {}
        for key in client.scan_iter(match=f"LIMITS:LIMITER/{prefix}/*"):
            name = key.decode().replace(f"/{prefix}/", "/<prefix>/", 1)
            found[name] = (int(client.get(key) or 0), int(client.ttl(key)) > 0)
        return found
    finally:
        client.close()


def delete_keys(url: str, *prefixes: str) -> None:
    """Delete this test's limiter keys (only its own prefixes: db 15 is shared)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for prefix in prefixes:
            keys = list(client.scan_iter(match=f"LIMITS:LIMITER/{prefix}/*"))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.mark.redis
def test_fast_path_counts_exactly_like_flask_limiter_in_redis(make_app, redis_url) -> None:
    """On Redis: same statuses, headers, keys, counts and expiries as raw Flask-Limiter."""
    config, routes, calls, _ = SCENARIOS["shared-blueprint-method-and-scoped-limits"]
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


@pytest.mark.redis
def test_a_changed_redis_script_in_limits_keeps_counting_through_the_strategy(
    make_app, redis_url, monkeypatch, own_path_calls
) -> None:
    """If limits ships another fixed-window script, the hit goes through its strategy instead."""
    monkeypatch.setattr(ratelimit, "_INCR_EXPIRE", b"-- the script as an older limits had it")
    app = add_routes(make_app({Keys.REDIS_URL: redis_url, Keys.SERVICE_NAME: unique_service()}))
    responses = [app.test_client().get("/items/1", environ_base=CLIENT) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["2", "1", "0", "0"]
    assert own_path_calls == [] and limiter_of(app)._fast_mode == "strategy"


@pytest.mark.redis
def test_a_limited_request_costs_one_redis_round_trip(make_app, redis_url, monkeypatch) -> None:
    """Fixed window on Redis with headers on: the hit and the window in one command."""
    app = add_routes(
        make_app(
            {
                Keys.REDIS_URL: redis_url,
                Keys.SERVICE_NAME: unique_service(),
                "RATELIMIT_DEFAULT": "100/minute",
            }
        )
    )
    client = app.test_client()
    assert statuses(client, "/free", 1) == [200]  # loads the script
    sent = count_commands(monkeypatch, limiter_of(app))
    responses = [client.get("/free", environ_base=CLIENT) for _ in range(3)]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["98", "97", "96"]
    assert all(0 < int(r.headers["X-RateLimit-Reset"]) - time.time() <= 61 for r in responses)
    assert sent == ["EVALSHA"] * 3
