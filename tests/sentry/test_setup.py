"""Setting Sentry up: DSN, environment, release, options, bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from flask_gateway_obs import (
    capture_exception,
    capture_message,
    sentry,
    set_user,
)
from flask_gateway_obs.config import ConfigError, Keys
from flask_gateway_obs.sentry import EVENT_ID_MEMBER, EXTENSION_KEY

from ..conftest import MakeApp
from ..sentry_sink import SentrySink
from .apps import report, sentry_app

# --- set-up, environment, process ---------------------------------------------------


def test_without_a_dsn_nothing_is_set_up_and_helpers_are_noops(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """No DSN: no listener, no observer, no client; helpers return None."""
    import sentry_sdk

    app = sentry_app(make_app, None)
    assert EXTENSION_KEY not in app.extensions
    observers = app.extensions["gateway_obs"].observers
    assert not [o for o in observers if type(o).__module__.startswith(sentry.__name__)]
    response = report(app, "/items/0")
    assert EVENT_ID_MEMBER not in response.get_json()
    with app.test_request_context("/"):
        set_user({"id": 1})
        assert capture_message("nobody listens") is None
        assert capture_exception(RuntimeError("nobody")) is None
    assert not sentry_sdk.get_client().is_active()


def test_sentry_dsn_environment_variable_is_used_as_fallback(
    make_app: MakeApp, sink: SentrySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SENTRY_DSN in the environment turns reporting on when the config key is unset."""
    monkeypatch.setenv("SENTRY_DSN", sink.dsn)
    app = sentry_app(make_app, None)
    report(app, "/items/0")
    assert len(sink.events()) == 1


@pytest.mark.parametrize("off", ["off", "", " OFF ", False])
def test_dsn_off_keeps_sentry_off_despite_the_environment(
    make_app: MakeApp, sink: SentrySink, monkeypatch: pytest.MonkeyPatch, off: Any
) -> None:
    """GATEWAY_OBS_SENTRY_DSN = "off" (or "" or False) wins over SENTRY_DSN: nothing set up."""
    import sentry_sdk

    monkeypatch.setenv("SENTRY_DSN", sink.dsn)
    app = sentry_app(make_app, off)
    assert EXTENSION_KEY not in app.extensions
    assert app.extensions["gateway_obs"].settings.sentry_dsn == "off"
    response = report(app, "/items/0")
    assert EVENT_ID_MEMBER not in response.get_json()
    assert not sentry_sdk.get_client().is_active()
    assert sink.raw == []


def test_environment_and_release_fall_back_as_documented(
    make_app: MakeApp, sink: SentrySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Testing app -> development, release = service version; env vars win; keys win."""
    app = sentry_app(make_app, sink.dsn, SERVICE_VERSION="1.4.2")
    report(app, "/items/0")
    sentry.shutdown(timeout=1)
    monkeypatch.setenv("SENTRY_ENVIRONMENT", "staging")
    monkeypatch.setenv("SENTRY_RELEASE", "from-env")
    report(sentry_app(make_app, sink.dsn, SERVICE_VERSION="1.4.2"), "/items/0")
    sentry.shutdown(timeout=1)
    report(
        sentry_app(make_app, sink.dsn, SENTRY_ENVIRONMENT="eu-prod", SENTRY_RELEASE="gw@9"),
        "/items/0",
    )
    first, second, third = sink.events()
    assert (first["environment"], first["release"]) == ("development", "1.4.2")
    assert (second["environment"], second["release"]) == ("staging", "from-env")
    assert (third["environment"], third["release"]) == ("eu-prod", "gw@9")


def test_production_app_defaults_to_production_environment(
    make_app: MakeApp, sink: SentrySink
) -> None:
    """Neither debug nor testing: the environment is ``production``."""
    app = make_app(config={Keys.SENTRY_DSN: sink.dsn, "TESTING": False})
    with app.app_context():
        capture_message("hello")
    sentry.flush(timeout=5)
    assert sink.events()[0]["environment"] == "production"


def test_invalid_dsn_fails_at_init_app(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DSN without a project id (config key or env var) is a ConfigError at init_app."""
    with pytest.raises(ConfigError, match="GATEWAY_OBS_SENTRY_DSN"):
        make_app(config={Keys.SENTRY_DSN: "https://key@sentry.example.com/"})
    monkeypatch.setenv("SENTRY_DSN", "not a dsn")
    with pytest.raises(ConfigError, match="SENTRY_DSN"):
        make_app()


def test_invalid_sentry_settings_are_config_errors(make_app: MakeApp) -> None:
    """Bad rates, hooks and reserved init options are reported together."""
    with pytest.raises(ConfigError) as caught:
        make_app(
            config={
                Keys.SENTRY_SAMPLE_RATE: 1.5,
                Keys.SENTRY_BEFORE_SEND: "no.such.module:hook",
                Keys.SENTRY_OPTIONS: {"before_send": print},
                Keys.SENTRY_MAX_REQUEST_BODY: "huge",
            }
        )
    keys = {problem[0] for problem in caught.value.problems}
    assert keys == {
        Keys.SENTRY_SAMPLE_RATE,
        Keys.SENTRY_BEFORE_SEND,
        Keys.SENTRY_OPTIONS,
        Keys.SENTRY_MAX_REQUEST_BODY,
    }


def test_extra_init_options_pass_through(make_app: MakeApp, sink: SentrySink) -> None:
    """GATEWAY_OBS_SENTRY_OPTIONS reaches sentry_sdk.init (here: server_name)."""
    app = sentry_app(make_app, sink.dsn, SENTRY_OPTIONS='{"server_name": "gw-eu-1"}')
    report(app, "/items/0")
    assert sink.events()[0]["server_name"] == "gw-eu-1"


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"integrations": 5}, "integrations"),
        ({"integrations": "LoggingIntegration"}, "integrations"),
        ({"integrations": [5]}, "integrations"),
        ({"max_breadcrumbs": "many"}, "max_breadcrumbs"),
        ({"in_app_include": "app"}, "in_app_include"),
        ({"attach_stacktrace": "yes"}, "attach_stacktrace"),
    ],
)
def test_sentry_options_of_the_wrong_type_are_config_errors(
    make_app: MakeApp, options: dict[str, Any], name: str
) -> None:
    """A GATEWAY_OBS_SENTRY_OPTIONS value of the wrong type is one ConfigError that names
    the option, together with any other bad key, never a TypeError from sentry-sdk."""
    with pytest.raises(ConfigError) as caught:
        make_app(
            config={
                Keys.SENTRY_DSN: "https://key@127.0.0.1:9/1",
                Keys.SENTRY_OPTIONS: options,
                Keys.SENTRY_SAMPLE_RATE: 2,
            }
        )
    keys = sorted(problem[0] for problem in caught.value.problems)
    assert keys == sorted([f"{Keys.SENTRY_OPTIONS}[{name!r}]", Keys.SENTRY_SAMPLE_RATE])


