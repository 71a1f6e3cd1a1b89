"""Flask-Limiter's own API through the extension: the Limiter object, its CLI, late limits,
the app's own 429 handler."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.commands import cli as limiter_cli
from flask_limiter.util import get_remote_address

from flask_gateway_obs import GatewayObs
from flask_gateway_obs.testing import metric_value

from .helpers import CLIENT, ITEM_ROUTE, add_routes, limiter_of, problem, statuses

pytestmark = pytest.mark.usefixtures("limiter_path")


def test_obs_limiter_is_a_flask_limiter_limiter_with_its_whole_api(make_app) -> None:
    """Built with an app, obs.limiter is the app's Limiter, in or out of an app context."""
    app = make_app(init=False)
    obs = GatewayObs(app)
    assert isinstance(obs.limiter, Limiter)
    with app.app_context():
        assert isinstance(obs.limiter, Limiter) and obs.limiter is limiter_of(app)
    add_routes(app, "2/minute")
    client = app.test_client()
    assert statuses(client, "/items/1", 3) == [200, 200, 429]
    # Flask-Limiter's API beyond the decorators: its strategy, its storage, reset.
    limiter = obs.limiter
    assert limiter.limiter.get_window_stats(_item_limit(app), "192.0.2.7", "item").remaining == 0
    limiter.reset()
    assert statuses(client, "/items/1", 1) == [200]


def _item_limit(app: Flask) -> Any:
    from limits import parse

    return parse("2/minute")


def test_flask_limiters_cli_lists_and_clears_limits_with_the_extension_on(make_app) -> None:
    """``flask limiter limits`` and ``flask limiter clear`` run with health and metrics on."""
    app = add_routes(make_app(), "1/minute")
    client = app.test_client()
    assert statuses(client, "/items/1", 2) == [200, 429]
    runner = app.test_cli_runner()
    listed = runner.invoke(limiter_cli, ["limits"])
    assert listed.exit_code == 0, listed.output
    assert ITEM_ROUTE in listed.output and "1 per 1 minute" in listed.output
    cleared = runner.invoke(limiter_cli, ["clear", "--key", "192.0.2.7", "-y"])
    assert cleared.exit_code == 0, cleared.output
    assert statuses(client, "/items/1", 1) == [200]  # the client's count is gone
    assert client.get("/health/live").status_code == 200  # the endpoints still answer
    assert client.get("/metrics").status_code == 200


def test_flask_limiters_cli_shows_the_extensions_endpoints_exempt(make_app) -> None:
    """With a default limit, ``flask limiter limits`` lists health and metrics as exempt
    (as they are served: never limited) and the app's own routes with the limit."""
    app = add_routes(make_app({"RATELIMIT_DEFAULT": "2/minute"}), "5/minute")
    listed = app.test_cli_runner().invoke(limiter_cli, ["limits"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    for path in ("/health", "/health/live", "/health/ready", "/metrics"):
        at = next(i for i, line in enumerate(lines) if line.rstrip().endswith(f": {path}"))
        assert "Exempt" in lines[at + 1], listed.output
    at = next(i for i, line in enumerate(lines) if line.rstrip().endswith(": /free"))
    assert "2 per 1 minute" in lines[at + 1], listed.output
    client = app.test_client()
    assert statuses(client, "/health/ready", 4) == [200] * 4
    assert statuses(client, "/free", 3) == [200, 200, 429]


def late_limit(limiter: Limiter, app: Flask) -> list[int]:
    """Serve ``/late`` once, then add ``1/minute`` to its view through ``limiter``."""

    @app.get("/late")
    @limiter.limit("100/minute")
    def late() -> str:
        return "late"

    client = app.test_client()
    first = statuses(client, "/late", 1)
    limiter.limit("1/minute")(late)  # the view that is registered, served already
    return first + statuses(client, "/late", 3)


def test_a_limit_added_to_a_view_after_it_served_applies_at_once(make_app) -> None:
    """obs.limiter.limit(...)(view) after the view served: 200, 429, 429, as Flask-Limiter."""
    app = make_app(init=False)
    obs = GatewayObs(app)
    raw = Flask("raw")
    raw_limiter = Limiter(get_remote_address, app=raw, storage_uri="memory://")
    assert late_limit(raw_limiter, raw) == [200, 200, 429, 429]
    assert late_limit(obs.limiter, app) == [200, 200, 429, 429]


@pytest.mark.parametrize(
    ("options", "description"),
    [({}, "1 per 1 day"), ({"error_message": "slow down"}, "slow down")],
    ids=["default", "error-message"],
)
def test_the_apps_own_429_handler_gets_flask_limiters_description(
    make_app, options: dict[str, Any], description: str
) -> None:
    """errorhandler(429) reads Flask-Limiter's e.description; the breach is still counted."""
    app = make_app()
    seen: list[RateLimitExceeded] = []

    @app.errorhandler(429)
    def too_many(error: RateLimitExceeded) -> tuple[dict[str, Any], int]:
        seen.append(error)
        return {"description": error.description}, 429

    @app.get("/daily")
    @limiter_of(app).limit("1/day", **options)
    def daily() -> str:
        return "daily"

    client = app.test_client()
    assert statuses(client, "/daily", 1) == [200]
    refused = client.get("/daily", environ_base=CLIENT)
    assert refused.status_code == 429 and refused.get_json() == {"description": description}
    assert [error.description for error in seen] == [description]
    assert 1 <= int(refused.headers["Retry-After"]) <= 86400
    assert metric_value(app, "rate_limit_exceeded_total", route="/daily") == 1


def test_without_an_own_handler_the_problem_detail_names_the_limit(make_app) -> None:
    """The problem+json detail says which limit was exceeded, or the limit's error_message."""
    app = make_app()

    @app.get("/plain")
    @limiter_of(app).limit("1/day")
    def plain() -> str:
        return "plain"

    @app.get("/worded")
    @limiter_of(app).limit("1/day", error_message="Slow down, please.")
    def worded() -> str:
        return "worded"

    client = app.test_client()
    statuses(client, "/plain", 1)
    statuses(client, "/worded", 1)
    assert problem(client.get("/plain", environ_base=CLIENT))["detail"] == (
        "Rate limit exceeded: 1 per 1 day."
    )
    assert problem(client.get("/worded", environ_base=CLIENT))["detail"] == "Slow down, please."
