"""Setting an app up for Sentry: its client's options, its reporter, its hooks.

Only the integrations that cost nothing per request are on (logging at ERROR as events,
INFO as breadcrumbs, dedupe, atexit, excepthook, modules); sentry-sdk's Flask
integration, which wraps every request, only when tracing is on. sentry-sdk's own
event scrubber is given an empty denylist: the adapter's scrubber covers its names and
more, and must see every secret value to sweep it from the whole event. For the same
reason sentry-sdk shortens no string (``max_value_length``): the scrubber does, after
the sweep, to the configured length or sentry-sdk's default.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import SENTRY_OFF, ConfigError, Keys, Settings
from .clients import install_process_hooks, obtain
from .events import before_breadcrumb, before_send, before_send_transaction, event_processor
from .registry import EXTENSION_KEY, Binding, process_state
from .reporter import SentryReporter
from .scrubber import Scrubber
from .shorten import UNLIMITED

if TYPE_CHECKING:
    from flask import Flask

    from ..core.state import ObsState

__all__ = ["init_app", "resolve_dsn", "resolve_environment", "resolve_release"]


def resolve_dsn(settings: Settings) -> str | None:
    """``GATEWAY_OBS_SENTRY_DSN``, else the ``SENTRY_DSN`` environment variable; ``None``
    when neither is set or the key says ``"off"`` (or ``""``)."""
    if settings.sentry_dsn == SENTRY_OFF:
        return None
    dsn = settings.sentry_dsn or os.environ.get("SENTRY_DSN", "").strip()
    return dsn or None


def resolve_environment(app: Flask, settings: Settings) -> str:
    """``GATEWAY_OBS_SENTRY_ENVIRONMENT``, ``SENTRY_ENVIRONMENT``, development or production."""
    return (
        settings.sentry_environment
        or os.environ.get("SENTRY_ENVIRONMENT", "").strip()
        or ("development" if app.debug or app.testing else "production")
    )


def resolve_release(settings: Settings) -> str | None:
    """``GATEWAY_OBS_SENTRY_RELEASE``, ``SENTRY_RELEASE``, else the service version."""
    return (
        settings.sentry_release
        or os.environ.get("SENTRY_RELEASE", "").strip()
        or settings.service_version
        or None
    )


def init_app(app: Flask, state: ObsState) -> SentryReporter | None:
    """Set up error reporting for ``app`` if a DSN is configured; else do nothing.

    :raises ConfigError: if sentry-sdk refuses the options (``GATEWAY_OBS_SENTRY_OPTIONS``).
    """
    from sentry_sdk.consts import DEFAULT_MAX_VALUE_LENGTH
    from sentry_sdk.scrubber import DEFAULT_DENYLIST

    settings = state.settings
    dsn = resolve_dsn(settings)
    if dsn is None:
        return None
    extra = dict(settings.sentry_options or {})
    scrubber = Scrubber(
        (*settings.log_redact_keys, *settings.sentry_denylist),
        settings.sentry_send_default_pii,
        settings.sentry_before_send,
        exact_names=DEFAULT_DENYLIST,
        # 1024 in sentry-sdk 2.0, None (no limit) in later releases
        max_value_length=extra.get("max_value_length", DEFAULT_MAX_VALUE_LENGTH),
    )
    environment = resolve_environment(app, settings)
    release = resolve_release(settings)
    key = (
        dsn,
        environment,
        release,
        settings.sentry_sample_rate,
        settings.sentry_traces_sample_rate,
        settings.sentry_traces_follow_parent,
        settings.sentry_send_default_pii,
        settings.sentry_include_locals,
        settings.sentry_max_request_body,
        settings.sentry_queue_size,
        settings.sentry_shutdown_timeout,
        tuple(sorted(scrubber.redactor.fragments)),
        settings.sentry_before_send,
        repr(sorted(extra.items())),
    )

    def options(binding: Binding) -> dict[str, Any]:
        return client_options(dsn, environment, release, settings, binding, extra)

    install_process_hooks(event_processor)
    try:
        obtain(key, options, scrubber)
    except (TypeError, ValueError, AttributeError) as exc:
        # the types were checked with the key; what is left is sentry-sdk's own verdict
        raise ConfigError(
            [(Keys.SENTRY_OPTIONS, extra, f"options sentry_sdk.init accepts ({exc})")]
        ) from None
    reporter = SentryReporter(state, key, scrubber)
    process_state().reporters.add(reporter)
    state.error_listeners.append(reporter.on_error)
    state.observers.append(reporter.observer())
    state.drain_hooks.append(reporter.drain)
    app.extensions[EXTENSION_KEY] = reporter
    return reporter


def client_options(
    dsn: str,
    environment: str,
    release: str | None,
    settings: Settings,
    binding: Binding,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The ``sentry_sdk.init`` options of one client."""
    from sentry_sdk.consts import DEFAULT_OPTIONS

    tracing = settings.sentry_traces_sample_rate > 0
    extra = dict(extra)
    integrations = [*_integrations(tracing), *extra.pop("integrations", ())]
    options: dict[str, Any] = dict(extra)
    options.update(
        dsn=dsn,
        environment=environment,
        release=release,
        sample_rate=settings.sentry_sample_rate,
        traces_sample_rate=settings.sentry_traces_sample_rate if tracing else None,
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=integrations,
        include_local_variables=settings.sentry_include_locals,
        # the scrubber shortens strings once it has swept every secret (see .shorten)
        max_value_length=max(UNLIMITED, extra.get("max_value_length") or 0),
        max_request_body_size=settings.sentry_max_request_body,
        transport_queue_size=settings.sentry_queue_size,
        shutdown_timeout=settings.sentry_shutdown_timeout,
        before_send=functools.partial(before_send, binding),
        before_send_transaction=functools.partial(before_send_transaction, binding),
        before_breadcrumb=functools.partial(before_breadcrumb, binding),
    )
    if tracing:
        options["traces_sampler"] = _traces_sampler(
            settings.sentry_traces_sample_rate, settings.sentry_traces_follow_parent
        )
    if settings.sentry_send_default_pii and "data_collection" in DEFAULT_OPTIONS:
        # newer sentry-sdk deprecates send_default_pii in favour of this (and then
        # runs no event scrubber of its own)
        options["data_collection"] = {
            "user_info": True,
            "stack_frame_variables": settings.sentry_include_locals,
            "http_bodies": ["incoming_request"]
            if settings.sentry_max_request_body != "never"
            else [],
        }
    else:
        if settings.sentry_send_default_pii:
            options["send_default_pii"] = True
        options["event_scrubber"] = _passive_event_scrubber()
    return options


