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
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from .base import BaseKeys, BaseSettings
from .health import CROSS_RULES as HEALTH_RULES
from .health import HealthKeys, HealthSettings
from .metrics import MetricsKeys, MetricsSettings
from .parsers import (
    NOT_SHOWN,
    PREFIX,
    ConfigError,
    CrossRule,
    Parser,
    _Invalid,
    _Problems,
    parse_options,
)
from .ratelimit import CROSS_RULES as RATELIMIT_RULES
from .ratelimit import RatelimitKeys, RatelimitSettings
from .resilience import BREAKER_OPTIONS, RETRY_OPTIONS, ResilienceKeys, ResilienceSettings
from .resilience import CROSS_RULES as RESILIENCE_RULES
from .sentry import CROSS_RULES as SENTRY_RULES
from .sentry import SENTRY_OFF, SentryKeys, SentrySettings
from .slo import CROSS_RULES as SLO_RULES
from .slo import SloKeys, SloSettings
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
#: Rules between keys: ``settings -> [(key, got, accepts)]``, each of them skipped when a
#: key it reads failed to parse (it would judge that key's default, not the user's value).
_CROSS_RULES: tuple[CrossRule, ...] = (
    *HEALTH_RULES,
    *SENTRY_RULES,
    *RATELIMIT_RULES,
    *SLO_RULES,
    *RESILIENCE_RULES,
)
#: The prefix of ``from_prefixed_env()``'s default: ``FLASK_GATEWAY_OBS_LOG_LEVEL``.
_FLASK_PREFIX = "FLASK_"
#: Keys whose value is text: one from the environment is taken as written (see _as_written).
_TEXT_TYPES = frozenset({"str", "str | None", str})


class _ReadsRecorded(Settings):
    """Settings that note which fields are read (by a cross-key rule in ``load_settings``)."""

    def __getattribute__(self, name: str) -> Any:
        if name in _BY_NAME:
            object.__getattribute__(self, "_reads").add(name)
        return object.__getattribute__(self, name)


def _cross_problems(fields: Mapping[str, Any], failed: set[str]) -> list[tuple[str, Any, str]]:
    """The problems of every cross-key rule that read no field in ``failed``."""
    recorded = _ReadsRecorded(**fields)
    problems: list[tuple[str, Any, str]] = []
    for rule in _CROSS_RULES:
        reads: set[str] = set()
        object.__setattr__(recorded, "_reads", reads)
        found = rule(recorded)
        if not reads & failed:
            problems.extend(found)
    return problems


def _same(decoded: Any, value: Any) -> bool:
    """Whether ``value`` is what ``json.loads`` made of a text (``1 == True`` is no match)."""
    if type(decoded) is not type(value):
        return False
    if isinstance(value, float) and math.isnan(value):
        return math.isnan(decoded)
    return bool(decoded == value)


def _as_written(field: dataclasses.Field[Any], value: Any, environ: Mapping[str, str]) -> Any:
    """The text of a text key as the environment wrote it, where ``from_prefixed_env()``
    JSON-decoded it into a number or a boolean (``1.10`` became ``1.1``, ``1e5``
    ``100000.0``); ``value`` itself otherwise. ``null`` stays what Flask documents it
    to be, no value (the key unset).

    Only the variable of Flask's default prefix, ``FLASK_<KEY>``, is looked at: a value
    loaded with ``from_prefixed_env(prefix=...)`` keeps what JSON made of it.
    """
    if value is None or isinstance(value, str) or field.type not in _TEXT_TYPES:
        return value
    written = environ.get(_FLASK_PREFIX + field.metadata["key"])
    if written is None:
        return value
    try:
        decoded = json.loads(written)
    except ValueError:
        return value
    return written if _same(decoded, value) else value


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


def load_settings(
    config: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Validate the extension's keys of ``config`` and return them as :class:`Settings`.

    ``overrides`` come from the constructor, by field name (``log_level``) or by
    key (``GATEWAY_OBS_LOG_LEVEL``); a value in ``config`` wins over them.

    :param environ: where ``FLASK_GATEWAY_OBS_*`` variables are read back, so that a text
        key JSON-decoded by ``from_prefixed_env()`` keeps its text; default ``os.environ``.
    :raises ConfigError: naming every bad key, what it got and what it accepts.
    :raises TypeError: for an override that names no setting.
    """
    normalised = check_overrides(overrides)
    environ = os.environ if environ is None else environ

    values: dict[str, Any] = {}
    failed: set[str] = set()
    problems: list[tuple[str, Any, str]] = []
    for key, field in _FIELDS.items():
        if key in config:
            raw = _as_written(field, config[key], environ)
        elif key in normalised:
            raw = normalised[key]
        else:
            continue
        try:
            values[field.name] = field.metadata["parse"](raw)
        except _Problems as exc:  # a nested value names each bad part
            problems.extend(exc.problems)
            failed.add(field.name)
        except _Invalid:
            problems.append((key, raw, field.metadata["accepts"]))
            failed.add(field.name)
    for key in config:
        if key.startswith(PREFIX) and key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"a known key (did you mean {close[0]}?)" if close else "a known key"
            # never the value: a mistyped secret key (..._METRICS_TOKN) holds a secret
            problems.append((key, NOT_SHOWN, hint))
    # Rules between keys run on what parsed, so one ConfigError names every problem at
    # once; a rule that reads a bad key is skipped (it would judge that key's default).
    bad = {problem[0] for problem in problems}
    fields = {**_DEFAULTS, **values}
    problems.extend(p for p in _cross_problems(fields, failed) if p[0] not in bad)
    if problems:
        raise ConfigError(problems)
    return Settings(**fields)


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
