"""The breakers of an app: settings from config and options, one name one breaker,
import-time decorators, the process-wide defaults, Redis storage config errors."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import (
    CircuitOpenError,
    ConfigError,
    GatewayObs,
    breaker,
)
from flask_gateway_obs import resilience as resilience_module
from flask_gateway_obs.config import Keys
from flask_gateway_obs.testing import capture_logs

from ..conftest import MakeApp
from .helpers import (
    BREAKER_LOGGER,
    Dependency,
    make_breaker,
)


def test_per_breaker_config_overrides_the_defaults(make_app: MakeApp) -> None:
    """GATEWAY_OBS_BREAKERS[name] wins over GATEWAY_OBS_BREAKER_*; keyword options over both."""
    app = make_app(
        {
            Keys.BREAKER_FAIL_MAX: 7,
            Keys.BREAKER_RESET_TIMEOUT: 9,
            Keys.BREAKERS: {"payments": {"fail_max": 2, "success_threshold": 3}},
        }
    )
    payments = make_breaker(app, "payments").settings
    other = make_breaker(app, "search").settings
    tuned = make_breaker(app, "tuned", reset_timeout=1.5).settings
    assert (payments.fail_max, payments.reset_timeout, payments.success_threshold) == (2, 9, 3)
    assert (other.fail_max, other.success_threshold) == (7, 1)
    assert tuned.reset_timeout == 1.5


def test_breaker_config_from_the_environment(make_app: MakeApp, monkeypatch: Any) -> None:
    """Values from from_prefixed_env (JSON or plain strings) are accepted."""
    monkeypatch.setenv("FLASK_GATEWAY_OBS_BREAKERS", '{"payments": {"fail_max": "4"}}')
    monkeypatch.setenv("FLASK_GATEWAY_OBS_BREAKER_RESET_TIMEOUT", "2.5")
    monkeypatch.setenv("FLASK_GATEWAY_OBS_BREAKER_TIMEOUT", "")
    app = make_app(init=False)
    app.config.from_prefixed_env()
    GatewayObs(app)
    settings = make_breaker(app).settings
    assert (settings.fail_max, settings.reset_timeout, settings.timeout) == (4, 2.5, None)


def test_bad_breaker_and_retry_config_is_one_error_naming_each_part(make_app: MakeApp) -> None:
    """Unknown option names and bad values of the per-name dicts all land in one ConfigError."""
    app = make_app(
        {
            Keys.BREAKERS: {"payments": {"fail_maxx": 3, "reset_timeout": -1}, "search": 5},
            Keys.RETRY_POLICIES: '{"rates": {"jitter": "wild"}}',
            Keys.BREAKER_STORAGE: "disk",
        },
        init=False,
    )
    with pytest.raises(ConfigError) as caught:
        GatewayObs(app)
    where = [problem[0] for problem in caught.value.problems]
    assert "GATEWAY_OBS_BREAKERS['payments'].fail_maxx" in where
    assert "GATEWAY_OBS_BREAKERS['payments'].reset_timeout" in where
    assert "GATEWAY_OBS_BREAKERS['search']" in where
    assert "GATEWAY_OBS_RETRY_POLICIES['rates'].jitter" in where
    assert Keys.BREAKER_STORAGE in where
    assert "did you mean fail_max?" in str(caught.value)


def test_bad_keyword_options_raise_config_error(app: Flask) -> None:
    """obs.circuit_breaker(name, fail_max=0) is refused with what it accepts."""
    with pytest.raises(ConfigError, match="fail_max"):
        make_breaker(app, fail_max=0)
    with pytest.raises(ConfigError, match="one of fail_max"):
        make_breaker(app, "other", fial_max=3)


def test_obs_methods_reach_the_current_apps_breakers_and_policies(make_app: MakeApp) -> None:
    """obs.circuit_breaker / obs.retry return the objects of the app in context."""
    obs = GatewayObs()
    first, second = make_app(init=False), make_app(init=False)
    obs.init_app(first)
    obs.init_app(second)
    with first.app_context():
        a = obs.circuit_breaker("payments", fail_max=2)
        assert obs.circuit_breaker("payments") is a
        assert obs.retry("payments").settings.max_attempts == 3
    with second.app_context():
        assert obs.circuit_breaker("payments") is not a
    with pytest.raises(RuntimeError, match="app context"):
        obs.circuit_breaker("payments")


def test_same_name_with_other_options_is_an_error(app: Flask) -> None:
    """One name is one breaker: asking for it with different options fails loudly."""
    first = make_breaker(app, fail_max=3)
    assert make_breaker(app, fail_max=3) is first
    assert make_breaker(app) is first
    with pytest.raises(ValueError, match="already exists"):
        make_breaker(app, fail_max=4)


@breaker("inventory", fail_max=1)
def reserve(dep: Dependency) -> Any:
    """Decorated at import time, before any app exists."""
    return dep()


def test_import_time_decorator_resolves_each_apps_own_breaker(make_app: MakeApp) -> None:
    """@breaker at module level: each app gets its own breaker, looked up at call time."""
    first, second = make_app(), make_app()
    dep = Dependency()
    dep.failing = True
    with first.app_context(), pytest.raises(CircuitOpenError):
        reserve(dep)
    dep.failing = False
    with second.app_context():
        assert reserve(dep) == "ok"
    with first.app_context(), pytest.raises(CircuitOpenError):
        reserve(dep)
    assert first.extensions["gateway_obs"].resilience.breakers.names() == ["inventory"]


def test_outside_an_app_context_process_defaults_apply() -> None:
    """Without an app the decorator works with the built-in defaults (memory, no metrics)."""
    dep = Dependency()
    assert reserve(dep) == "ok"
    dep.failing = True
    with pytest.raises(CircuitOpenError):
        reserve(dep)
    assert resilience_module.default().breakers.get("inventory").state == "open"


def test_redis_storage_without_a_url_is_a_config_error(make_app: MakeApp) -> None:
    """storage=redis needs GATEWAY_OBS_BREAKER_REDIS_URL or GATEWAY_OBS_REDIS_URL."""
    app = make_app({Keys.BREAKER_STORAGE: "redis"}, init=False)
    with pytest.raises(ConfigError, match="BREAKER_STORAGE"):
        GatewayObs(app)


def test_decode_responses_in_the_url_is_rejected_at_start(make_app: MakeApp) -> None:
    """A Redis URL asking for decoded responses fails init_app with a clear message."""
    url = "redis://user:secret@127.0.0.1:6379/15?decode_responses=true"
    app = make_app({Keys.BREAKER_STORAGE: "redis", Keys.REDIS_URL: url}, init=False)
    with pytest.raises(ConfigError, match="decode_responses") as caught:
        GatewayObs(app)
    assert "secret" not in str(caught.value)


def test_decode_responses_client_is_rejected(app: Flask) -> None:
    """An explicit client with decode_responses=True is refused with what to do instead."""
    import redis

    client = redis.Redis(decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=True"):
        resilience_module.set_breaker_redis_client(app, client)
    client.close()


def test_redis_storage_in_code_without_any_url_names_the_keys_to_set(app: Flask) -> None:
    """storage="redis" given in code with no Redis URL at all: a ValueError saying what to set."""
    with pytest.raises(ValueError, match="GATEWAY_OBS_REDIS_URL"):
        make_breaker(app, "x", storage="redis")


def test_redis_storage_without_service_name_or_namespace_warns_at_init(
    make_app: MakeApp,
) -> None:
    """The default namespace comes from the import name: a warning says how to set it."""
    config = {Keys.BREAKER_STORAGE: "redis", Keys.REDIS_URL: "redis://127.0.0.1:6379/15"}
    with capture_logs(BREAKER_LOGGER) as logs:
        make_app(config)
    warnings = logs.find(level="warning", namespace="gateway_obs:testapp")
    assert len(warnings) == 1
    assert "GATEWAY_OBS_SERVICE_NAME" in warnings[0]["message"]
    assert "GATEWAY_OBS_BREAKER_REDIS_NAMESPACE" in warnings[0]["message"]
    with capture_logs(BREAKER_LOGGER) as quiet:
        make_app({**config, Keys.SERVICE_NAME: "orders"})
        make_app({**config, Keys.BREAKER_REDIS_NAMESPACE: "orders"})
        make_app({Keys.REDIS_URL: config[Keys.REDIS_URL]})
    assert quiet.find(level="warning") == []
