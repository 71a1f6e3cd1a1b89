"""Parsers of configuration values, and the one error that names every bad key.

A parser takes a raw value (from Python, or a string from the environment through
``app.config.from_prefixed_env()``) and returns it validated and normalised, or raises
:class:`Invalid`; the field's ``accepts`` text then goes into the :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

PREFIX = "GATEWAY_OBS_"


class ConfigError(ValueError):
    """One or more configuration values are invalid.

    :param problems: ``(key, got, accepts)`` for every bad key.
    """

    def __init__(self, problems: list[tuple[str, Any, str]]) -> None:
        self.problems = problems
        lines = [
            f"  {key}: got {_shown(key, got)}; accepts {accepts}" for key, got, accepts in problems
        ]
        super().__init__("invalid flask-gateway-obs configuration:\n" + "\n".join(lines))


_SECRET_KEY_PARTS = ("TOKEN", "DSN", "PASSWORD", "SECRET")


class _NotShown:
    """The ``got`` of a key or option that names no setting: its value is never shown,
    since a mistyped secret key (``..._METRICS_TOKN``) holds a secret all the same."""

    def __repr__(self) -> str:
        return "a value (not shown)"


NOT_SHOWN: Any = _NotShown()


#: The longest value an error shows.
_MAX_SHOWN = 200


def _shown(key: str, value: Any) -> str:
    """How a bad value appears in the error: secrets and the values of unknown keys
    never; passwords in URLs and in ``key=value`` form (``host=db password=PW``) masked."""
    if value is NOT_SHOWN:
        return repr(value)
    if any(part in key.upper() for part in _SECRET_KEY_PARTS):
        return "'***'"
    from ..logs.redaction import SECRET_FRAGMENTS, TextMasker

    shown = TextMasker(SECRET_FRAGMENTS).mask(repr(value))
    if len(shown) > _MAX_SHOWN:  # 20,000 bucket bounds need not fill the error
        return f"{shown[:_MAX_SHOWN]}... ({len(shown)} characters)"
    return shown


class _Invalid(Exception):
    """Raised by a parser; the message is not used, the field's ``accepts`` is."""


Parser = Callable[[Any], Any]

# --- parsers -----------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _Invalid


#: The longest duration any key accepts: one day. Longer ones are mistakes (``1e10``
#: overflows the clocks that timeouts are computed with).
MAX_SECONDS = 86_400.0


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            raise _Invalid
    except (ValueError, OverflowError):  # "abc", or an integer with 400 digits
        raise _Invalid from None
    if not math.isfinite(number):
        raise _Invalid
    return number


def _positive_float(value: Any) -> float:
    """Seconds > 0, at most :data:`MAX_SECONDS`."""
    number = _number(value)
    if not 0 < number <= MAX_SECONDS:
        raise _Invalid
    return number


def _non_negative_float(value: Any) -> float:
    """Seconds >= 0, at most :data:`MAX_SECONDS`."""
    number = _number(value)
    if not 0 <= number <= MAX_SECONDS:
        raise _Invalid
    return number


def _int(minimum: int, maximum: int) -> Parser:
    def parse(value: Any) -> int:
        number = _number(value)
        if number != int(number) or not minimum <= number <= maximum:
            raise _Invalid
        return int(number)

    return parse


def _percent(value: Any) -> float:
    number = _number(value)
    if not 0 < number <= 100:
        raise _Invalid
    return number


def _choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise _Invalid

    return parse


def _text(value: Any) -> str:
    # from_prefixed_env() hands "2024" over as 2024: take numbers back as text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise _Invalid


