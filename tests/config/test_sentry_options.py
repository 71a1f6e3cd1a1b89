"""GATEWAY_OBS_SENTRY_OPTIONS: further sentry_sdk.init options, their numbers bounded."""

from __future__ import annotations

import pytest

from flask_gateway_obs import ConfigError
from flask_gateway_obs.config import Keys, load_settings


def problems_of(options: dict[str, object]) -> dict[str, str]:
    """The bad options named by the ConfigError of ``options``, with what each accepts."""
    with pytest.raises(ConfigError) as caught:
        load_settings({Keys.SENTRY_OPTIONS: options}, {})
    return {key: accepts for key, _got, accepts in caught.value.problems}


def key_of(option: str) -> str:
    return f"{Keys.SENTRY_OPTIONS}[{option!r}]"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_breadcrumbs", float("inf")),
        ("max_breadcrumbs", 1e12),
        ("max_breadcrumbs", 101),
        ("max_breadcrumbs", -1),
        ("max_breadcrumbs", 2.5),
        ("max_value_length", 1e12),
        ("max_value_length", float("nan")),
        ("profiles_sample_rate", 1.5),
        ("profiles_sample_rate", float("nan")),
    ],
)
def test_numeric_sentry_options_are_bounded(option: str, value: float) -> None:
    """Non-finite and out-of-range numbers are refused, naming the option and its range."""
    problems = problems_of({option: value})
    assert list(problems) == [key_of(option)]
    assert "from" in problems[key_of(option)]


def test_max_breadcrumbs_accepts_at_most_sentrys_own_maximum() -> None:
    """max_breadcrumbs above 100 (Sentry keeps no more) is refused, saying so."""
    assert "0 to 100" in problems_of({"max_breadcrumbs": 1000})[key_of("max_breadcrumbs")]


def test_a_non_finite_number_is_refused_for_any_option() -> None:
    """inf is no value of any option, numeric by default or not."""
    problems = problems_of({"server_name": float("inf")})
    assert problems == {key_of("server_name"): "a finite number"}


def test_numeric_sentry_options_within_bounds_pass_normalised() -> None:
    """Numbers within bounds are kept; an integer option given as 50.0 becomes 50."""
    settings = load_settings(
        {
            Keys.SENTRY_OPTIONS: (
                '{"max_breadcrumbs": 50.0, "profiles_sample_rate": 0.25, "max_value_length": 4096}'
            )
        },
        {},
    )
    options = dict(settings.sentry_options or {})
    assert options == {
        "max_breadcrumbs": 50,
        "profiles_sample_rate": 0.25,
        "max_value_length": 4096,
    }
    assert isinstance(options["max_breadcrumbs"], int)


def test_options_set_by_other_keys_are_refused_by_name() -> None:
    """sample_rate and shutdown_timeout have keys of their own; the error says so."""
    problems = problems_of({"sample_rate": 2, "shutdown_timeout": 1e12})
    accepts = problems[Keys.SENTRY_OPTIONS]
    assert "'sample_rate', 'shutdown_timeout' set by the GATEWAY_OBS_SENTRY_* keys" in accepts
