"""Configuration: defaults, validation with one error naming every bad key, precedence."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from flask_gateway_obs import ConfigError, GatewayObs
from flask_gateway_obs.config import Keys, Settings, all_keys, load_settings


def test_defaults_load_without_any_key() -> None:
    """An empty config gives the documented defaults."""
    settings = load_settings({}, {})
    assert settings == Settings()
    assert settings.log_level == logging.INFO
    assert settings.request_id_header == "X-Request-ID"


def test_every_key_has_a_constant_and_a_description() -> None:
    """``Keys`` names every setting and every setting says what it accepts."""
    constants = {getattr(Keys, k) for k in dir(Keys) if k.isupper()}
    assert constants == set(all_keys())
    for key, field in all_keys().items():
        assert key.startswith("GATEWAY_OBS_")
        assert field.metadata["accepts"] and field.metadata["doc"]


def test_bad_values_raise_one_error_naming_every_bad_key(make_app) -> None:
    """Several bad keys -> one ConfigError naming each key, the value and what it accepts."""
    config = {
        Keys.LOG_LEVEL: "loud",
        Keys.LOG_FILE_BACKUP_COUNT: -1,
        Keys.REDIS_URL: "http://not-redis",
        Keys.LOG_ACCESS: "maybe",
    }
    app = make_app(config, init=False)
    with pytest.raises(ConfigError) as caught:
        GatewayObs(app)
    message = str(caught.value)
    for key in config:
        assert key in message
    assert "'loud'" in message and "debug, info" in message
    assert len(caught.value.problems) == 4
    assert "gateway_obs" not in app.extensions


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (Keys.LOG_FORMAT, "xml"),
        (Keys.LOG_LEVEL, 5),
        (Keys.LOG_USER_AGENT_MAX, 1.5),
        (Keys.LOG_FILE_MAX_BYTES, 0),
        (Keys.LOG_ACCESS, None),
        (Keys.DATABASE_URL, "postgresql://host:notaport/db"),
        (Keys.DATABASE_URL, "mysql://h/db"),
        (Keys.REQUEST_ID_HEADER, "X Request\nID"),
        (Keys.ERROR_TYPE_BASE, "ftp://x"),
        (Keys.LOG_REDACT_KEYS, 42),
    ],
)
def test_each_kind_of_bad_value_is_rejected(key: str, value: object) -> None:
    """Wrong types, unknown choices, bad numbers and malformed URLs are all refused."""
    with pytest.raises(ConfigError, match=key):
        load_settings({key: value}, {})


def test_unknown_key_with_the_prefix_is_reported_with_a_suggestion() -> None:
    """A typo in a key is an error that suggests the right key."""
    with pytest.raises(ConfigError, match="did you mean GATEWAY_OBS_LOG_LEVEL"):
        load_settings({"GATEWAY_OBS_LOG_LEVLE": "debug"}, {})


def test_string_values_from_the_environment_are_accepted(make_app, monkeypatch) -> None:
    """Values from from_prefixed_env (strings and JSON) are parsed."""
    variables = {
        "FLASK_GATEWAY_OBS_LOG_LEVEL": "fatal",
        "FLASK_GATEWAY_OBS_LOG_ACCESS": "false",
        "FLASK_GATEWAY_OBS_LOG_USER_AGENT_MAX": "64",
        "FLASK_GATEWAY_OBS_LOG_REDACT_KEYS": "pin, ssn",
        "FLASK_GATEWAY_OBS_LOG_ACCESS_EXCLUDE_PATHS": '["/ping", "/favicon.ico"]',
    }
    settings = _settings_from_environment(make_app, monkeypatch, variables)
    assert settings.log_level == logging.CRITICAL
    assert settings.log_access is False
    assert settings.log_user_agent_max == 64
    assert settings.log_redact_keys == ("pin", "ssn")
    assert settings.log_access_exclude_paths == ("/ping", "/favicon.ico")


def test_app_config_wins_over_constructor_overrides(make_app) -> None:
    """A key in app.config beats the same setting given to the constructor."""
    app = make_app({Keys.LOG_LEVEL: "error"}, log_level="debug", service_name="from-ctor")
    settings = app.extensions["gateway_obs"].settings
    assert settings.log_level == logging.ERROR
    assert settings.service_name == "from-ctor"


def test_overrides_accept_keys_and_reject_unknown_names(make_app) -> None:
    """Overrides by full key work; an unknown override name is a TypeError."""
    app = make_app(**{Keys.SERVICE_NAME: "svc"})
    assert app.extensions["gateway_obs"].service == "svc"
    with pytest.raises(TypeError, match="no_such_setting"):
        make_app(no_such_setting=1)


def test_settings_are_immutable() -> None:
    """Settings cannot be changed after init_app."""
    settings = load_settings({}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.log_level = 10  # type: ignore[misc]


def test_config_errors_never_echo_secrets() -> None:
    """Tokens and DSNs are hidden and URL passwords masked in the error message."""
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                Keys.REDIS_URL: "http://:hunter2@redis:6379",
                "GATEWAY_OBS_METRICS_TOKEN": 12,
                "GATEWAY_OBS_SENTRY_DSNX": "https://secretkey@o1.ingest/1",
            },
            {},
        )
    message = str(caught.value)
    assert "hunter2" not in message and "secretkey" not in message
    assert "http://:***@redis:6379" in message


def test_numbers_from_the_environment_are_kept_as_text(make_app, monkeypatch) -> None:
    """A version or name that JSON-decodes as a number is taken back as text."""
    monkeypatch.setenv("FLASK_GATEWAY_OBS_SERVICE_VERSION", "2024")
    monkeypatch.setenv("FLASK_GATEWAY_OBS_SERVICE_NAME", "7")
    app = make_app(init=False)
    app.config.from_prefixed_env()
    GatewayObs(app)
    settings = app.extensions["gateway_obs"].settings
    assert (settings.service_version, settings.service_name) == ("2024", "7")


def test_log_file_in_a_missing_directory_is_refused(tmp_path) -> None:
    """A log file that could never be written fails at init_app, not silently later."""
    with pytest.raises(ConfigError, match="LOG_FILE"):
        load_settings({Keys.LOG_FILE: str(tmp_path / "nope" / "gw.log")}, {})
    with pytest.raises(ConfigError, match="LOG_FILE"):
        load_settings({Keys.LOG_FILE: str(tmp_path)}, {})
    assert load_settings({Keys.LOG_FILE: str(tmp_path / "gw.log")}, {}).log_file


def test_request_id_header_must_be_an_ascii_token() -> None:
    """Non-ASCII header names are refused."""
    with pytest.raises(ConfigError, match="REQUEST_ID_HEADER"):
        load_settings({Keys.REQUEST_ID_HEADER: "X-Requ\u00e9st"}, {})


def test_environment_variables_app_config_never_received_are_warned_about(
    make_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GATEWAY_OBS_* variables without the FLASK_ prefix (and FLASK_GATEWAY_OBS_* ones that
    were never loaded) are named in one warning at init_app; their values never appear."""
    from flask_gateway_obs.testing import capture_logs

    monkeypatch.setenv("GATEWAY_OBS_REDIS_URL", "redis://:hunter2@cache:6379/0")
    monkeypatch.setenv("GATEWAY_OBS_LOG_LEVEL", "debug")
    monkeypatch.setenv("FLASK_GATEWAY_OBS_HEALTH_TIMEOUT", "5")
    with capture_logs("flask_gateway_obs") as logs:
        make_app()
    warnings = [r for r in logs.records if r["level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["variables"] == [
        "FLASK_GATEWAY_OBS_HEALTH_TIMEOUT",
        "GATEWAY_OBS_LOG_LEVEL",
        "GATEWAY_OBS_REDIS_URL",
    ]
    assert "FLASK_" in warnings[0]["message"] and "from_prefixed_env" in warnings[0]["message"]
    assert "hunter2" not in "".join(logs.lines) and "debug" not in warnings[0]["message"]


def test_environment_variables_that_reached_app_config_are_not_warned_about(
    make_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variable loaded by from_prefixed_env(), or a key set in code as well, is no stray."""
    from flask import Flask

    from flask_gateway_obs.testing import capture_logs

    monkeypatch.setenv("FLASK_GATEWAY_OBS_HEALTH_TIMEOUT", "5")
    monkeypatch.setenv("GATEWAY_OBS_SERVICE_NAME", "orders")
    app = Flask("loaded")
    app.config.from_prefixed_env()
    app.config["GATEWAY_OBS_SERVICE_NAME"] = "orders"
    with capture_logs("flask_gateway_obs") as logs:
        GatewayObs(app)
    assert [r for r in logs.records if r["level"] == "warning"] == []


SECRET = "s3cr3t-abcdef"


@pytest.mark.parametrize(
    ("mistyped", "meant"),
    [
        ("GATEWAY_OBS_METRICS_TOKN", Keys.METRICS_TOKEN),
        ("GATEWAY_OBS_HEALTH_TOKNE", Keys.HEALTH_TOKEN),
        ("GATEWAY_OBS_SENTRY_DNS", Keys.SENTRY_DSN),
    ],
)
def test_a_mistyped_key_never_shows_its_value(mistyped: str, meant: str) -> None:
    """A key that names no setting is reported with a suggestion, its value (maybe the
    secret of the key it was meant to be) never shown."""
    with pytest.raises(ConfigError) as caught:
        load_settings({mistyped: SECRET}, {})
    message = str(caught.value)
    assert SECRET not in message and all(SECRET not in repr(p) for p in caught.value.problems)
    assert f"{mistyped}: got a value (not shown)" in message
    assert f"did you mean {meant}?" in message


def test_init_app_never_shows_the_value_of_a_mistyped_key(make_app) -> None:
    """The same through GatewayObs(app)."""
    app = make_app({"GATEWAY_OBS_METRICS_TOKN": SECRET}, init=False)
    with pytest.raises(ConfigError, match="did you mean GATEWAY_OBS_METRICS_TOKEN") as caught:
        GatewayObs(app)
    assert SECRET not in str(caught.value)


def test_a_mistyped_option_never_shows_its_value() -> None:
    """An unknown option of GATEWAY_OBS_BREAKERS or GATEWAY_OBS_SENTRY_OPTIONS is named,
    with a suggestion where there is one, and its value never shown."""
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                Keys.BREAKERS: {"payments": {"api_pasword": SECRET}},
                Keys.SENTRY_OPTIONS: {"max_breadcrumb": SECRET, "http_proxy_pasword": SECRET},
            },
            {},
        )
    message = str(caught.value)
    assert SECRET not in message
    assert "GATEWAY_OBS_BREAKERS['payments'].api_pasword: got a value (not shown)" in message
    assert "'max_breadcrumb' is no sentry_sdk.init option, did you mean max_breadcrumbs?" in (
        message
    )


def _settings_from_environment(make_app, monkeypatch, variables, config=None):
    """The settings of an app whose config came from ``variables`` through
    ``from_prefixed_env()``, then ``config`` on top."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    app = make_app(init=False)
    app.config.from_prefixed_env()
    app.config.update(config or {})
    GatewayObs(app)
    return app.extensions["gateway_obs"].settings


def test_text_keys_from_the_environment_keep_their_text(make_app, monkeypatch) -> None:
    """Text that from_prefixed_env() JSON-decodes into a number or a boolean is taken as
    written; null is no value, as Flask documents it (the key unset)."""
    variables = {
        "FLASK_GATEWAY_OBS_SERVICE_VERSION": "1.10",
        "FLASK_GATEWAY_OBS_METRICS_TOKEN": "1e5",
        "FLASK_GATEWAY_OBS_HEALTH_TOKEN": "null",
        "FLASK_GATEWAY_OBS_SENTRY_RELEASE": "true",
    }
    settings = _settings_from_environment(make_app, monkeypatch, variables)
    assert settings.service_version == "1.10"
    assert settings.metrics_token == "1e5"
    assert settings.health_token is None
    assert settings.sentry_release == "true"


def test_a_text_key_set_in_code_is_not_taken_from_the_environment(make_app, monkeypatch) -> None:
    """A value set in code that is not what the environment's text decodes to stays."""
    variables = {
        "FLASK_GATEWAY_OBS_SERVICE_VERSION": "1.10",
        "FLASK_GATEWAY_OBS_HEALTH_TOKEN": "null",
    }
    config = {Keys.SERVICE_VERSION: 2.5, Keys.HEALTH_TOKEN: "from-code"}
    settings = _settings_from_environment(make_app, monkeypatch, variables, config)
    assert (settings.service_version, settings.health_token) == ("2.5", "from-code")
