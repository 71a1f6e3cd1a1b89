"""One validation pass: every bad key, cross-key rules included, in one ConfigError; bounds."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_gateway_obs import ConfigError, GatewayObs
from flask_gateway_obs.config import Keys, all_keys, load_settings

HUGE = "9" * 400


def problems_of(config: dict[str, object]) -> dict[str, str]:
    """The bad keys named by the ConfigError of ``config``, with what each accepts."""
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {})
    return {key: accepts for key, _got, accepts in caught.value.problems}


def test_a_bad_key_and_a_broken_cross_key_rule_are_one_error() -> None:
    """A bad LOG_LEVEL and a token required by another key come in one ConfigError."""
    problems = problems_of({Keys.LOG_LEVEL: "loud", Keys.HEALTH_SHOW_DETAILS: "when_authorized"})
    assert set(problems) == {Keys.LOG_LEVEL, Keys.HEALTH_TOKEN}


def test_init_app_raises_the_one_error_before_touching_the_app() -> None:
    """init_app fails with every problem at once and leaves the app unregistered."""
    app = Flask("bad")
    app.config.update({Keys.LOG_LEVEL: "loud", Keys.HEALTH_TIMEOUT: -1})
    with pytest.raises(ConfigError) as caught:
        GatewayObs(app)
    assert {p[0] for p in caught.value.problems} == {Keys.LOG_LEVEL, Keys.HEALTH_TIMEOUT}
    assert "gateway_obs" not in app.extensions


def test_a_cross_key_rule_is_not_repeated_for_a_key_already_bad() -> None:
    """A key that failed to parse is named once, not again by a rule that reads it."""
    problems = problems_of(
        {
            Keys.HEALTH_MEMORY_DEGRADED_PERCENT: "lots",
            Keys.HEALTH_MEMORY_UNHEALTHY_PERCENT: 50,
        }
    )
    assert list(problems) == [Keys.HEALTH_MEMORY_DEGRADED_PERCENT]


@pytest.mark.parametrize(
    "key", [Keys.HEALTH_MAX_WORKERS, Keys.HEALTH_TIMEOUT, Keys.LOG_USER_AGENT_MAX]
)
def test_a_huge_number_from_the_environment_is_a_config_error(key: str) -> None:
    """An integer of 400 digits is refused with a ConfigError, never an OverflowError."""
    assert key in problems_of({key: HUGE})
    assert key in problems_of({key: int(HUGE)})


def test_a_huge_number_inside_breakers_json_is_a_config_error() -> None:
    """The same inside GATEWAY_OBS_BREAKERS: the option is named, nothing overflows."""
    problems = problems_of({Keys.BREAKERS: '{"payments": {"fail_max": ' + HUGE + "}}"})
    assert any("fail_max" in key for key in problems)


@pytest.mark.parametrize(
    "key",
    [
        Keys.HEALTH_TIMEOUT,
        Keys.BREAKER_TIMEOUT,
        Keys.RETRY_DEADLINE,
    ],
)
def test_durations_have_an_upper_bound(key: str) -> None:
    """1e10 seconds is refused (it overflows the clocks later); a day is the most."""
    problems = problems_of({key: 1e10})
    assert "86400" in problems[key]
    load_settings({key: 86_400}, {})


@pytest.mark.parametrize(
    ("key", "too_many"),
    [
        (Keys.HEALTH_MAX_WORKERS, 257),
        (Keys.TRUSTED_PROXIES, 33),
        (Keys.RETRY_MAX_ATTEMPTS, 101),
        (Keys.RETRY_MULTIPLIER, 101),
        (Keys.SENTRY_QUEUE_SIZE, 100_001),
    ],
)
def test_counts_have_an_upper_bound(key: str, too_many: int) -> None:
    """Every number has a sane upper bound, said in the error."""
    assert key in problems_of({key: too_many})


def test_a_misspelt_override_fails_at_construction_with_a_suggestion() -> None:
    """GatewayObs(lg_level=...) fails at once, naming the setting it probably meant."""
    with pytest.raises(TypeError, match=r"lg_level.*did you mean 'log_level'"):
        GatewayObs(lg_level="debug")


def test_a_keyword_dsn_password_is_never_echoed() -> None:
    """A bad keyword DSN (host=db user=app password=PW) is named with its password masked."""
    with pytest.raises(ConfigError) as caught:
        load_settings({Keys.DATABASE_URL: "host=db user=app password=PW-canary-7"}, {})
    message = str(caught.value)
    assert Keys.DATABASE_URL in message and "PW-canary-7" not in message


@pytest.mark.parametrize(
    ("config", "bad"),
    [
        # the default /health of a bad HEALTH_PATH is no clash the user made
        ({Keys.HEALTH_PATH: "/status?x", Keys.METRICS_PATH: "/health"}, {Keys.HEALTH_PATH}),
        # nor are the default buckets of bad METRICS_BUCKETS the user's buckets
        (
            {Keys.METRICS_BUCKETS: "bad", Keys.SLO_LATENCY_SECONDS: 0.3},
            {Keys.METRICS_BUCKETS},
        ),
        # a bad REDIS_URL is no missing one
        ({Keys.BREAKER_STORAGE: "redis", Keys.REDIS_URL: "http://cache"}, {Keys.REDIS_URL}),
        # nor is the default probe interval of a bad one below the user's timeout
        (
            {Keys.RATELIMIT_PROBE_INTERVAL: 0, Keys.RATELIMIT_STORAGE_TIMEOUT: 40},
            {Keys.RATELIMIT_PROBE_INTERVAL},
        ),
    ],
)
def test_a_cross_key_rule_that_reads_a_bad_key_is_skipped(
    config: dict[str, object], bad: set[str]
) -> None:
    """A key that fails to parse is the one problem; no rule judges its default instead."""
    assert set(problems_of(config)) == bad


def test_cross_key_rules_on_good_keys_still_run_beside_a_bad_key() -> None:
    """A rule that reads no bad key still reports, in the same error."""
    problems = problems_of(
        {
            Keys.METRICS_BUCKETS: "bad",
            Keys.HEALTH_SHOW_DETAILS: "when_authorized",
            Keys.HEALTH_LIVE_PATH: "/metrics",
        }
    )
    assert set(problems) == {Keys.METRICS_BUCKETS, Keys.HEALTH_TOKEN, Keys.METRICS_PATH}


@pytest.mark.parametrize("key", [Keys.METRICS_BUCKETS, Keys.METRICS_DEPENDENCY_BUCKETS])
def test_buckets_have_an_upper_bound_on_their_count(key: str) -> None:
    """At most 64 bucket bounds (each is a sample per label set in every scrape)."""
    many = [i / 100 for i in range(1, 20_001)]
    assert "1 to 64" in problems_of({key: many})[key]
    assert key in problems_of({key: ",".join(map(str, many[:65]))})
    field = all_keys()[key].name
    assert len(getattr(load_settings({key: many[:64]}, {}), field)) == 64


def test_a_huge_bad_value_is_shown_shortened() -> None:
    """An error shows at most the start of a very long value."""
    with pytest.raises(ConfigError) as caught:
        load_settings({Keys.METRICS_BUCKETS: list(range(1, 20_001))}, {})
    assert len(str(caught.value)) < 1_000


def test_a_breaker_with_its_own_window_is_checked_beside_a_bad_shared_window() -> None:
    """A rule reads only what it needs: a breaker's own window does not read the bad
    GATEWAY_OBS_BREAKER_WINDOW, so its slow calls are still judged; one that would use
    the shared window is not."""
    own = f"{Keys.BREAKERS}['own'].slow_call_seconds"
    problems = problems_of(
        {
            Keys.BREAKER_WINDOW: "count:0",
            Keys.BREAKERS: {"own": {"window": "consecutive", "slow_call_seconds": 1}},
        }
    )
    assert set(problems) == {Keys.BREAKER_WINDOW, own}
    problems = problems_of(
        {Keys.BREAKER_WINDOW: "count:0", Keys.BREAKERS: {"shared": {"slow_call_seconds": 1}}}
    )
    assert set(problems) == {Keys.BREAKER_WINDOW}
