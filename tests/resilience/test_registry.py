"""Each app's resilience objects: made on first use (a default app loads neither pybreaker
nor tenacity), the process-wide defaults and their reset, the config rules between keys."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flask_gateway_obs import CircuitOpenError, ConfigError, GatewayObs, breaker
from flask_gateway_obs import resilience as resilience_module
from flask_gateway_obs.config import Keys
from flask_gateway_obs.testing import reset

from ..conftest import MakeApp
from .helpers import Dependency, fail

_PROBE = """
import json, sys
from flask import Flask
from flask_gateway_obs import GatewayObs
app = Flask("probe")
obs = GatewayObs(app, GATEWAY_OBS_LOG_CONFIGURE=False)
app.get("/")(lambda: "ok")
app.test_client().get("/")
loaded = lambda: {m: m in sys.modules for m in (
    "flask_gateway_obs.resilience", "pybreaker", "tenacity")}
before = loaded()
with app.app_context():
    obs.circuit_breaker("payments").call(lambda: None)
after_breaker = loaded()
with app.app_context():
    obs.retry("rates").call(lambda: None)
print(json.dumps([before, after_breaker, loaded()]))
"""


def test_a_default_app_loads_breakers_and_retries_only_when_first_used() -> None:
    """init_app and a request import neither the concern nor pybreaker or tenacity; the first
    breaker brings pybreaker, the first retry policy tenacity."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    before, after_breaker, after_retry = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == {"flask_gateway_obs.resilience": False, "pybreaker": False, "tenacity": False}
    assert after_breaker["pybreaker"] is True
    assert after_breaker["tenacity"] is False
    assert after_retry["tenacity"] is True


_DECORATED_PROBE = """
import json, sys
from flask import Flask
from flask_gateway_obs import GatewayObs, breaker, bulkhead, retry

@breaker("payments")
def charge():
    return "charged"

@retry
def fetch():
    return "fetched"

@retry(max_attempts=3)
def rates():
    return "rates"

@bulkhead("payments")
def pay():
    return "paid"

app = Flask("probe")
obs = GatewayObs(app, GATEWAY_OBS_LOG_CONFIGURE=False)

@obs.resilient("quotes", breaker=True, retry=True)
def quote():
    return "quoted"

app.get("/")(lambda: "ok")
app.test_client().get("/")
loaded = lambda: {m: m in sys.modules for m in ("pybreaker", "tenacity")}
before = loaded()
with app.app_context():
    results = [charge(), fetch(), rates(), pay(), quote()]
print(json.dumps([before, loaded(), results]))
"""


def test_functions_decorated_at_import_load_neither_library_until_called() -> None:
    """@breaker, @retry, @retry(...), @bulkhead and @obs.resilient applied at import time
    (and a request served) import neither pybreaker nor tenacity; the first calls do."""
    done = subprocess.run(
        [sys.executable, "-c", _DECORATED_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    before, after, results = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == {"pybreaker": False, "tenacity": False}
    assert after == {"pybreaker": True, "tenacity": True}
    assert results == ["charged", "fetched", "rates", "paid", "quoted"]


@breaker("outside", fail_max=1)
def outside(dep: Dependency) -> object:
    """Decorated at import time; called without any app."""
    return dep()


def test_reset_forgets_the_process_wide_breakers() -> None:
    """flask_gateway_obs.testing.reset() gives code outside an app fresh breakers."""
    dep = Dependency(ConnectionError("down"))
    with pytest.raises(CircuitOpenError):
        outside(dep)
    with pytest.raises(CircuitOpenError):
        outside(dep)
    assert dep.calls == 1
    reset()
    dep.failing = False
    assert outside(dep) == "ok"
    assert resilience_module.default().breakers.get("outside").state == "closed"


def test_each_app_gets_its_own_objects_on_first_use(make_app: MakeApp) -> None:
    """Two apps: their breakers of one name are distinct, and outlive nothing of each other."""
    first, second = make_app(), make_app()
    a = resilience_module.of_state(first.extensions["gateway_obs"]).breakers.get("p", fail_max=1)
    b = resilience_module.of_state(second.extensions["gateway_obs"]).breakers.get("p", fail_max=1)
    fail(a, Dependency(), 1)
    assert (a.state, b.state) == ("open", "closed")
    assert resilience_module.of_state(first.extensions["gateway_obs"]) is (
        resilience_module.of_state(first.extensions["gateway_obs"])
    )


def test_redis_storage_rules_are_part_of_the_one_config_error(make_app: MakeApp) -> None:
    """Redis breaker storage without a URL and a bad log level: one ConfigError names both."""
    app = make_app(
        {Keys.LOG_LEVEL: "LOUD", Keys.BREAKERS: {"payments": {"storage": "redis"}}}, init=False
    )
    with pytest.raises(ConfigError) as caught:
        GatewayObs(app)
    assert {problem[0] for problem in caught.value.problems} == {Keys.LOG_LEVEL, Keys.BREAKERS}
    assert "GATEWAY_OBS_BREAKER_REDIS_URL" in str(caught.value)