def _passive_event_scrubber() -> Any:
    """sentry-sdk's event scrubber with nothing to scrub: it would replace the values of
    the names it knows with ``[Filtered]`` before ``before_send``, where the adapter's
    scrubber must learn them to sweep them from the rest of the event."""
    from sentry_sdk.scrubber import EventScrubber

    empty: dict[str, Any] = {"denylist": []}
    if "pii_denylist" in inspect.signature(EventScrubber).parameters:
        empty["pii_denylist"] = []
    return EventScrubber(**empty)


def _integrations(tracing: bool) -> list[Any]:
    """The integrations we enable: none of those that run per request, unless tracing."""
    from sentry_sdk.integrations.atexit import AtexitIntegration
    from sentry_sdk.integrations.dedupe import DedupeIntegration
    from sentry_sdk.integrations.excepthook import ExcepthookIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.modules import ModulesIntegration

    logging_options: dict[str, Any] = {"level": logging.INFO, "event_level": logging.ERROR}
    if "sentry_logs_level" in inspect.signature(LoggingIntegration).parameters:
        logging_options["sentry_logs_level"] = None
    chosen: list[Any] = [
        LoggingIntegration(**logging_options),
        DedupeIntegration(),
        AtexitIntegration(),
        ExcepthookIntegration(),
        ModulesIntegration(),
    ]
    if tracing:
        from sentry_sdk.integrations.flask import FlaskIntegration

        chosen.append(FlaskIntegration(transaction_style="url"))
    return chosen


def _traces_sampler(rate: float, follow_parent: bool) -> Callable[[dict[str, Any]], float]:
    """The configured rate; an incoming ``sentry-trace`` decision only if trusted (else any
    caller could have every one of its requests traced). The app's own endpoints are
    dropped per app by the per-request step."""

    def sampler(context: dict[str, Any]) -> float:
        if follow_parent:
            parent = context.get("parent_sampled")
            if parent is not None:
                return float(parent)
        return rate

    return sampler