def _optional(parser: Parser) -> Parser:
    def parse(value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parser(value)

    return parse


_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _log_level(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() in _LOG_LEVELS:
        return _LOG_LEVELS[value.strip().lower()]
    if isinstance(value, int) and not isinstance(value, bool) and value in _LOG_LEVELS.values():
        return value
    raise _Invalid


def _writable_file(value: Any) -> str:
    # Checked now: file logging otherwise fails silently on every record.
    path = _text(value)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise _Invalid
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise _Invalid
    return path


def _header_name(value: Any) -> str:
    text = _text(value)
    if not text.isascii() or not all(c.isalnum() or c == "-" for c in text):
        raise _Invalid
    return text


def _url(*schemes: str) -> Parser:
    def parse(value: Any) -> str:
        text = _text(value)
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise _Invalid from None
        if parts.scheme not in schemes:
            raise _Invalid
        if parts.scheme != "unix" and not parts.hostname and "host=" not in parts.query:
            raise _Invalid
        return text

    return parse


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                raise _Invalid from None
        else:
            return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _Invalid


PATH_ACCEPTS = "an absolute URL path without spaces, '<', '>', '?' or '#'"
#: What an endpoint path may not hold: URL rule syntax (``<int:id>``), a query, a fragment.
_NOT_IN_PATH = frozenset("<>?#")


def _path(value: Any) -> str:
    text = _text(value)
    if not text.startswith("/") or any(
        c.isspace() or not c.isprintable() or c in _NOT_IN_PATH for c in text
    ):
        raise _Invalid
    return text.rstrip("/") or "/"


def _http_status(value: Any) -> int:
    return int(_int(200, 599)(value))


_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*").fullmatch


def _metric_name(value: Any) -> str:
    text = _text(value)
    if _METRIC_NAME(text) is None:
        raise _Invalid
    return text


#: The most bucket bounds a histogram may have. Every bound is one more sample per
#: label set in every scrape (per route and method for ``http_request_duration_seconds``);
#: prometheus_client's defaults have 15, ours 11 and 13: 64 leaves room for fine SLO bounds
#: and keeps a scrape small.
MAX_BUCKETS = 64
BUCKETS_ACCEPTS = (
    f"a list of 1 to {MAX_BUCKETS} distinct numbers of seconds > 0 and <= {MAX_SECONDS:g} "
    "(or a comma-separated string)"
)


def _buckets(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else text.split(",")
        except ValueError:
            raise _Invalid from None
    if not isinstance(value, (list, tuple)) or not 0 < len(value) <= MAX_BUCKETS:
        raise _Invalid
    bounds = tuple(sorted(_positive_float(v) for v in value))
    if len(set(bounds)) != len(bounds):
        raise _Invalid
    return bounds


def _networks(value: Any) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.ip_network(v, strict=False)) for v in _string_list(value))
    except ValueError:
        raise _Invalid from None


def _fraction(value: Any) -> float:
    number = _number(value)
    if not 0 <= number <= 1:
        raise _Invalid
    return number


def _callable_or_import(value: Any) -> Any:
    """A callable, or ``"package.module:name"`` naming one (imported at ``init_app``)."""
    if callable(value):
        return value
    text = _text(value)
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise _Invalid
    try:
        import importlib

        found: Any = importlib.import_module(module)
        for part in attr.split("."):
            found = getattr(found, part)
    except Exception:
        raise _Invalid from None
    if not callable(found):
        raise _Invalid
    return found


# --- nested option dicts (GATEWAY_OBS_BREAKERS, GATEWAY_OBS_RETRY_POLICIES, ...)


class _Problems(_Invalid):
    """Raised by a parser of a nested value; names each bad part on its own."""

    def __init__(self, problems: list[tuple[str, Any, str]]) -> None:
        super().__init__()
        self.problems = problems


def _between(minimum: float, maximum: float) -> Parser:
    def parse(value: Any) -> float:
        number = _number(value)
        if not minimum <= number <= maximum:
            raise _Invalid
        return number

    return parse


def _parse_entry(
    where: str,
    entry: Mapping[Any, Any],
    options: Mapping[str, tuple[Parser, str]],
    problems: list[tuple[str, Any, str]],
) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for option, raw in entry.items():
        spec = options.get(option) if isinstance(option, str) else None
        if spec is None:
            close = difflib.get_close_matches(str(option), list(options), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            # the value of an unknown option is never shown (it may be a mistyped secret)
            problems.append((f"{where}.{option}", NOT_SHOWN, f"one of {', '.join(options)}{hint}"))
            continue
        parse, accepts = spec
        try:
            parsed[option] = parse(raw)
        except _Invalid:
            problems.append((f"{where}.{option}", raw, accepts))
    return parsed


def parse_options(
    where: str, entry: Mapping[str, Any], options: Mapping[str, tuple[Parser, str]]
) -> dict[str, Any]:
    """Validate keyword options given in code (e.g. ``obs.circuit_breaker("x", fail_max=3)``).

    :raises ConfigError: naming every unknown or bad option.
    """
    problems: list[tuple[str, Any, str]] = []
    parsed = _parse_entry(where, entry, options, problems)
    if problems:
        raise ConfigError(problems)
    return parsed


def _named_options(key: str, options: Mapping[str, tuple[Parser, str]]) -> Parser:
    """``{name: {option: value}}`` (or its JSON), each option checked by its own parser."""

    def parse(value: Any) -> dict[str, dict[str, Any]] | None:
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                value = json.loads(value)
            except ValueError:
                raise _Invalid from None
        if not isinstance(value, Mapping):
            raise _Invalid
        result: dict[str, dict[str, Any]] = {}
        problems: list[tuple[str, Any, str]] = []
        for name, entry in value.items():
            where = f"{PREFIX}{key}[{name!r}]"
            if not isinstance(name, str) or not name.strip():
                problems.append((where, name, "a non-empty name"))
            elif not isinstance(entry, Mapping):
                problems.append((where, entry, f"a dict with some of {', '.join(options)}"))
            else:
                result[name] = _parse_entry(where, entry, options, problems)
        if problems:
            raise _Problems(problems)
        return result

    return parse


#: A rule between keys: ``settings -> [(key, got, accepts)]``.
CrossRule = Callable[[Any], list[tuple[str, Any, str]]]


def _setting(key: str, default: Any, parse: Parser, accepts: str, doc: str) -> Any:
    return dataclasses.field(
        default=default,
        metadata={"key": PREFIX + key, "parse": parse, "accepts": accepts, "doc": doc},
    )
