"""Setting checks up: registration before and after init_app, explicit clients, switches
of the built-in checks, settings."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import CheckResult, GatewayObs
from flask_gateway_obs.config import Keys
from flask_gateway_obs.health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
)

from ..conftest import MakeApp, free_port
from .conftest import (
    QUIET,
    build,
    runner_of,
)

# --- registration ------------------------------------------------------------------------------


def test_checks_registered_before_init_app_apply_to_the_app(make_app: MakeApp) -> None:
    """Decorators on an object without an app are applied by init_app."""
    obs = GatewayObs()

    @obs.health_check("early", critical=False, groups=("ready", "live"))
    def early() -> CheckResult:
        return CheckResult.degraded("warming up")

    app = make_app(QUIET, init=False)
    obs.init_app(app)
    live = app.test_client().get("/health/live").get_json()
    assert live == {**live, "status": DEGRADED}
    assert set(live["checks"]) == {"early"}
    with app.app_context():
        assert obs.check_dependencies().checks["early"].reason == "warming up"


def test_check_registered_in_an_app_context_applies_to_that_app_only(make_app: MakeApp) -> None:
    """After init_app, inside an app context, a decorator targets the current app."""
    obs = GatewayObs()
    first, second = make_app(QUIET, init=False), make_app(QUIET, init=False)
    obs.init_app(first)
    obs.init_app(second)
    with second.app_context():
        obs.health_check("second_only")(lambda: None)
    assert "second_only" in runner_of(second).checks
    assert "second_only" not in runner_of(first).checks
    obs.health_check("everywhere")(lambda: None)
    assert "everywhere" in runner_of(first).checks
    assert "everywhere" in runner_of(second).checks


def test_a_second_check_with_the_same_name_is_rejected(make_app: MakeApp) -> None:
    """Two different functions cannot share a name; the message says what to do."""
    _app, obs = build(make_app, QUIET)
    obs.health_check("dup")(lambda: None)

    def other() -> None:
        return None

    with pytest.raises(ValueError, match=r"already registered.*another name"):
        obs.health_check("dup")(other)


def test_an_app_factory_may_register_the_same_check_again(make_app: MakeApp) -> None:
    """A factory that runs twice defines the same function twice: that is not a clash."""
    obs = GatewayObs()

    def create_app() -> Flask:
        app = make_app(QUIET, init=False)
        obs.init_app(app)

        @obs.health_check("factory_check")
        def factory_check() -> None:
            return None

        return app

    first, second = create_app(), create_app()
    assert "factory_check" in runner_of(first).checks
    assert "factory_check" in runner_of(second).checks


def test_set_redis_client_replaces_the_url(make_app: MakeApp, redis_url: str) -> None:
    """A client given to the object is checked instead of the URL; None goes back to the URL."""
    import redis

    _app, obs = build(make_app, {**QUIET, Keys.REDIS_URL: f"redis://127.0.0.1:{free_port()}/0"})
    client = redis.Redis.from_url(redis_url, socket_timeout=1)
    try:
        obs.set_redis_client(client)
        assert obs.check_health().checks["redis"].status == HEALTHY
        obs.set_redis_client(None)
        assert obs.check_health().checks["redis"].status == UNHEALTHY
    finally:
        client.close()


def test_set_redis_client_before_init_app(make_app: MakeApp, redis_url: str) -> None:
    """Without any URL, a client given before init_app adds the Redis check."""
    import redis

    obs = GatewayObs()
    client = redis.Redis.from_url(redis_url, socket_timeout=1)
    try:
        obs.set_redis_client(client)
        app = make_app(QUIET, init=False)
        obs.init_app(app)
        assert obs.check_dependencies().checks["redis"].status == HEALTHY
    finally:
        client.close()


def test_set_postgres_pool_takes_a_pool_or_a_dsn(make_app: MakeApp, database_url: str) -> None:
    """A psycopg2 pool or a DSN string both give a postgres check."""
    from psycopg2.pool import ThreadedConnectionPool

    app, obs = build(make_app, {**QUIET, Keys.HEALTH_SHOW_DETAILS: "always"})
    assert "postgres" not in runner_of(app).checks
    obs.set_postgres_pool(database_url)
    assert obs.check_health(fresh=True).checks["postgres"].status == HEALTHY
    pool = ThreadedConnectionPool(1, 1, database_url, connect_timeout=2)
    try:
        obs.set_postgres_pool(pool)
        outcome = obs.check_health(fresh=True).checks["postgres"]
        assert outcome.status == HEALTHY
        assert outcome.details == {"pool": "ThreadedConnectionPool"}
    finally:
        pool.closeall()
    with pytest.raises(TypeError, match="getconn"):
        obs.set_postgres_pool(42)
    with pytest.raises(ValueError, match="empty"):
        obs.set_postgres_pool("  ")


def test_builtin_checks_can_be_switched_off(make_app: MakeApp, redis_url: str) -> None:
    """GATEWAY_OBS_HEALTH_CHECK_* turn each built-in check off."""
    app = make_app(
        {
            Keys.REDIS_URL: redis_url,
            Keys.HEALTH_CHECK_REDIS: False,
            Keys.HEALTH_CHECK_MEMORY: "false",
            Keys.HEALTH_CHECK_DISK: "0",
        }
    )
    assert runner_of(app).checks == {}
    assert app.test_client().get("/health").get_json()["checks"] == {}


def test_disk_check_uses_the_configured_path_and_thresholds(
    make_app: MakeApp, tmp_path: Any
) -> None:
    """The disk check measures GATEWAY_OBS_HEALTH_DISK_PATH; a missing path is unhealthy."""
    app = make_app(
        {
            Keys.HEALTH_CHECK_MEMORY: False,
            Keys.HEALTH_DISK_PATH: str(tmp_path / "missing"),
            Keys.HEALTH_SHOW_DETAILS: "always",
        }
    )
    body = app.test_client().get("/health").get_json()
    assert body["checks"]["disk"]["status"] == UNHEALTHY
    assert body["checks"]["disk"]["reason"] == "FileNotFoundError"
    assert body["status"] == UNHEALTHY


def test_memory_check_is_on_health_but_not_on_ready_or_live(make_app: MakeApp) -> None:
    """Memory and disk are reported on /health only; they never gate traffic or liveness."""
    app = make_app()
    client = app.test_client()
    assert set(client.get("/health").get_json()["checks"]) == {"memory", "disk"}
    assert client.get("/health/ready").get_json()["checks"] == {}
    assert client.get("/health/live").get_json()["checks"] == {}


def test_config_from_environment_strings(make_app: MakeApp, release: threading.Event) -> None:
    """Strings as from_prefixed_env hands them over are accepted and take effect: the
    timeout, a TTL of 0, two workers and a switched-off disk check."""
    app, obs = build(
        make_app,
        {
            Keys.HEALTH_CHECK_MEMORY: False,
            Keys.HEALTH_TIMEOUT: "0.75",
            Keys.HEALTH_CACHE_TTL: "0",
            Keys.HEALTH_MAX_WORKERS: "2",
            Keys.HEALTH_HTTP_STATUS_DEGRADED: "299",
            Keys.HEALTH_CHECK_DISK: "no",
        },
    )
    assert runner_of(app).checks == {}
    lock = threading.Lock()
    running = {"now": 0, "most": 0}
    pairs = threading.Barrier(2, timeout=5)  # passes only with two checks running at once

    def paired() -> None:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        try:
            pairs.wait()
        finally:
            with lock:
                running["now"] -= 1

    for index in range(4):
        obs.health_check(f"paired{index}", timeout=10)(paired)
    assert obs.check_health().status == HEALTHY
    assert running["most"] == 2, "two workers run two checks at once, never more"
    assert obs.check_health().status == HEALTHY, "TTL 0: every probe runs the checks"
    obs.health_check("optional", critical=False)(lambda: CheckResult.degraded("slow"))
    assert app.test_client().get("/health/ready").status_code == 299
    obs.health_check("hung")(lambda: release.wait(30))
    outcome = obs.check_health().checks["hung"]
    assert (outcome.reason, outcome.response_time_ms) == ("timeout", 750.0)


def test_example_gateway_checks_its_dependencies_when_their_urls_are_set(
    redis_url: str, database_url: str
) -> None:
    """The example checks memory, disk and its store always; Redis and PostgreSQL by URL."""
    from example_app import create_app

    bare = create_app({"TESTING": True, Keys.REDIS_URL: None, Keys.DATABASE_URL: None})
    assert set(runner_of(bare).checks) == {"memory", "disk", "items_store"}
    app = create_app({"TESTING": True, Keys.REDIS_URL: redis_url, Keys.DATABASE_URL: database_url})
    body = app.test_client().get("/health").get_json()
    assert body["status"] == HEALTHY
    assert set(body["checks"]) == {"redis", "postgres", "memory", "disk", "items_store"}


IMPORTS = """
import sys
from flask import Flask
from flask_gateway_obs import GatewayObs

app = Flask("imports")
app.config.update({config!r})
GatewayObs(app)
print(",".join(m for m in ("redis", "psycopg2") if m in sys.modules))
"""


@pytest.mark.parametrize(
    ("config", "loaded"),
    [
        ({}, ""),
        ({Keys.REDIS_URL: "redis://127.0.0.1:6379/0"}, "redis"),
        ({Keys.DATABASE_URL: "postgresql://u@127.0.0.1/db"}, "psycopg2"),
        (
            {Keys.DATABASE_URL: "postgresql://u@127.0.0.1/db", Keys.HEALTH_CHECK_POSTGRES: False},
            "",
        ),
    ],
)
def test_a_client_library_is_imported_only_when_its_check_is_configured(
    config: dict[str, Any], loaded: str
) -> None:
    """redis and psycopg2 stay out of a process whose app does not check them."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS.format(config=config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == loaded
