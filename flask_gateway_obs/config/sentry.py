"""Keys of the Sentry adapter (``GATEWAY_OBS_SENTRY_*``)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from .parsers import (
    MAX_SECONDS,
    NOT_SHOWN,
    PREFIX,
    CrossRule,
    Parser,
    _between,
    _bool,
    _callable_or_import,
    _choice,
    _fraction,
    _int,
    _Invalid,
    _non_negative_float,
    _optional,
    _Problems,
    _setting,
    _string_list,
    _text,
    _url,
)

#: ``sentry_sdk.init`` options the Sentry adapter sets itself.
_SENTRY_MANAGED = frozenset(
    {
        "dsn",
        "environment",
        "release",
        "sample_rate",
        "traces_sample_rate",
        "traces_sampler",
        "send_default_pii",
        "data_collection",
        "include_local_variables",
        "max_request_body_size",
        "transport_queue_size",
        "shutdown_timeout",
        "before_send",
        "before_send_transaction",
        "before_breadcrumb",
        "default_integrations",
        "auto_enabling_integrations",
        "event_scrubber",
        "enable_tracing",
    }
)


#: What ``GATEWAY_OBS_SENTRY_DSN`` becomes when set to switch Sentry off explicitly.
SENTRY_OFF = "off"
_SENTRY_OFF_WORDS = frozenset({"", "off", "false", "none", "disabled"})


def _sentry_dsn(value: Any) -> str | None:
    # None: unset (the SENTRY_DSN environment variable applies); "" / "off" / False: off,
    # whatever the environment says (sentry_sdk.init(dsn="") means the same).
    if value is None:
        return None
    if value is False or (isinstance(value, str) and value.strip().lower() in _SENTRY_OFF_WORDS):
        return SENTRY_OFF
    return _checked_dsn(value)


def _checked_dsn(value: Any) -> str:
    """A DSN sentry-sdk accepts (``https://key@host/project-id``)."""
    dsn = str(_url("http", "https")(value))
    from sentry_sdk.utils import BadDsn, Dsn

    try:
        Dsn(dsn)
    except BadDsn:
        raise _Invalid from None
    return dsn


#: The numeric ``sentry_sdk.init`` options users may set, with their bounds: option ->
#: (parser, accepts). The sample rates and the shutdown timeout are keys of their own.
_SENTRY_NUMBERS: dict[str, tuple[Parser, str]] = {
    # Sentry keeps at most 100 breadcrumbs of an event; more only cost memory per scope
    "max_breadcrumbs": (_int(0, 100), "an integer from 0 to 100 (Sentry keeps at most 100)"),
    "max_stack_frames": (_int(1, 1_000), "an integer from 1 to 1000"),
    "max_value_length": (_int(1, 1_000_000), "an integer from 1 to 1000000"),
    "profiles_sample_rate": (_fraction, "a number from 0 to 1"),
    "profile_session_sample_rate": (_fraction, "a number from 0 to 1"),
    "db_query_source_threshold_ms": (
        _between(0, MAX_SECONDS * 1000),
        f"a number of milliseconds from 0 to {MAX_SECONDS * 1000:.0f}",
    ),
    "http_request_source_threshold_ms": (
        _between(0, MAX_SECONDS * 1000),
        f"a number of milliseconds from 0 to {MAX_SECONDS * 1000:.0f}",
    ),
}
SENTRY_OPTIONS_ACCEPTS = (
    "a dict (or JSON object) of further sentry_sdk.init options, not those set here; "
    "numbers finite, max_breadcrumbs from 0 to 100, sample rates from 0 to 1"
)


def _sentry_options(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _Invalid from None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _Invalid
    try:
        from sentry_sdk.consts import DEFAULT_OPTIONS
    except ImportError:  # pragma: no cover - sentry-sdk is a dependency
        raise _Invalid from None
    refused = _refused_options(value, DEFAULT_OPTIONS)
    if refused:
        # names only: the value of a mistyped option may be a secret
        raise _Problems([(SentryKeys.SENTRY_OPTIONS, NOT_SHOWN, refused)])
    options: dict[str, Any] = {}
    problems: list[tuple[str, Any, str]] = []
    for name, item in value.items():
        spec = _SENTRY_NUMBERS.get(name)
        accepts: str | None = None
        if spec is None:
            accepts = _option_problem(name, item, DEFAULT_OPTIONS[name])
            options[name] = item
        else:
            try:
                options[name] = spec[0](item)
            except _Invalid:
                accepts = spec[1]
        if accepts is not None:
            problems.append((f"{SentryKeys.SENTRY_OPTIONS}[{name!r}]", item, accepts))
    if problems:
        raise _Problems(problems)
    return options


def _refused_options(value: Mapping[str, Any], known: Mapping[str, Any]) -> str | None:
    """What ``GATEWAY_OBS_SENTRY_OPTIONS`` accepts, naming the options it refuses: those
    the extension sets from keys of its own and those sentry_sdk.init does not know."""
    managed = [name for name in value if name in _SENTRY_MANAGED]
    unknown = [name for name in value if name not in _SENTRY_MANAGED and name not in known]
    if not managed and not unknown:
        return None
    parts = []
    if managed:
        names = ", ".join(map(repr, managed))
        parts.append(f"{names} set by the GATEWAY_OBS_SENTRY_* keys instead")
    choices = [k for k in known if k not in _SENTRY_MANAGED]
    for name in unknown:
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f", did you mean {close[0]}?" if close else ""
        parts.append(f"{name!r} is no sentry_sdk.init option{hint}")
    return f"further sentry_sdk.init options, not those set here ({'; '.join(parts)})"


def _option_problem(name: str, value: Any, default: Any) -> str | None:
    """What option ``name`` accepts if ``value`` is not of the type of its default
    (``None`` when it fits; options without a default are left to sentry-sdk, but for
    numbers, which are finite)."""
    if name == "integrations":
        from sentry_sdk.integrations import Integration

        if isinstance(value, (list, tuple)) and all(isinstance(i, Integration) for i in value):
            return None
        return "a list of sentry_sdk Integration objects"
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "a boolean"
    if isinstance(default, (int, float)):
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if fits else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, (list, tuple)):
        return None if isinstance(value, (list, tuple)) else "a list"
    if isinstance(default, Mapping):
        return None if isinstance(value, Mapping) else "a dict"
    return None


@dataclasses.dataclass(frozen=True)
class SentrySettings:
    """Keys of the Sentry adapter (``GATEWAY_OBS_SENTRY_*``)."""

    # sentry
    sentry_dsn: str | None = _setting(
        "SENTRY_DSN",
        None,
        _sentry_dsn,
        "a Sentry DSN (https://key@host/project-id), or '' / 'off' / False to switch Sentry off",
        "where errors are reported; unset: the ``SENTRY_DSN`` environment variable, "
        "and without either Sentry stays off; ``''`` or ``'off'`` keeps it off even when "
        "``SENTRY_DSN`` is set",
    )
    sentry_environment: str | None = _setting(
        "SENTRY_ENVIRONMENT",
        None,
        _optional(_text),
        "a non-empty string",
        "unset: ``SENTRY_ENVIRONMENT``, else ``development`` when ``app.debug`` or "
        "``app.testing``, else ``production``",
    )
    sentry_release: str | None = _setting(
        "SENTRY_RELEASE",
        None,
        _optional(_text),
        "a non-empty string",
        "unset: ``SENTRY_RELEASE``, else ``GATEWAY_OBS_SERVICE_VERSION``",
    )
    sentry_sample_rate: float = _setting(
        "SENTRY_SAMPLE_RATE",
        1.0,
        _fraction,
        "a number from 0 to 1",
        "share of error events sent",
    )
    sentry_traces_sample_rate: float = _setting(
        "SENTRY_TRACES_SAMPLE_RATE",
        0.0,
        _fraction,
        "a number from 0 to 1",
        "share of requests traced; 0 turns tracing (and sentry-sdk's Flask integration) off",
    )
    sentry_send_default_pii: bool = _setting(
        "SENTRY_SEND_DEFAULT_PII",
        False,
        _bool,
        "a boolean",
        "send the user's e-mail, name and IP address and IP headers; secrets are scrubbed "
        "either way",
    )
    sentry_include_locals: bool = _setting(
        "SENTRY_INCLUDE_LOCALS",
        True,
        _bool,
        "a boolean",
        "send the local variables of stack frames (secret-looking names scrubbed)",
    )
    sentry_max_request_body: str = _setting(
        "SENTRY_MAX_REQUEST_BODY",
        "medium",
        _choice("never", "small", "medium", "always"),
        "one of never, small, medium, always",
        "JSON and form bodies attached to events: up to 1 kB (small), 10 kB (medium)",
    )
    sentry_report_4xx: bool = _setting(
        "SENTRY_REPORT_4XX",
        False,
        _bool,
        "a boolean",
        "also report operational 4xx errors (``AppError`` and werkzeug's), as warnings",
    )
    sentry_report_operational_5xx: bool = _setting(
        "SENTRY_REPORT_OPERATIONAL_5XX",
        True,
        _bool,
        "a boolean",
        "report operational 5xx errors such as 503 from an open breaker; bugs always are",
    )
    sentry_event_id_in_body: bool = _setting(
        "SENTRY_EVENT_ID_IN_BODY",
        True,
        _bool,
        "a boolean",
        "add ``sentry_event_id`` to the problem+json body of a reported error",
    )
    sentry_denylist: tuple[str, ...] = _setting(
        "SENTRY_DENYLIST",
        (),
        _string_list,
        "a list of key fragments (or a comma-separated string)",
        "fragments added to the secret-looking names scrubbed from events "
        "(with ``GATEWAY_OBS_LOG_REDACT_KEYS``)",
    )
    sentry_queue_size: int = _setting(
        "SENTRY_QUEUE_SIZE",
        100,
        _int(1, 100_000),
        "an integer from 1 to 100000",
        "events waiting to be sent; beyond it new events are dropped, never waited for",
    )
    sentry_shutdown_timeout: float = _setting(
        "SENTRY_SHUTDOWN_TIMEOUT",
        2.0,
        _non_negative_float,
        "a number of seconds from 0 to 86400",
        "longest wait for pending events at exit",
    )
    sentry_before_send: Callable[[Any, Any], Any] | None = _setting(  # noqa: RUF009 - immutable
        "SENTRY_BEFORE_SEND",
        None,
        _optional(_callable_or_import),
        "a callable or a 'package.module:name' string",
        "``(event, hint) -> event | None`` run on the scrubbed event; if it raises, "
        "the event is dropped",
    )
    sentry_options: Mapping[str, Any] | None = _setting(
        "SENTRY_OPTIONS",
        None,
        _optional(_sentry_options),
        SENTRY_OPTIONS_ACCEPTS,
        "passed to ``sentry_sdk.init`` (``integrations`` are added to ours)",
    )
    sentry_repeat_interval: float = _setting(
        "SENTRY_REPEAT_INTERVAL",
        60.0,
        _non_negative_float,
        "a number of seconds from 0 to 86400",
        "an operational 5xx (same route, code and status) is reported at most once per this "
        "many seconds; the repeats in between are counted in the next report; 0 reports each",
    )
    sentry_traces_follow_parent: bool = _setting(
        "SENTRY_TRACES_FOLLOW_PARENT",
        False,
        _bool,
        "a boolean",
        "follow the sampling decision of an incoming ``sentry-trace`` header; off, a caller "
        "cannot force its requests to be traced",
    )


class SentryKeys:
    """The ``app.config`` keys of this group."""

    SENTRY_DSN = PREFIX + "SENTRY_DSN"
    SENTRY_ENVIRONMENT = PREFIX + "SENTRY_ENVIRONMENT"
    SENTRY_RELEASE = PREFIX + "SENTRY_RELEASE"
    SENTRY_SAMPLE_RATE = PREFIX + "SENTRY_SAMPLE_RATE"
    SENTRY_TRACES_SAMPLE_RATE = PREFIX + "SENTRY_TRACES_SAMPLE_RATE"
    SENTRY_SEND_DEFAULT_PII = PREFIX + "SENTRY_SEND_DEFAULT_PII"
    SENTRY_INCLUDE_LOCALS = PREFIX + "SENTRY_INCLUDE_LOCALS"
    SENTRY_MAX_REQUEST_BODY = PREFIX + "SENTRY_MAX_REQUEST_BODY"
    SENTRY_REPORT_4XX = PREFIX + "SENTRY_REPORT_4XX"
    SENTRY_REPORT_OPERATIONAL_5XX = PREFIX + "SENTRY_REPORT_OPERATIONAL_5XX"
    SENTRY_EVENT_ID_IN_BODY = PREFIX + "SENTRY_EVENT_ID_IN_BODY"
    SENTRY_DENYLIST = PREFIX + "SENTRY_DENYLIST"
    SENTRY_QUEUE_SIZE = PREFIX + "SENTRY_QUEUE_SIZE"
    SENTRY_SHUTDOWN_TIMEOUT = PREFIX + "SENTRY_SHUTDOWN_TIMEOUT"
    SENTRY_BEFORE_SEND = PREFIX + "SENTRY_BEFORE_SEND"
    SENTRY_OPTIONS = PREFIX + "SENTRY_OPTIONS"
    SENTRY_REPEAT_INTERVAL = PREFIX + "SENTRY_REPEAT_INTERVAL"
    SENTRY_TRACES_FOLLOW_PARENT = PREFIX + "SENTRY_TRACES_FOLLOW_PARENT"


def _environment_dsn_rule(settings: SentrySettings) -> list[tuple[str, Any, str]]:
    """The ``SENTRY_DSN`` environment variable, the fallback of an unset
    ``GATEWAY_OBS_SENTRY_DSN``, must be a DSN too."""
    if settings.sentry_dsn is not None:
        return []
    dsn = os.environ.get("SENTRY_DSN", "").strip()
    if not dsn:
        return []
    try:
        _checked_dsn(dsn)
    except _Invalid:
        return [("SENTRY_DSN (environment)", dsn, "a Sentry DSN (https://key@host/project-id)")]
    return []


#: Rules beyond one key (skipped by ``load_settings`` when a key they read failed to parse).
CROSS_RULES: tuple[CrossRule, ...] = (_environment_dsn_rule,)