def test_sentry_options_that_sentry_sdk_refuses_are_config_errors(make_app: MakeApp) -> None:
    """An option whose type cannot be known in advance and that sentry-sdk refuses when
    it builds the client (a number as a proxy URL) is a ConfigError too."""
    with pytest.raises(ConfigError, match="GATEWAY_OBS_SENTRY_OPTIONS"):
        make_app(
            config={
                Keys.SENTRY_DSN: "https://key@127.0.0.1:9/1",
                Keys.SENTRY_OPTIONS: {"http_proxy": 5},
            }
        )


def test_a_bad_dsn_is_reported_with_the_other_bad_keys(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DSN sentry-sdk cannot use (the key, or SENTRY_DSN when the key is unset) is named in
    the same ConfigError as the other bad keys, its value never echoed."""
    with pytest.raises(ConfigError) as caught:
        make_app(
            config={
                Keys.SENTRY_DSN: "https://secretkey@sentry.example.com/",
                Keys.LOG_LEVEL: "LOUD",
            }
        )
    assert {p[0] for p in caught.value.problems} == {Keys.SENTRY_DSN, Keys.LOG_LEVEL}
    assert "secretkey" not in str(caught.value)
    monkeypatch.setenv("SENTRY_DSN", "https://secretkey@sentry.example.com/")
    with pytest.raises(ConfigError) as caught:
        make_app(config={Keys.LOG_LEVEL: "LOUD"})
    assert {p[0] for p in caught.value.problems} == {"SENTRY_DSN (environment)", Keys.LOG_LEVEL}
    assert "secretkey" not in str(caught.value)


_OFF_SCRIPT = """
import sys
from flask import Flask
from flask_gateway_obs import GatewayObs, capture_exception, capture_message, set_user

app = Flask("quiet")
GatewayObs(app)
with app.test_request_context("/"):
    set_user({"id": 1})
    assert capture_message("nobody listens") is None
    assert capture_exception(RuntimeError("nobody")) is None
set_user("job")
loaded = sorted(m for m in sys.modules if m.startswith(("sentry_sdk", "flask_gateway_obs.sentry")))
print(",".join(loaded))
"""


def test_helpers_with_sentry_off_import_nothing_of_sentry() -> None:
    """With Sentry off the helpers are no-ops that import neither sentry_sdk nor the
    adapter beyond its registry (a fresh process, as a user's app is)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")}
    done = subprocess.run(
        [sys.executable, "-c", _OFF_SCRIPT],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
        text=True,
    )
    loaded = done.stdout.strip().splitlines()[-1].split(",")
    assert loaded == [
        "flask_gateway_obs.sentry",
        "flask_gateway_obs.sentry.helpers",
        "flask_gateway_obs.sentry.registry",
    ]
