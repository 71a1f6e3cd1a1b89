"""Who a limit counts: the socket address, trusted proxies, key functions."""

from __future__ import annotations

import pytest
from flask import Flask, g, request

from flask_gateway_obs import GatewayObs
from flask_gateway_obs.config import Keys
from flask_gateway_obs.ratelimit import (
    client_address,
)

from .helpers import (
    CLIENT,
    add_routes,
)

pytestmark = pytest.mark.usefixtures("limiter_path")


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
        make_app({Keys.RATELIMIT_KEY_FUNC: "tests.ratelimit.test_identity:api_key"}), "1/minute"
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
