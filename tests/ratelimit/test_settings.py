"""The rate-limit keys: one ConfigError naming every bad value, bounds, rules between keys."""

from __future__ import annotations

import pytest

from flask_gateway_obs import ConfigError
from flask_gateway_obs.config import Keys


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


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (Keys.RATELIMIT_STORAGE_TIMEOUT, 1e10),
        (Keys.RATELIMIT_STORAGE_TIMEOUT, 61),
        (Keys.RATELIMIT_PROBE_INTERVAL, 1e10),
        (Keys.RATELIMIT_PROBE_INTERVAL, "3601"),
        (Keys.TRUSTED_PROXIES, 10**400),
        (Keys.TRUSTED_PROXIES, 33),
    ],
    ids=[
        "timeout-1e10",
        "timeout-61",
        "probe-1e10",
        "probe-3601",
        "proxies-10**400",
        "proxies-33",
    ],
)
def test_numbers_past_their_bound_fail_init(make_app, key: str, value: object) -> None:
    """A huge timeout, probe interval or proxy count is a ConfigError, not a 500 later."""
    with pytest.raises(ConfigError) as caught:
        make_app({key: value})
    assert [problem[0] for problem in caught.value.problems] == [key]


def test_the_largest_accepted_values_serve_requests(make_app) -> None:
    """At their bounds the keys are accepted and a limited route answers."""
    app = make_app(
        {
            Keys.RATELIMIT_STORAGE_TIMEOUT: 60,
            Keys.RATELIMIT_PROBE_INTERVAL: 3600,
            Keys.TRUSTED_PROXIES: 32,
            "RATELIMIT_DEFAULT": "1/minute",
        }
    )
    app.add_url_rule("/r", "r", lambda: "r")
    client = app.test_client()
    assert [client.get("/r").status_code for _ in range(2)] == [200, 429]


def test_a_storage_timeout_not_below_the_probe_interval_is_refused(make_app) -> None:
    """The storage timeout must be below the probe interval; the error names both values."""
    with pytest.raises(ConfigError) as caught:
        make_app({Keys.RATELIMIT_STORAGE_TIMEOUT: 5, Keys.RATELIMIT_PROBE_INTERVAL: 5})
    ((key, got, accepts),) = caught.value.problems
    assert key == Keys.RATELIMIT_STORAGE_TIMEOUT and got == 5
    assert Keys.RATELIMIT_PROBE_INTERVAL in accepts


def test_a_cross_key_problem_comes_with_the_other_bad_keys(make_app) -> None:
    """One ConfigError names a bad key of another group and the rate-limit rule together."""
    with pytest.raises(ConfigError) as caught:
        make_app(
            {
                Keys.LOG_LEVEL: "LOUD",
                Keys.RATELIMIT_STORAGE_TIMEOUT: 2,
                Keys.RATELIMIT_PROBE_INTERVAL: 1,
            }
        )
    assert {key for key, _, _ in caught.value.problems} == {
        Keys.LOG_LEVEL,
        Keys.RATELIMIT_STORAGE_TIMEOUT,
    }
