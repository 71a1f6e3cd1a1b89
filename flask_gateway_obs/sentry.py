"""Sentry error reporting: a thin adapter over ``sentry_sdk``.

Set up by ``init_app`` only when a DSN is configured (``GATEWAY_OBS_SENTRY_DSN``, else
the ``SENTRY_DSN`` environment variable); otherwise every helper here is a cheap no-op
and ``sentry_sdk`` is not even imported.

How it stays cheap per request: nothing runs per request. Errors reach Sentry through
the extension's error handler (one listener in ``state.error_listeners``), and the
request's context (request ID tag, route as transaction, user, headers, query, body)
is added by one event processor that runs only when an event is really being sent.
sentry-sdk's Flask integration, which wraps every request, is enabled only when
tracing is on. The logging integration keeps the extension's own loggers (the access
log among them) out of breadcrumbs.

How no secret leaves the process: every event, transaction and breadcrumb passes
through :class:`Scrubber`, which fails closed (if it raises, the event is dropped).

``sentry_sdk`` keeps one client per process. The first configuration becomes that
global client (unless the application initialised Sentry itself, which is left alone);
a second app with the same configuration shares it; a second app with a different
configuration gets a client of its own, used for everything this module captures for
that app. Events that sentry-sdk captures on its own (log records at ERROR, uncaught
exceptions outside requests) go to the global client.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import inspect
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flask import Flask, current_app, has_app_context, has_request_context, request
from werkzeug.exceptions import HTTPException

from .config import ConfigError, Keys, Settings
from .errors import ErrorInfo
from .logs import (
    ACCESS_LOGGER_NAME,
    LOGGER_NAME,
    REDACTED,
    Redactor,
    RequestContext,
    current_request,
    mask_url_credentials,
)

if TYPE_CHECKING:
    from .extension import ObsState

__all__ = [
    "EVENT_ID_MEMBER",
    "EXTENSION_KEY",
    "Scrubber",
    "SentryReporter",
    "add_secret",
    "after_fork",
    "capture_exception",
    "capture_message",
    "flush",
    "init_app",
    "set_user",
    "shutdown",
]

#: Where the reporter lives: ``app.extensions[EXTENSION_KEY]``.
EXTENSION_KEY = "gateway_obs_sentry"
#: The problem+json member that carries the id of the event reported for an error.
EVENT_ID_MEMBER = "sentry_event_id"
#: ``mechanism.type`` of the events this module captures.
MECHANISM = "flask_gateway_obs"

#: Fragments scrubbed in events on top of :data:`logs.SECRET_FRAGMENTS`.
SENTRY_FRAGMENTS: tuple[str, ...] = ("auth", "pwd", "csrf", "xsrf", "jwt", "bearer")
#: Keys (lower-case, exact) that hold IP addresses: scrubbed unless PII is enabled, like
#: any key containing ``email``.
PII_KEYS = frozenset(
    {
        "x-forwarded-for",
        "x_forwarded_for",
        "http_x_forwarded_for",
        "x-real-ip",
        "x_real_ip",
        "http_x_real_ip",
        "forwarded",
        "http_forwarded",
        "cf-connecting-ip",
        "true-client-ip",
        "x-client-ip",
        "remote_addr",
        "ip_address",
    }
)
#: A secret value seen in the request is also removed wherever else it appears
#: (a ``repr`` of the request in a local variable, an exception text), if this long.
MIN_SWEPT_LENGTH = 6
_BODY_LIMITS: dict[str, int | None] = {"never": 0, "small": 10**3, "medium": 10**4, "always": None}
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_SOURCE_KEYS = frozenset({"pre_context", "context_line", "post_context"})
_SECRETS_HINT = "flask_gateway_obs_secrets"
_MAX_DEPTH = 64
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^:@/\s]+@")
_AUTH_SCHEMES = r"(?:bearer|basic|token|digest|apikey)\s+"
_AUTH_SCHEME = re.compile(_AUTH_SCHEMES, re.IGNORECASE).fullmatch

_log = logging.getLogger(__name__)

# --- process-wide state (sentry_sdk is process-global) --------------------------------------


class _Binding:
    """One ``sentry_sdk`` client and the options it was made from."""

    __slots__ = ("client", "is_global", "options")

    def __init__(self, client: Any, options: dict[str, Any], is_global: bool) -> None:
        self.client = client
        self.options = options
        self.is_global = is_global


_lock = threading.Lock()
_bindings: dict[tuple[Any, ...], _Binding] = {}
_reporters: list[SentryReporter] = []
_pid = 0
_process_hooks = False
_foreign_warned = False

#: The user set with :func:`set_user`, tied to the request it was set in.
_request_user: contextvars.ContextVar[tuple[RequestContext, dict[str, Any]] | None] = (
    contextvars.ContextVar("flask_gateway_obs_sentry_user", default=None)
)


# --- scrubbing ----------------------------------------------------------------------------


class Scrubber:
    """Removes secrets from events, transactions and breadcrumbs; fails closed.

    - values of keys whose name contains a secret fragment (``logs.SECRET_FRAGMENTS``,
      :data:`SENTRY_FRAGMENTS` and ``extra_fragments``), at any depth, lists included:
      headers, cookies, query parameters, bodies, local variables, breadcrumb data, extra;
    - IP addresses and IP headers unless ``send_default_pii``; the user is reduced to its id;
    - in every string: credentials in URLs (``scheme://user:pass@``, ``scheme://token@``),
      ``key=value`` / ``key: value`` pairs whose key looks secret (``Authorization: Bearer``,
      ``password=...`` in a DSN or log message, ``'token': '...'`` in a ``repr``), and the
      secret values themselves wherever they were seen in this event or its request.

    :param extra_fragments: further key fragments to treat as secret.
    :param send_default_pii: keep IP addresses and the user's other fields.
    :param user_hook: ``(event, hint) -> event | None`` run after scrubbing.
    """

    def __init__(
        self,
        extra_fragments: Iterable[str] = (),
        send_default_pii: bool = False,
        user_hook: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        self.redactor = Redactor((*SENTRY_FRAGMENTS, *extra_fragments))
        self.send_default_pii = send_default_pii
        self.user_hook = user_hook
        fragments = "|".join(
            re.escape(f) for f in sorted(self.redactor.fragments, key=len, reverse=True)
        )
        # Most strings hold no secret-looking name: a search for the bare fragments is
        # much cheaper than the full pattern, whose leading [\w.-]* backtracks.
        self._fragment = re.compile(fragments, re.IGNORECASE).search
        self._assignment = re.compile(
            rf"(?P<key>[\w.-]*(?:{fragments})[\w.-]*)"
            rf"(?P<sep>['\"]?\s*[=:]\s*(?:['\"]\s*)?(?:{_AUTH_SCHEMES})?"
            rf"|['\"]\s*,\s*['\"](?:{_AUTH_SCHEMES})?)"
            r"(?!\[REDACTED\])(?P<value>[^\s'\"&,;<>)}\]]+)",
            re.IGNORECASE,
        )

    # the hooks given to sentry_sdk.init -------------------------------------------------

    def before_send(self, event: Any, hint: Any) -> Any:
        """``before_send``: drop duplicates, scrub, run the user's hook; ``None`` drops."""
        try:
            if _is_duplicate(event, hint):
                return None
            event = self.scrub_event(event, hint)
            if self.user_hook is not None:
                event = self.user_hook(event, hint)
            return event
        except Exception:  # fail closed: an event we could not scrub is not sent
            _log.warning("Sentry event dropped: scrubbing failed", exc_info=True)
            return None

    def before_send_transaction(self, event: Any, hint: Any) -> Any:
        """``before_send_transaction``: scrub the transaction and its spans."""
        try:
            return self.scrub_event(event, hint)
        except Exception:
            _log.warning("Sentry transaction dropped: scrubbing failed", exc_info=True)
            return None

    def before_breadcrumb(self, crumb: Any, hint: Any) -> Any:
        """``before_breadcrumb``: keep our own loggers out; scrub the rest."""
        try:
            category = crumb.get("category")
            if isinstance(category, str) and category.startswith(ACCESS_LOGGER_NAME):
                return None
            return self._clean(crumb, None, 0, False)
        except Exception:
            return None

    # the work -------------------------------------------------------------------------

    def scrub_event(self, event: Any, hint: Any) -> Any:
        """A scrubbed copy of an event (as serialised by ``sentry_sdk``)."""
        secrets: set[str] = set()
        given = hint.get(_SECRETS_HINT) if isinstance(hint, Mapping) else None
        if given:
            secrets.update(given)
        self._harvest(event, secrets, 0, False)
        sweep = _sweep_pattern(secrets)
        if not self.send_default_pii:
            user = event.get("user")
            if isinstance(user, Mapping):
                event["user"] = {"id": user["id"]} if user.get("id") is not None else {}
        return self._clean(event, sweep, 0, False)

    def is_secret_key(self, key: str) -> bool:
        """Whether values under ``key`` are scrubbed."""
        if self.redactor.is_secret(key):
            return True
        if self.send_default_pii:
            return False
        lowered = key.lower()
        return lowered in PII_KEYS or "email" in lowered

    def scrub_text(
        self, text: str, sweep: re.Pattern[str] | None = None, code: bool = False
    ) -> str:
        """``text`` with URL credentials, secret ``key=value`` pairs and ``sweep`` hits masked.

        :param code: a line of source: mask only quoted literals after a secret name.
        """
        if sweep is not None:
            text = sweep.sub(REDACTED, text)
        if "://" in text:
            text = _USERINFO.sub(r"\g<scheme>***@", mask_url_credentials(text))
        if self._fragment(text) is None:
            return text
        return self._assignment.sub(_mask_literal if code else _mask_value, text)

    def _clean(self, value: Any, sweep: re.Pattern[str] | None, depth: int, code: bool) -> Any:
        if isinstance(value, str):
            return self.scrub_text(value, sweep, code)
        if depth > _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                if depth == 0 and key == "_meta":
                    out[key] = item  # sentry's annotations: paths and lengths, no values
                elif isinstance(key, str) and self.is_secret_key(key):
                    out[key] = REDACTED
                else:
                    out[key] = self._clean(item, sweep, depth + 1, key in _SOURCE_KEYS)
            return out
        if isinstance(value, (list, tuple)):
            return [self._clean(item, sweep, depth + 1, code) for item in value]
        return value

    def _harvest(self, value: Any, secrets: set[str], depth: int, under_secret: bool) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                if depth == 0 and key == "_meta":
                    continue
                secret = under_secret or (isinstance(key, str) and self.redactor.is_secret(key))
                self._harvest(item, secrets, depth + 1, secret)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self._harvest(item, secrets, depth + 1, under_secret)
        elif under_secret:
            add_secret(secrets, value)


def add_secret(secrets: set[str], value: Any) -> None:
    """Remember ``value`` as secret text (and the token of ``Bearer <token>``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # frame variables arrive as repr()
    if len(text) < MIN_SWEPT_LENGTH or text == REDACTED or text.startswith("<"):
        return  # too short to sweep safely, already scrubbed, or an object's repr
    secrets.add(text)
    encoded = quote(text, safe="")
    if encoded != text:
        secrets.add(encoded)
    parts = text.split()
    if len(parts) == 2 and _AUTH_SCHEME(parts[0] + " ") and len(parts[1]) >= MIN_SWEPT_LENGTH:
        secrets.add(parts[1])


def _sweep_pattern(secrets: set[str]) -> re.Pattern[str] | None:
    if not secrets:
        return None
    ordered = sorted(secrets, key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in ordered))


def _mask_value(match: re.Match[str]) -> str:
    return f"{match.group('key')}{match.group('sep')}{REDACTED}"


def _mask_literal(match: re.Match[str]) -> str:
    sep = match.group("sep").rstrip()
    if sep[-1:] in ("'", '"'):
        return _mask_value(match)
    return match.group(0)


def _is_duplicate(event: Any, hint: Any) -> bool:
    """Events that another path reports too, or that are ours to leave out.

    Flask reports an error that escaped its handlers through ``got_request_exception``
    (sentry-sdk's Flask integration listens) and logs it through ``app.logger``
    (the logging integration listens) before handing it to our error handler, which
    reports it: those two copies are dropped. So are events made from the extension's
    own log records: they describe conditions already in metrics and logs.
    """
    record = hint.get("log_record") if isinstance(hint, Mapping) else None
    if record is not None:
        name = getattr(record, "name", "")
        if name == LOGGER_NAME or name.startswith(LOGGER_NAME + "."):
            return True
        if getattr(record, "funcName", None) == "log_exception" and _reported_here():
            return True
    exception = event.get("exception")
    values = exception.get("values") if isinstance(exception, Mapping) else None
    if values:
        for value in values:
            mechanism = value.get("mechanism") if isinstance(value, Mapping) else None
            if isinstance(mechanism, Mapping) and mechanism.get("type") == "flask":
                return _reported_here()
    return False


def _reported_here() -> bool:
    """Whether the current request's app reports its errors through this module."""
    return has_request_context() and isinstance(
        current_app.extensions.get(EXTENSION_KEY), SentryReporter
    )


# --- the per-app reporter -----------------------------------------------------------------


class SentryReporter:
    """Reports one app's errors; stored at ``app.extensions["gateway_obs_sentry"]``."""

    def __init__(self, state: ObsState, key: tuple[Any, ...], scrubber: Scrubber) -> None:
        settings = state.settings
        self.state = state
        self.key = key
        self.scrubber = scrubber
        self.send_default_pii = settings.sentry_send_default_pii
        self.report_4xx = settings.sentry_report_4xx
        self.report_operational_5xx = settings.sentry_report_operational_5xx
        self.event_id_in_body = settings.sentry_event_id_in_body
        self.body_limit = _BODY_LIMITS[settings.sentry_max_request_body]
        self.tracing = settings.sentry_traces_sample_rate > 0

    @property
    def binding(self) -> _Binding | None:
        """The client this app reports to (``None`` after :func:`shutdown`)."""
        return _bindings.get(self.key)

    @property
    def sdk_fills_request(self) -> bool:
        """sentry-sdk's Flask integration adds the request itself (tracing on)."""
        binding = self.binding
        return self.tracing and binding is not None and binding.is_global

    # error listener -------------------------------------------------------------------

    def should_report(self, info: ErrorInfo) -> bool:
        """Bugs always; operational 5xx and 4xx as configured."""
        if not info.operational:
            return True
        if info.status >= 500:
            return self.report_operational_5xx
        return self.report_4xx

    def on_error(self, info: ErrorInfo) -> None:
        """The error listener: report once, put the event id in the problem body."""
        if not self.should_report(info):
            return
        error = info.error
        cause = (
            getattr(error, "original_exception", None) if isinstance(error, HTTPException) else None
        )
        bug = not info.operational
        event_id = self.capture_error(
            cause if isinstance(cause, BaseException) else error,
            handled=not bug,
            level="error" if bug or info.status >= 500 else "warning",
            tags={"status_code": str(info.status), "error_code": info.code},
        )
        if event_id is not None and self.event_id_in_body:
            info.extensions[EVENT_ID_MEMBER] = event_id

    # capture --------------------------------------------------------------------------

    def capture_error(
        self,
        error: BaseException,
        *,
        handled: bool = True,
        level: str | None = None,
        tags: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Send ``error``; the event id, or ``None`` if nothing was sent."""
        return _capture_error(self.binding, error, handled, level, tags, context)

    # event processor (only when an event is sent) ------------------------------------

    def enrich(self, event: Any, hint: Any) -> Any:
        """Add the request's context to an event captured during one of its requests."""
        ctx = current_request.get()
        tags = event.get("tags")
        if not isinstance(tags, dict):
            tags = event["tags"] = {}
        if ctx is not None:
            tags.setdefault("request_id", ctx.request_id)
            if ctx.trace_id is not None:
                tags.setdefault("trace_id", ctx.trace_id)
        if event.get("type") == "transaction":
            return event
        rule = request.url_rule
        if rule is not None:
            event["transaction"] = rule.rule
            event["transaction_info"] = {"source": "route"}
        found = _request_user.get()
        if found is not None and ctx is not None and found[0] is ctx:
            event["user"] = dict(found[1])
        secrets: set[str] = set()
        try:
            data = self.request_data(secrets)
        except Exception:  # an unreadable body must not cost the tags and the filtering
            _log.debug("Sentry request context failed", exc_info=True)
            data = {"url": request.base_url, "method": request.method}
        if not self.sdk_fills_request:
            event["request"] = data
        if self.send_default_pii and request.remote_addr:
            user = event.get("user")
            if not isinstance(user, dict):
                user = event["user"] = {}
            user.setdefault("ip_address", request.remote_addr)
        if isinstance(hint, dict):
            hint[_SECRETS_HINT] = secrets
        if ctx is not None:
            _drop_older_breadcrumbs(event, ctx)
        return event

    def request_data(self, secrets: set[str]) -> dict[str, Any]:
        """The request as Sentry's ``request`` interface, secrets already redacted.

        Every secret value met is added to ``secrets`` so that the scrubber removes it
        wherever else it appears in the event.
        """
        scrubber = self.scrubber
        req = request
        data: dict[str, Any] = {"url": req.base_url, "method": req.method}
        headers: dict[str, str] = {}
        for name, value in req.headers.items():
            if scrubber.is_secret_key(name):
                headers[name] = REDACTED
                add_secret(secrets, value)
            else:
                headers[name] = value
        data["headers"] = headers
        for value in req.cookies.values():
            add_secret(secrets, value)
        if req.view_args:
            for name, value in req.view_args.items():
                if scrubber.is_secret_key(name):
                    add_secret(secrets, value)
        pairs = []
        for name, value in req.args.items(multi=True):
            if scrubber.is_secret_key(name):
                add_secret(secrets, value)
                pairs.append(f"{quote(name)}={REDACTED}")
            else:
                pairs.append(f"{quote(name)}={quote(value)}")
        if pairs:
            data["query_string"] = "&".join(pairs)
        body = self._body()
        if body is not None:
            scrubber._harvest(body, secrets, 1, False)
            data["data"] = scrubber._clean(body, None, 1, False)
        if self.send_default_pii and req.remote_addr:
            data["env"] = {"REMOTE_ADDR": req.remote_addr}
        return data

    def _body(self) -> Any:
        limit = self.body_limit
        req = request
        length = req.content_length
        if limit == 0 or not length or (limit is not None and length > limit):
            return None
        if req.is_json:
            return req.get_json(silent=True)
        if req.mimetype in _FORM_TYPES:
            form: dict[str, Any] = {}
            for name in req.form:
                values = req.form.getlist(name)
                form[name] = values[0] if len(values) == 1 else values
            for name in req.files:
                form[name] = "[file]"
            return form
        return None


def _drop_older_breadcrumbs(event: Any, ctx: RequestContext) -> None:
    # Breadcrumbs live on sentry_sdk's isolation scope, which a thread keeps from one
    # request to the next; keep only those of this request.
    crumbs = event.get("breadcrumbs")
    values = crumbs.get("values") if isinstance(crumbs, dict) else None
    if not values:
        return
    since = time.time() - (time.perf_counter() - ctx.start)
    kept = []
    for crumb in values:
        stamp = crumb.get("timestamp") if isinstance(crumb, dict) else None
        seconds = stamp.timestamp() if isinstance(stamp, datetime) else None
        if seconds is None or seconds >= since:
            kept.append(crumb)
    crumbs["values"] = kept


def _event_processor(event: Any, hint: Any) -> Any:
    """Global event processor: adds the request's context, only when an event is sent."""
    if not has_request_context():
        return event
    reporter = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(reporter, SentryReporter):
        return event
    return reporter.enrich(event, hint)


# --- capture --------------------------------------------------------------------------------


def _capture_error(
    binding: _Binding | None,
    error: BaseException,
    handled: bool,
    level: str | None,
    tags: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
) -> str | None:
    if binding is None:
        return None
    try:
        from sentry_sdk.utils import event_from_exception

        event, hint = event_from_exception(
            error,
            client_options=binding.client.options,
            mechanism={"type": MECHANISM, "handled": handled},
        )
        if level is not None:
            event["level"] = level  # type: ignore[typeddict-item]
        return _send(binding, event, hint, tags, context)
    except Exception:  # reporting must never break the request
        _log.debug("Sentry capture failed", exc_info=True)
        return None


def _send(
    binding: _Binding,
    event: Any,
    hint: Any,
    tags: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
) -> str | None:
    import sentry_sdk

    if _pid != os.getpid():
        after_fork()
    client = binding.client
    with sentry_sdk.new_scope() as scope:
        if sentry_sdk.get_client() is not client:
            scope.set_client(client)
        for name, value in (tags or {}).items():
            scope.set_tag(name, value)
        for name, value in (context or {}).items():
            scope.set_extra(name, value)
        return scope.capture_event(event, hint=hint)


def _current_binding() -> _Binding | None:
    if has_app_context():
        reporter = current_app.extensions.get(EXTENSION_KEY)
        if isinstance(reporter, SentryReporter):
            return reporter.binding
    for binding in _bindings.values():
        if binding.is_global:
            return binding
    return next(iter(_bindings.values()), None)


def _current_pii() -> bool:
    if has_app_context():
        reporter = current_app.extensions.get(EXTENSION_KEY)
        if isinstance(reporter, SentryReporter):
            return reporter.send_default_pii
    return False


def capture_exception(error: BaseException | None = None, **context: Any) -> str | None:
    """Report ``error`` (default: the exception being handled) to Sentry.

    Inside a request the event carries the request ID, route, user and request; keyword
    arguments are attached as extra data (scrubbed like the rest).

    :returns: the event id, or ``None`` if nothing was sent (Sentry off, no exception,
        sampled out, dropped by a filter).
    """
    if not _bindings:
        return None
    if error is None:
        error = sys.exc_info()[1]
        if error is None:
            return None
    return _capture_error(_current_binding(), error, True, None, None, context)


def capture_message(message: str, level: str = "info", **context: Any) -> str | None:
    """Report ``message`` at ``level`` (``debug`` ... ``fatal``) to Sentry.

    :returns: the event id, or ``None`` if nothing was sent.
    """
    if not _bindings:
        return None
    binding = _current_binding()
    if binding is None:
        return None
    try:
        event = {"message": message, "level": level}
        return _send(binding, event, None, None, context)
    except Exception:
        _log.debug("Sentry capture failed", exc_info=True)
        return None


def set_user(user: Any) -> None:
    """Attach ``user`` to the events of the current request (outside one: of this context).

    ``user`` is a dict or an object with an ``id`` (or Flask-Login's ``get_id()``), or the
    id itself; ``None`` clears it. Only the id is kept unless
    ``GATEWAY_OBS_SENTRY_SEND_DEFAULT_PII`` is on, which adds ``username``, ``email`` and
    ``ip_address``. Costs a small dict per call; nothing without a DSN.
    """
    if not _bindings:
        return
    data = _user_data(user, _current_pii())
    ctx = current_request.get()
    if ctx is not None:
        _request_user.set((ctx, data) if data else None)
        return
    import sentry_sdk

    sentry_sdk.get_isolation_scope().set_user(data or None)


_USER_FIELDS = ("id", "username", "email", "ip_address")


def _user_data(user: Any, pii: bool) -> dict[str, Any]:
    if user is None:
        return {}
    if isinstance(user, (str, int)) and not isinstance(user, bool):
        return {"id": str(user)}
    fields: dict[str, Any] = {}
    for name in _USER_FIELDS if pii else ("id",):
        if isinstance(user, Mapping):
            value = user.get(name)
        else:
            value = getattr(user, name, None)
            if value is None and name == "id" and callable(getattr(user, "get_id", None)):
                value = user.get_id()
        if value is not None:
            fields[name] = str(value)
    return fields


# --- set-up ----------------------------------------------------------------------------------


def resolve_dsn(settings: Settings) -> str | None:
    """``GATEWAY_OBS_SENTRY_DSN``, else the ``SENTRY_DSN`` environment variable."""
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

    :raises ConfigError: if the DSN is not a valid Sentry DSN.
    """
    settings = state.settings
    dsn = resolve_dsn(settings)
    if dsn is None:
        return None
    _check_dsn(dsn, settings)
    fragments = (*settings.log_redact_keys, *settings.sentry_denylist)
    scrubber = Scrubber(fragments, settings.sentry_send_default_pii, settings.sentry_before_send)
    environment = resolve_environment(app, settings)
    release = resolve_release(settings)
    extra = dict(settings.sentry_options or {})
    key = (
        dsn,
        environment,
        release,
        settings.sentry_sample_rate,
        settings.sentry_traces_sample_rate,
        settings.sentry_send_default_pii,
        settings.sentry_include_locals,
        settings.sentry_max_request_body,
        settings.sentry_queue_size,
        settings.sentry_shutdown_timeout,
        tuple(sorted(scrubber.redactor.fragments)),
        settings.sentry_before_send,
        repr(sorted(extra.items())),
    )

    def options() -> dict[str, Any]:
        return _client_options(dsn, environment, release, settings, scrubber, extra)

    _obtain(key, options)
    reporter = SentryReporter(state, key, scrubber)
    _reporters.append(reporter)
    state.error_listeners.append(reporter.on_error)
    app.extensions[EXTENSION_KEY] = reporter
    return reporter


def _check_dsn(dsn: str, settings: Settings) -> None:
    from sentry_sdk.utils import BadDsn, Dsn

    try:
        Dsn(dsn)
    except BadDsn:
        key = Keys.SENTRY_DSN if settings.sentry_dsn else "SENTRY_DSN (environment)"
        raise ConfigError(
            [(key, mask_url_credentials(dsn), "a Sentry DSN (https://key@host/project-id)")]
        ) from None


def _client_options(
    dsn: str,
    environment: str,
    release: str | None,
    settings: Settings,
    scrubber: Scrubber,
    extra: dict[str, Any],
) -> dict[str, Any]:
    from sentry_sdk.consts import DEFAULT_OPTIONS

    tracing = settings.sentry_traces_sample_rate > 0
    integrations = [*_integrations(tracing), *extra.pop("integrations", [])]
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
        max_request_body_size=settings.sentry_max_request_body,
        transport_queue_size=settings.sentry_queue_size,
        shutdown_timeout=settings.sentry_shutdown_timeout,
        before_send=scrubber.before_send,
        before_send_transaction=scrubber.before_send_transaction,
        before_breadcrumb=scrubber.before_breadcrumb,
    )
    if tracing:
        options["traces_sampler"] = _traces_sampler(settings.sentry_traces_sample_rate)
    if settings.sentry_send_default_pii:
        if "data_collection" in DEFAULT_OPTIONS:
            # newer sentry-sdk deprecates send_default_pii in favour of this
            options["data_collection"] = {
                "user_info": True,
                "stack_frame_variables": settings.sentry_include_locals,
                "http_bodies": ["incoming_request"]
                if settings.sentry_max_request_body != "never"
                else [],
            }
        else:
            options["send_default_pii"] = True
    return options


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


def _traces_sampler(rate: float) -> Callable[[dict[str, Any]], float]:
    def sampler(context: dict[str, Any]) -> float:
        environ = context.get("wsgi_environ") or {}
        path = environ.get("PATH_INFO")
        if path is not None and any(path in r.state.internal_paths for r in _reporters):
            return 0.0  # health probes and metrics scrapes are not worth a trace
        parent = context.get("parent_sampled")
        return float(parent) if parent is not None else rate

    return sampler


def _obtain(key: tuple[Any, ...], make_options: Callable[[], dict[str, Any]]) -> _Binding:
    """The client for ``key``: the existing one, or a new one (global if none is)."""
    global _pid, _foreign_warned
    import sentry_sdk

    with _lock:
        _install_process_hooks()
        binding = _bindings.get(key)
        if binding is not None:
            return binding
        options = make_options()
        current = sentry_sdk.get_client()
        ours = any(b.client is current for b in _bindings.values())
        if current.is_active() and not ours and not _foreign_warned:
            _foreign_warned = True
            _log.warning(
                "Sentry was initialised outside flask-gateway-obs; it is left as it is, and "
                "the extension reports its apps' errors through a client of its own"
            )
        if any(b.options["dsn"] == options["dsn"] for b in _bindings.values()):
            _log.info("a second Sentry configuration for the same DSN gets a client of its own")
        is_global = not current.is_active()
        if is_global:
            sentry_sdk.init(**options)
            client = sentry_sdk.get_client()
        else:
            client = sentry_sdk.Client(**options)
        # keep what sentry_sdk guessed (release from git, ...) for a re-creation after fork
        options["release"] = client.options.get("release")
        binding = _Binding(client, options, is_global)
        _bindings[key] = binding
        _pid = os.getpid()
        return binding


def _install_process_hooks() -> None:
    global _process_hooks
    if _process_hooks:
        return
    from sentry_sdk.integrations import logging as sentry_logging
    from sentry_sdk.scope import add_global_event_processor

    add_global_event_processor(_event_processor)
    # The sender thread's first request resolves the "idna" codec (importing
    # encodings.idna and stringprep). If a server forks (gunicorn --preload) while that
    # thread is inside the import, the child inherits the module's import lock held and
    # hangs on its first request; importing them here, before any fork, avoids it.
    codecs.lookup("idna")
    for name in (ACCESS_LOGGER_NAME, LOGGER_NAME, __name__, "gunicorn.access"):
        sentry_logging.ignore_logger(name)
        ignore_sentry_logs = getattr(sentry_logging, "ignore_logger_for_sentry_logs", None)
        if ignore_sentry_logs is not None:
            ignore_sentry_logs(name)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    _process_hooks = True


def _after_fork_in_child() -> None:
    with contextlib.suppress(Exception):  # a forked child must start whatever happens here
        after_fork()


# --- process lifecycle ------------------------------------------------------------------


def after_fork() -> bool:
    """Give this process clients of its own after a fork; a no-op if it has them already.

    A forked child inherits the parent's transport: its connection pool (sockets the
    parent also uses) and a queue whose sender thread did not survive the fork. This
    runs on its own after ``os.fork()`` (gunicorn's ``preload_app``, ``multiprocessing``);
    gunicorn's ``post_fork`` hook may also call it.

    :returns: whether clients were re-created.
    """
    global _lock, _pid
    if not _bindings or _pid == os.getpid():
        return False
    import sentry_sdk

    _lock = threading.Lock()  # the parent's may have been held by a thread that is gone
    for binding in _bindings.values():
        client = sentry_sdk.Client(**binding.options)
        if binding.is_global:
            sentry_sdk.get_global_scope().set_client(client)
        binding.client = client
    _pid = os.getpid()
    return True


def flush(timeout: float | None = None) -> None:
    """Wait until pending events are sent, at most ``timeout`` seconds in all.

    Default: the largest ``GATEWAY_OBS_SENTRY_SHUTDOWN_TIMEOUT`` configured. For
    gunicorn's ``worker_exit`` hook; at interpreter exit sentry-sdk flushes on its own.
    """
    if not _bindings:
        return
    bindings = list(_bindings.values())
    if timeout is None:
        timeout = max(float(b.options["shutdown_timeout"]) for b in bindings)
    deadline = time.monotonic() + timeout
    for binding in bindings:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            binding.client.flush(timeout=remaining)
        except Exception:
            _log.debug("Sentry flush failed", exc_info=True)


def shutdown(timeout: float | None = None) -> None:
    """Flush (at most ``timeout`` seconds) and close every client this module made.

    Apps set up before keep working with Sentry off. Tests call it between tests.
    """
    global _foreign_warned
    if not _bindings:
        return
    import sentry_sdk

    flush(timeout)
    with _lock:
        for binding in _bindings.values():
            try:
                binding.client.close(timeout=0)
            except Exception:
                _log.debug("Sentry close failed", exc_info=True)
            if binding.is_global and sentry_sdk.get_client() is binding.client:
                sentry_sdk.get_global_scope().set_client(None)
        _bindings.clear()
        _reporters.clear()
        _foreign_warned = False
    scope = sentry_sdk.get_isolation_scope()
    scope.clear_breadcrumbs()
    scope.set_user(None)
    _request_user.set(None)
