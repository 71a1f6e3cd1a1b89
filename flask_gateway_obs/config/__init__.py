"""Every configuration key, its default, its parser and its validation.

Each key is a field of :class:`Settings`, composed of one group per concern
(``config/base.py``, ``config/health.py``, ...). The field's metadata holds the
``app.config`` key, the parser that validates and normalises a raw value and a
short description of what the key accepts (used in error messages and the README
table). :func:`load_settings` reads them all at ``init_app`` in one pass and raises
one :class:`ConfigError` that names every bad key.

Values may come from Python (``app.config[...] = 5``) or from the environment
through ``app.config.from_prefixed_env()``, which hands over JSON-decoded values
where it can and plain strings otherwise; every parser accepts both.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from typing import Any

from .base import BaseKeys, BaseSettings
from .health import HealthKeys, HealthSettings
from .health import cross_checks as health_cross_checks
from .metrics import MetricsKeys, MetricsSettings
from .parsers import PREFIX, ConfigError, Parser, _Invalid, _Problems, parse_options
from .ratelimit import RatelimitKeys, RatelimitSettings
from .ratelimit import cross_checks as ratelimit_cross_checks
from .resilience import BREAKER_OPTIONS, RETRY_OPTIONS, ResilienceKeys, ResilienceSettings
from .resilience import cross_checks as resilience_cross_checks
from .sentry import SENTRY_OFF, SentryKeys, SentrySettings
from .sentry import cross_checks as sentry_cross_checks
from .slo import SloKeys, SloSettings
from .slo import cross_checks as slo_cross_checks
from .tracing import TracingKeys, TracingSettings

__all__ = [
    "BREAKER_OPTIONS",
    "PREFIX",
    "RETRY_OPTIONS",
    "SENTRY_OFF",
    "ConfigError",
    "Keys",
    "Parser",
    "Settings",
    "all_keys",
    "check_overrides",
    "load_settings",
    "parse_options",
    "unreceived_environment",
]


@dataclasses.dataclass(frozen=True)
class Settings(
    SloSettings,
    TracingSettings,
    RatelimitSettings,
    ResilienceSettings,
    SentrySettings,
    MetricsSettings,
    HealthSettings,
    BaseSettings,
):
    """The validated configuration of one app; read once at ``init_app``."""


class Keys(
    BaseKeys,
    HealthKeys,
    MetricsKeys,
    SentryKeys,
    ResilienceKeys,
    RatelimitKeys,
    SloKeys,
    TracingKeys,
):
    """The ``app.config`` key of every setting, as constants for code and tests."""


_FIELDS = {f.metadata["key"]: f for f in dataclasses.fields(Settings)}
_BY_NAME = {f.name: f for f in dataclasses.fields(Settings)}


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}
#: Rules between keys, one function per group: ``settings -> [(key, got, accepts)]``.
_CROSS_CHECKS: tuple[Callable[[Settings], list[tuple[str, Any, str]]], ...] = (
    health_cross_checks,
    sentry_cross_checks,
    ratelimit_cross_checks,
    slo_cross_checks,
    resilience_cross_checks,
)


def all_keys() -> dict[str, dataclasses.Field[Any]]:
    """Every ``app.config`` key with its field (for docs and tests)."""
    return dict(_FIELDS)


def check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor overrides by ``app.config`` key; by field name (``log_level``) or by key.

    :raises TypeError: for a name that is no setting, with the closest one suggested.
    """
    normalised: dict[str, Any] = {}
    for name, value in overrides.items():
        field = _BY_NAME.get(name) or _FIELDS.get(name)
        if field is None:
            close = difflib.get_close_matches(name, [*_BY_NAME, *_FIELDS], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"GatewayObs() got an unknown setting {name!r}{hint}")
        normalised[field.metadata["key"]] = value
    return normalised


def load_settings(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> Settings:
    """Validate the extension's keys of ``config`` and return them as :class:`Settings`.

    ``overrides`` come from the constructor, by field name (``log_level``) or by
    key (``GATEWAY_OBS_LOG_LEVEL``); a value in ``config`` wins over them.

    :raises ConfigError: naming every bad key, what it got and what it accepts.
    :raises TypeError: for an override that names no setting.
    """
    normalised = check_overrides(overrides)

    values: dict[str, Any] = {}
    problems: list[tuple[str, Any, str]] = []
    for key, field in _FIELDS.items():
        if key in config:
            raw = config[key]
        elif key in normalised:
            raw = normalised[key]
        else:
            values[field.name] = field.default
            continue
        try:
            values[field.name] = field.metadata["parse"](raw)
        except _Problems as exc:  # a nested value names each bad part
            problems.extend(exc.problems)
        except _Invalid:
            problems.append((key, raw, field.metadata["accepts"]))
    for key in config:
        if key.startswith(PREFIX) and key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"a known key (did you mean {close[0]}?)" if close else "a known key"
            problems.append((key, config[key], hint))
    # Rules between keys run on what parsed (a bad key falls back to its default here),
    # so one ConfigError names every problem at once.
    bad = {problem[0] for problem in problems}
    settings = Settings(**{**_DEFAULTS, **values})
    for rules in _CROSS_CHECKS:
        problems.extend(p for p in rules(settings) if p[0] not in bad)
    if problems:
        raise ConfigError(problems)
    return settings


_FLASK_PREFIX = "FLASK_"


def unreceived_environment(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Names of the environment's ``GATEWAY_OBS_*`` variables that ``config`` never received.

    ``GATEWAY_OBS_X`` (no ``FLASK_`` prefix) reaches ``app.config`` only if the app copies
    it itself, and ``FLASK_GATEWAY_OBS_X`` only through ``app.config.from_prefixed_env()``;
    either is silently unused otherwise. Names only: values are never looked at.
    """
    environ = os.environ if environ is None else environ
    unreceived = []
    for name in environ:
        key = name[len(_FLASK_PREFIX) :] if name.startswith(_FLASK_PREFIX + PREFIX) else name
        if key.startswith(PREFIX) and key.split("__", 1)[0] not in config:
            unreceived.append(name)
    return sorted(unreceived)
