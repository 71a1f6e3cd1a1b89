"""Sentry error reporting: a thin adapter over ``sentry_sdk``.

Set up by ``init_app`` only when a DSN is configured (``GATEWAY_OBS_SENTRY_DSN``, else
the ``SENTRY_DSN`` environment variable; ``"off"`` or ``""`` keeps it off); otherwise
every helper here is a cheap no-op and ``sentry_sdk`` is not even imported.

How it stays cheap per request: errors reach Sentry through the extension's error
handler (one listener in ``state.error_listeners``), and the request's context (request
ID tag, route as transaction, user, headers, query, body) is added by one event
processor that runs only when an event is really being sent. Per request there is one
small observer step (two calls and a few attribute reads) that gives each request a
clean sentry-sdk isolation scope, so tags, user and breadcrumbs set through
``sentry_sdk`` in one request never show up on the next one served by the same thread.
sentry-sdk's Flask integration, which wraps every request, is enabled only when
tracing is on. The logging integration keeps the extension's own loggers (the access
log among them) out of breadcrumbs and events.

How no secret leaves the process: every event, transaction and breadcrumb passes
through :class:`Scrubber`, which fails closed (if it raises, the event is dropped).

``sentry_sdk`` keeps one client per process. The first configuration becomes that
global client (unless the application initialised Sentry itself, which is left alone);
a second app with the same configuration shares it; a second app with a different
configuration gets a client of its own, used for everything this module captures for
that app. Events that sentry-sdk captures on its own (log records at ERROR) during a
request of that second app are handed over to its client and scrubbed by its rules.
"""

from __future__ import annotations

import atexit
import codecs
import contextvars
import inspect
import logging
import os
import re
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from flask import Flask, current_app, has_app_context, has_request_context, request
from werkzeug.exceptions import HTTPException

from .config import SENTRY_OFF, ConfigError, Keys, Settings
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
    from flask import Request

    from .core.state import ObsState

__all__ = [
    "EVENT_ID_MEMBER",
    "EXTENSION_KEY",
    "PII_FRAGMENTS",
    "Scrubber",
    "SentryReporter",
    "add_secret",
    "after_fork",
    "capture_exception",
    "capture_message",
    "flush",
    "init_app",
    "resolve_dsn",
    "set_user",
    "shutdown",
]

#: Where the reporter lives: ``app.extensions["gateway_obs_sentry"]``.
EXTENSION_KEY = "gateway_obs_sentry"
#: The problem+json member that carries the id of the event reported for an error.
EVENT_ID_MEMBER = "sentry_event_id"
#: ``mechanism.type`` of the events this module captures.
MECHANISM = "flask_gateway_obs"

#: Fragments scrubbed in events on top of :data:`logs.SECRET_FRAGMENTS`.
SENTRY_FRAGMENTS: tuple[str, ...] = ("auth", "pwd", "csrf", "xsrf", "jwt", "bearer")
#: Fragments of names (lower-case, ``_`` read as ``-``) whose values are IP addresses
#: or e-mails: scrubbed unless PII is enabled (``X-Forwarded-For``, ``Forwarded``,
#: ``X-Real-IP``, ``CF-Connecting-IP``, ``X-Originating-IP``, ``REMOTE_ADDR``, ...).
PII_FRAGMENTS: tuple[str, ...] = (
    "forwarded",
    "client-ip",
    "clientip",
    "client-addr",
    "real-ip",
    "realip",
    "originating-ip",
    "connecting-ip",
    "remote-addr",
    "remoteaddr",
    "ip-address",
    "ipaddress",
    "external-address",
    "email",
)
#: A secret value seen in the request is also removed wherever else it appears
#: (a ``repr`` of the request in a local variable, an exception text), if this long.
MIN_SWEPT_LENGTH = 6
_BODY_LIMITS: dict[str, int | None] = {"never": 0, "small": 10**3, "medium": 10**4, "always": None}
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_SOURCE_KEYS = frozenset({"pre_context", "context_line", "post_context"})
#: What a transaction keeps of the request (no body, cookies, query or environment).
_TRANSACTION_REQUEST_KEYS = ("method", "headers")
_SECRETS_HINT = "flask_gateway_obs_secrets"
_REPORTER_HINT = "flask_gateway_obs_reporter"
_RESENT_HINT = "flask_gateway_obs_resent"
_MAX_DEPTH = 64
_MAX_HELD = 64
_MAX_CACHED = 2048
_MAX_PASSES = 3
_AUTH_SCHEMES = r"(?:bearer|basic|token|digest|apikey)\s+"
_AUTH_SCHEME = re.compile(_AUTH_SCHEMES, re.IGNORECASE).fullmatch
_URL_SECRET = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^:@/\s]*:(?P<password>[^@\s]+)|(?P<user>[^:@/\s]+))@"
)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^:@/\s]+@")
# A %-style conversion of a log message template (``%s``, ``%(name)r``, ``%5.2f``, ``%%``).
_PERCENT_SPEC = re.compile(
    r"%(?:\((?P<name>[^)]*)\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?"
    r"(?P<type>[diouxXeEfFgGcrsa%])"
)
_CLOSERS = {")": "(", "]": "[", "}": "{", ">": "<"}
_TOKEN_CHARS = frozenset("_+/=~")
_ALL = ("*",)  # every argument of a log message is secret

_log = logging.getLogger(__name__)

# --- process-wide state (sentry_sdk is process-global) --------------------------------------


_lock = threading.Lock()
_bindings: dict[tuple[Any, ...], _Binding] = {}
#: The live reporters, weakly: an app that is gone is not kept alive by this module.
_reporters: weakref.WeakSet[SentryReporter] = weakref.WeakSet()
_pid = 0
_process_hooks = False
_foreign_warned = False

#: The user set with :func:`set_user`, tied to the request it was set in.
_request_user: contextvars.ContextVar[tuple[RequestContext, dict[str, Any]] | None] = (
    contextvars.ContextVar("flask_gateway_obs_sentry_user", default=None)
)


class _Held:
    """A log record's exception event held back until the request shows whether the
    error handler reports that exception itself (then the two are merged)."""

    __slots__ = ("binding", "error", "event", "hint")

    def __init__(self, binding: _Binding, error: BaseException, event: Any, hint: Any) -> None:
        self.binding = binding
        self.error = error
        self.event = event
        self.hint = hint


#: Events held per request (see :class:`_Held`); empty almost always.
_held: dict[RequestContext, list[_Held]] = {}


# --- scrubbing ----------------------------------------------------------------------------


class Scrubber:
    """Removes secrets from events, transactions and breadcrumbs; fails closed.

    - values of keys whose name contains a secret fragment (``logs.SECRET_FRAGMENTS``,
      :data:`SENTRY_FRAGMENTS` and ``extra_fragments``), at any depth, lists included:
      headers, cookies, query parameters, bodies, local variables, breadcrumb data, extra;
    - IP addresses, IP headers and e-mails (:data:`PII_FRAGMENTS`) unless
      ``send_default_pii``; the user is reduced to its id;
    - the arguments of a log message that follow a secret-looking word in its template
      (``"api_key=%s"``, ``"invalid token %s"``, ``"Bearer %s"``); the arguments themselves
      are never sent, only the message with them masked;
    - in every string: credentials in URLs (``scheme://user:pass@``, ``scheme://token@``),
      ``key=value`` / ``key: value`` pairs whose key looks secret (quoted values whole,
      ``Authorization: Bearer ...``, ``password=...`` in a DSN or log message,
      ``'token': '...'`` in a ``repr``), a token-like word right after a secret-looking
      word (``invalid token 3fa9c1...``, ``Bearer ...``), and the secret values themselves
      wherever they were seen in this event or its request, mapping keys included. Every
      value masked in one place is then removed everywhere else in the event.

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
        self._pii_verdicts: dict[str, bool] = {}
        self._slot_cache: dict[str, tuple[Any, ...]] = {}
        fragments = "|".join(
            re.escape(f) for f in sorted(self.redactor.fragments, key=len, reverse=True)
        )
        # Most strings hold no secret-looking name: a search for the bare fragments is
        # much cheaper than the full pattern, whose leading [\w.-]* backtracks.
        self._fragment = re.compile(fragments, re.IGNORECASE).search
        self._assignment = re.compile(
            rf"(?P<key>[\w.-]*(?:{fragments})[\w.-]*)"
            r"(?P<sep>['\"]?\s*[=:]\s*|['\"]\s*,\s*|[ \t]+)"
            rf"(?:(?P<q>['\"])(?P<qscheme>{_AUTH_SCHEMES})?(?P<qvalue>(?:(?!(?P=q))[^\n])*)(?P=q)?"
            rf"|(?P<scheme>{_AUTH_SCHEMES})?(?P<value>[^\s'\"&]+))",
            re.IGNORECASE,
        )
        # a template's text right before a conversion that takes a secret
        self._label = re.compile(
            rf"(?:{fragments})[\w.-]*(?:['\"]?\s*[=:]\s*['\"]?|['\"]\s*,\s*['\"]|\s+)"
            rf"(?:{_AUTH_SCHEMES})?$",
            re.IGNORECASE,
        ).search

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
        """``before_send_transaction``: trim and scrub the transaction; ``None`` drops."""
        try:
            return self.scrub_transaction(event, hint)
        except Exception:
            _log.warning("Sentry transaction dropped: scrubbing failed", exc_info=True)
            return None

    def before_breadcrumb(self, crumb: Any, hint: Any) -> Any:
        """``before_breadcrumb``: keep the extension's own loggers out; mask the secret
        arguments of a log message (they are gone once the message is formatted).

        Everything else is scrubbed when an event is sent, with the event.
        """
        try:
            category = crumb.get("category")
            if isinstance(category, str) and category.startswith(LOGGER_NAME):
                return None
            record = hint.get("log_record") if hint else None
            if record is not None and record.args:
                masked = self.mask_log_args(record.msg, record.args)
                if masked is not None:
                    crumb["message"] = masked
            return crumb
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
        logentry = event.get("logentry")
        if isinstance(logentry, dict):
            event["logentry"] = self._scrub_logentry(logentry, secrets)
        if not self.send_default_pii:
            user = event.get("user")
            if isinstance(user, Mapping):
                event["user"] = {"id": user["id"]} if user.get("id") is not None else {}
        # A value masked in one place (``api_key=...`` in a message) is swept from every
        # other place too; a pass that masks nothing new is the last.
        for _ in range(_MAX_PASSES):
            found: set[str] = set()
            cleaned = self._clean(event, _sweep_pattern(secrets), 0, False, found)
            new: set[str] = set()
            for value in found:
                add_secret(new, value)
            new -= secrets
            if not new:
                return cleaned
            secrets |= new
        return self._clean(event, _sweep_pattern(secrets), 0, False, None)

    def scrub_transaction(self, event: Any, hint: Any) -> Any:
        """A transaction keeps only the method, the headers and the URL with the route
        template as its path (a raw path may carry a token), then is scrubbed."""
        req = event.get("request")
        if isinstance(req, Mapping):
            kept = {key: req[key] for key in _TRANSACTION_REQUEST_KEYS if key in req}
            url = req.get("url")
            if isinstance(url, str):
                kept["url"] = _route_url(url, event)
            event["request"] = kept
        return self.scrub_event(event, hint)

    def is_secret_key(self, key: str) -> bool:
        """Whether values under ``key`` are scrubbed."""
        if self.redactor.is_secret(key):
            return True
        if self.send_default_pii:
            return False
        verdict = self._pii_verdicts.get(key)
        if verdict is None:
            lowered = key.lower().replace("_", "-")
            verdict = any(fragment in lowered for fragment in PII_FRAGMENTS)
            if len(self._pii_verdicts) < _MAX_CACHED:
                self._pii_verdicts[key] = verdict
        return verdict

    def scrub_text(
        self,
        text: str,
        sweep: re.Pattern[str] | None = None,
        code: bool = False,
        found: set[str] | None = None,
    ) -> str:
        """``text`` with URL credentials, secret ``key=value`` pairs and ``sweep`` hits masked.

        :param code: a line of source: mask only quoted literals after a secret name.
        :param found: collects the values masked by the patterns.
        """
        if sweep is not None:
            text = sweep.sub(REDACTED, text)
        if "://" in text:
            if found is not None:
                for match in _URL_SECRET.finditer(text):
                    found.add(match["password"] or match["user"])
            text = _USERINFO.sub(r"\g<scheme>***@", mask_url_credentials(text))
        if self._fragment(text) is None:
            return text

        def mask(match: re.Match[str]) -> str:
            return _mask(match, code, found)

        return self._assignment.sub(mask, text)

    def mask_log_args(self, template: Any, args: Any) -> str | None:
        """The log message ``template % args`` with its secret arguments masked, or
        ``None`` when no argument follows a secret-looking word in the template."""
        if not isinstance(template, str) or not args:
            return None
        slots = self.secret_slots(template)
        if not slots:
            return None
        try:
            return _format_masked(template, args, slots)
        except Exception:  # a message that does not format: its template says enough
            return template

    def secret_slots(self, template: str) -> tuple[Any, ...]:
        """Indexes (or names) of the arguments of ``template`` that are secret (cached)."""
        slots = self._slot_cache.get(template)
        if slots is None:
            slots = self._find_slots(template)
            if len(self._slot_cache) < _MAX_CACHED:
                self._slot_cache[template] = slots
        return slots

    def _find_slots(self, template: str) -> tuple[Any, ...]:
        if "%" not in template:
            return ()
        slots: list[Any] = []
        index = 0
        last = 0
        for match in _PERCENT_SPEC.finditer(template):
            if match["type"] == "%":
                last = match.end()
                continue
            if "*" in match.group(0):
                return _ALL  # widths taken from the arguments: too clever to follow
            name = match["name"]
            before = template[last : match.start()]
            if self._label(before) is not None or (
                name is not None and self.redactor.is_secret(name)
            ):
                slots.append(index if name is None else name)
            if name is None:
                index += 1
            last = match.end()
        return tuple(slots)

    def _scrub_logentry(self, logentry: dict[str, Any], secrets: set[str]) -> dict[str, Any]:
        template = logentry.get("message")
        params = logentry.get("params")
        out = {key: value for key, value in logentry.items() if key != "params"}
        if isinstance(template, str) and params:
            slots = self.secret_slots(template)
            if slots:
                for value in _slot_values(params, slots):
                    add_secret(secrets, value)
                masked = self.mask_log_args(template, params)
                if masked is not None:
                    out["formatted"] = masked
        return out

    def _clean(
        self,
        value: Any,
        sweep: re.Pattern[str] | None,
        depth: int,
        code: bool,
        found: set[str] | None,
    ) -> Any:
        if isinstance(value, str):
            return self.scrub_text(value, sweep, code, found)
        if depth > _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                if depth == 0 and key == "_meta":
                    out[key] = item  # sentry's annotations: paths and lengths, no values
                    continue
                name = key
                if isinstance(key, str):
                    # a secret can be a key too: {api_key_value: "owner"}
                    name = self.scrub_text(key, sweep, False, found)
                    if self.is_secret_key(key):
                        out[name] = REDACTED
                        continue
                out[name] = self._clean(item, sweep, depth + 1, key in _SOURCE_KEYS, found)
            return out
        if isinstance(value, (list, tuple)):
            return [self._clean(item, sweep, depth + 1, code, found) for item in value]
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


def _mask(match: re.Match[str], code: bool, found: set[str] | None) -> str:
    quoted = match["q"] is not None
    if code and not quoted:
        return match.group(0)  # source code: only literals are values
    key, sep = match["key"], match["sep"]
    if quoted:
        raw = match["qvalue"]
        value = raw
        scheme = match["qscheme"]
        tail = match.group(0)[match.end("qvalue") - match.start() :]  # the closing quote
    else:
        raw = match["value"]
        value = _trim_closers(raw)
        scheme = match["scheme"]
        tail = raw[len(value) :]
    if not value or value == REDACTED:
        return match.group(0)
    if (
        not sep.strip()
        and not (scheme or key).lower().rstrip().endswith("bearer")
        and not _looks_like_token(value)
    ):
        return match.group(0)  # prose: "token expired", "password reset for ada"
    if found is not None:
        found.add(value)
        trimmed = value.rstrip(".,;:!?")
        if trimmed != value:
            found.add(trimmed)
    opening = match["q"] or ""
    return f"{key}{sep}{opening}{scheme or ''}{REDACTED}{tail}"


def _trim_closers(value: str) -> str:
    # "dict(password=abc)": the ")" closes the call, unless the value opened it itself
    while (
        value
        and value[-1] in _CLOSERS
        and value.count(value[-1]) > value.count(_CLOSERS[value[-1]])
    ):
        value = value[:-1]
    return value


def _looks_like_token(word: str) -> bool:
    """A word that reads as a credential, not prose: long enough and with a digit, a
    symbol of base64/URL-safe alphabets, or capitals past its first letter."""
    word = word.rstrip(".,;:!?")
    if len(word) < MIN_SWEPT_LENGTH:
        return False
    if any(c.isdigit() or c in _TOKEN_CHARS for c in word):
        return True
    return word[1:] != word[1:].lower()


def _format_masked(template: str, args: Any, slots: tuple[Any, ...]) -> str:
    """``template % args`` with the arguments named in ``slots`` replaced by REDACTED."""
    if slots is _ALL:
        return _PERCENT_SPEC.sub(lambda m: "%" if m["type"] == "%" else REDACTED, template)
    mapping = isinstance(args, Mapping)
    sequence = args if isinstance(args, (list, tuple)) else (args,)
    out: list[str] = []
    index = 0
    last = 0
    for match in _PERCENT_SPEC.finditer(template):
        out.append(template[last : match.start()])
        last = match.end()
        if match["type"] == "%":
            out.append("%")
            continue
        name = match["name"]
        slot: Any = index if name is None else name
        if name is None:
            index += 1
        if slot in slots:
            out.append(REDACTED)
            continue
        value = args[name] if mapping and name is not None else sequence[slot]
        spec = match.group(0)
        if name is not None:
            spec = "%" + spec[match.end("name") + 1 - match.start() :]
        out.append(spec % (value,))
    out.append(template[last:])
    return "".join(out)


def _slot_values(params: Any, slots: tuple[Any, ...]) -> list[Any]:
    if slots is _ALL:
        return list(params.values()) if isinstance(params, Mapping) else list(params)
    if isinstance(params, Mapping):
        return [params[name] for name in slots if name in params]
    if isinstance(params, (list, tuple)):
        return [params[i] for i in slots if isinstance(i, int) and i < len(params)]
    return [params]


def _route_url(url: str, event: Any) -> str:
    """``url`` with the route template (the transaction name) as its path, no query."""
    parts = urlsplit(url)
    name = event.get("transaction")
    info = event.get("transaction_info")
    source = info.get("source") if isinstance(info, Mapping) else None
    path = name if isinstance(name, str) and name.startswith("/") and source == "route" else "/"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _is_duplicate(event: Any, hint: Any) -> bool:
    """Events that another path reports too, or that are ours to leave out.

    Flask reports an error that escaped its handlers through ``got_request_exception``
    (sentry-sdk's Flask integration listens) and logs it through ``app.logger``
    (the logging integration listens) before handing it to our error handler, which
    reports it: those two copies are dropped, unless the app propagates exceptions
    (testing, debug), in which case Flask re-raises instead of calling our handler and
    the signal's copy is the only report. So are events made from the extension's own
    log records: they describe conditions already in metrics and logs.
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
    """Whether our error handler reports the current request's unhandled errors: its
    app reports through this module and does not propagate exceptions."""
    if not has_request_context():
        return False
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not isinstance(app.extensions.get(EXTENSION_KEY), SentryReporter):
        return False
    propagate = app.config.get("PROPAGATE_EXCEPTIONS")
    if propagate is None:
        propagate = app.testing or app.debug
    return not propagate


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
        self.repeat_interval = settings.sentry_repeat_interval
        self.event_id_in_body = settings.sentry_event_id_in_body
        self.body_limit = _BODY_LIMITS[settings.sentry_max_request_body]
        self.tracing = settings.sentry_traces_sample_rate > 0
        #: The clock of the repeat interval (tests replace it).
        self.clock: Callable[[], float] = time.monotonic
        self._last_reported: dict[tuple[Any, ...], float] = {}
        self._repeats: dict[tuple[Any, ...], int] = {}

    @property
    def binding(self) -> _Binding | None:
        """The client this app reports to (``None`` after :func:`shutdown`)."""
        return _bindings.get(self.key)

    @property
    def sdk_fills_request(self) -> bool:
        """sentry-sdk's Flask integration adds the request itself (tracing on)."""
        binding = self.binding
        return self.tracing and binding is not None and binding.is_global

    def observer(self) -> _RequestScope:
        """The per-request step this app needs (see :class:`_RequestScope`)."""
        if self.sdk_fills_request:
            return _TracedRequest(self.state.internal_paths)
        return _RequestScope()

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
        context: dict[str, Any] | None = None
        if info.operational and info.status >= 500 and self.repeat_interval > 0:
            repeats = self._repeats_since_last(info)
            if repeats is None:
                return
            if repeats:
                context = {"repeats_not_reported": repeats}
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
            context=context,
        )
        if event_id is not None and self.event_id_in_body:
            info.extensions[EVENT_ID_MEMBER] = event_id

    def _repeats_since_last(self, info: ErrorInfo) -> int | None:
        """``None`` if the same operational error (route, code, status) was reported less
        than ``repeat_interval`` ago (it is counted); else how many were skipped."""
        rule = request.url_rule if has_request_context() else None
        key = (rule.rule if rule is not None else None, info.code, info.status)
        now = self.clock()
        last = self._last_reported.get(key)
        if last is not None and now - last < self.repeat_interval:
            self._repeats[key] = self._repeats.get(key, 0) + 1
            return None
        if len(self._last_reported) >= _MAX_CACHED:
            self._last_reported.clear()
        self._last_reported[key] = now
        return self._repeats.pop(key, 0)

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
        return _capture_error(self.binding, error, handled, level, tags, context, self)

    # event processor (only when an event is sent) ------------------------------------

    def enrich(self, event: Any, hint: Any, req: Request | None, ctx: RequestContext | None) -> Any:
        """Add the request's context to an event captured during one of its requests.

        ``req`` is the request (``None`` if it is gone); without Flask's request context
        (an error that escaped Flask, a streamed body) the body is left out.
        """
        tags = event.get("tags")
        if not isinstance(tags, dict):
            tags = event["tags"] = {}
        if ctx is not None:
            tags.setdefault("request_id", ctx.request_id)
            if ctx.trace_id is not None:
                tags.setdefault("trace_id", ctx.trace_id)
        if event.get("type") == "transaction":
            return event
        rule = req.url_rule if req is not None else None
        route = rule.rule if rule is not None else (ctx.route if ctx is not None else None)
        if route is not None:
            event["transaction"] = route
            event["transaction_info"] = {"source": "route"}
        found = _request_user.get()
        if found is not None and ctx is not None and found[0] is ctx:
            event["user"] = dict(found[1])
        attached = has_request_context()
        sdk_request = self.sdk_fills_request and attached
        if ctx is not None and not sdk_request:
            _set_trace_context(event, ctx)
        secrets: set[str] = set()
        data: dict[str, Any] | None = None
        if req is not None:
            try:
                data = self.request_data(req, secrets, with_body=attached)
            except Exception:  # an unreadable body must not cost the tags and the filtering
                _log.debug("Sentry request context failed", exc_info=True)
                data = {"url": req.base_url, "method": req.method}
        elif ctx is not None:
            data = {"method": ctx.method}
        if data is not None and not sdk_request:
            event["request"] = data
        if self.send_default_pii and req is not None and req.remote_addr:
            user = event.get("user")
            if not isinstance(user, dict):
                user = event["user"] = {}
            user.setdefault("ip_address", req.remote_addr)
        if isinstance(hint, dict):
            hint[_SECRETS_HINT] = secrets
        if ctx is not None:
            _drop_older_breadcrumbs(event, ctx)
        return event

    def request_data(
        self, req: Request, secrets: set[str], with_body: bool = True
    ) -> dict[str, Any]:
        """The request as Sentry's ``request`` interface, secrets already redacted.

        Every secret value met is added to ``secrets`` so that the scrubber removes it
        wherever else it appears in the event.
        """
        scrubber = self.scrubber
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
        body = self._body(req) if with_body else None
        if body is not None:
            scrubber._harvest(body, secrets, 1, False)
            data["data"] = scrubber._clean(body, None, 1, False, None)
        if self.send_default_pii and req.remote_addr:
            data["env"] = {"REMOTE_ADDR": req.remote_addr}
        return data

    def _body(self, req: Request) -> Any:
        limit = self.body_limit
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


# --- the per-request step -------------------------------------------------------------------


class _RequestScope:
    """Registered in ``state.observers``: per request two calls and a few attribute reads.

    At the start of a request the thread's sentry-sdk isolation scope is checked: if
    anything was set on it (user, tags, contexts, extra, breadcrumbs, ... by code calling
    ``sentry_sdk`` directly, in an earlier request or between requests), the request gets
    a fresh one; breadcrumbs alone are just cleared. At its end, log events held back
    for the error handler (see :class:`_Held`) are released if it did not claim them.
    """

    __slots__ = ("_get", "_readable")

    def __init__(self) -> None:
        from sentry_sdk.scope import Scope

        try:
            from sentry_sdk.scope import _isolation_scope

            self._get: Callable[[], Any] = _isolation_scope.get
        except ImportError:  # pragma: no cover - a sentry-sdk that renamed its internals
            self._get = Scope.get_isolation_scope
        # The check reads sentry-sdk's scope fields; a version without them gets a fresh
        # scope for every request instead (about 3 µs).
        self._readable = all(hasattr(Scope, name) for name in _SCOPE_FIELDS)

    def request_started(self, ctx: RequestContext) -> None:
        scope = self._get()
        if scope is None:
            return
        if not self._readable or (
            scope._user is not None
            or scope._tags
            or scope._contexts
            or scope._extras
            or scope._event_processors
            or scope._error_processors
            or scope._attachments
            or scope._fingerprint is not None
            or scope._level is not None
            or scope._transaction is not None
            or scope._span is not None
            or scope._flags is not None
            or scope._attributes
        ):
            _fresh_isolation_scope()
        elif scope._breadcrumbs:
            scope.clear_breadcrumbs()

    def request_finished(
        self, ctx: RequestContext, method: str, route: str | None, status: int, duration: float
    ) -> None:
        if _held:
            _release(ctx)


class _TracedRequest(_RequestScope):
    """The per-request step with tracing on: sentry-sdk's WSGI middleware already gives
    each request its own isolation scope; this tags the transaction with the request ID
    and drops it for the app's own endpoints (health probes, metrics scrapes)."""

    __slots__ = ("internal_paths",)

    def __init__(self, internal_paths: set[str]) -> None:
        super().__init__()
        self.internal_paths = internal_paths

    def request_started(self, ctx: RequestContext) -> None:
        import sentry_sdk

        transaction = sentry_sdk.get_current_scope().transaction
        if transaction is None:
            return
        transaction.set_tag("request_id", ctx.request_id)
        if ctx.environ.get("PATH_INFO") in self.internal_paths:
            transaction.sampled = False


#: The isolation scope's fields :class:`_RequestScope` reads.
_SCOPE_FIELDS = (
    "_user",
    "_tags",
    "_contexts",
    "_extras",
    "_event_processors",
    "_error_processors",
    "_attachments",
    "_fingerprint",
    "_level",
    "_transaction",
    "_span",
    "_flags",
    "_attributes",
    "_breadcrumbs",
)


def _fresh_isolation_scope() -> None:
    from sentry_sdk.scope import Scope, ScopeType

    Scope.set_isolation_scope(Scope(ty=ScopeType.ISOLATION))


def _set_trace_context(event: Any, ctx: RequestContext) -> None:
    # Without tracing the isolation scope's trace id would tie every event of a thread
    # into one trace: use the request's (from traceparent, else its UUID request ID).
    trace_id = ctx.trace_id
    if trace_id is None:
        candidate = ctx.request_id.replace("-", "")
        trace_id = candidate if len(candidate) == 32 and _is_hex(candidate) else None
    if trace_id is None:
        trace_id = uuid.uuid4().hex
    contexts = event.get("contexts")
    if not isinstance(contexts, dict):
        contexts = event["contexts"] = {}
    trace = contexts.get("trace")
    if not isinstance(trace, dict):
        trace = contexts["trace"] = {}
    trace["trace_id"] = trace_id
    trace.setdefault("span_id", uuid.uuid4().hex[16:])
    trace.pop("parent_span_id", None)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _drop_older_breadcrumbs(event: Any, ctx: RequestContext) -> None:
    # An app driven without the extension's request step keeps sentry_sdk's isolation
    # scope from one request to the next; keep only the breadcrumbs of this request.
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
    """Global event processor: adds the request's context, only when an event is sent.

    Also holds back the event of a log record with the exception being handled
    (``log.exception(...); raise``) until the error handler reports that exception
    (the two become one event, with the status tags and the id in the response body)
    or the request ends without it (then the log event is sent as it was).
    """
    if isinstance(hint, dict) and hint.get(_RESENT_HINT):
        return event
    if not _bindings or not _ours():
        return event  # the application's own client: its events are left as they are
    ctx = current_request.get()
    if has_request_context():
        reporter = _reporter_of(current_app)
        req: Request | None = request._get_current_object()  # type: ignore[attr-defined]
    elif ctx is not None:
        given = hint.get(_REPORTER_HINT) if isinstance(hint, dict) else None
        reporter = given if isinstance(given, SentryReporter) else _reporter_for(ctx.environ)
        req = ctx.environ.get("werkzeug.request")
    else:
        return event
    if reporter is None:
        return event
    event = reporter.enrich(event, hint, req, ctx)
    if ctx is not None and req is not None and _hold(event, hint, reporter, ctx):
        return None
    return event


def _ours() -> bool:
    import sentry_sdk

    client = sentry_sdk.get_client()
    return any(binding.client is client for binding in _bindings.values())


def _hold(event: Any, hint: Any, reporter: SentryReporter, ctx: RequestContext) -> bool:
    if not isinstance(hint, dict) or not has_request_context():
        return False
    record = hint.get("log_record")
    exc_info = hint.get("exc_info")
    if record is None or not exc_info or getattr(record, "funcName", None) == "log_exception":
        return False
    handled = sys.exc_info()[1]
    binding = reporter.binding
    if handled is None or exc_info[1] is not handled or binding is None:
        return False  # not the exception being handled: nothing will report it
    if sum(len(items) for items in _held.values()) >= _MAX_HELD:
        return False
    _held.setdefault(ctx, []).append(_Held(binding, handled, event, hint))
    return True


def _claim(error: BaseException) -> _Held | None:
    """The held log event of ``error`` in this request, taken out of the hold."""
    ctx = current_request.get()
    if ctx is None:
        return None
    items = _held.get(ctx)
    if not items:
        return None
    for held in items:
        if held.error is error:
            items.remove(held)
            if not items:
                _held.pop(ctx, None)
            return held
    return None


def _release(ctx: RequestContext) -> None:
    """Send the log events held during ``ctx`` that the error handler did not claim."""
    for held in _held.pop(ctx, None) or ():
        _resend(held.binding, held.event, held.hint)


def _merge_log_event(event: Any, held: _Held) -> None:
    logged = held.event
    for key in ("logentry", "logger"):
        if key in logged:
            event[key] = logged[key]
    extra = logged.get("extra")
    if isinstance(extra, dict) and extra:
        event.setdefault("extra", {}).update(extra)


def _reporter_of(app: Flask) -> SentryReporter | None:
    reporter = app.extensions.get(EXTENSION_KEY)
    return reporter if isinstance(reporter, SentryReporter) else None


def _reporter_for(environ: Mapping[str, Any]) -> SentryReporter | None:
    """The reporter of the app serving ``environ`` outside Flask's request context
    (found through the matched URL rule's map; the only app if there is one)."""
    live = list(_reporters)
    req = environ.get("werkzeug.request")
    rule = getattr(req, "url_rule", None)
    if rule is not None:
        for reporter in live:
            if reporter.state.app.url_map is rule.map:
                return reporter
    return live[0] if len(live) == 1 else None


def _current_reporter() -> SentryReporter | None:
    if has_app_context():
        return _reporter_of(current_app)
    ctx = current_request.get()
    return _reporter_for(ctx.environ) if ctx is not None else None


# --- capture --------------------------------------------------------------------------------


def _capture_error(
    binding: _Binding | None,
    error: BaseException,
    handled: bool,
    level: str | None,
    tags: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
    reporter: SentryReporter | None = None,
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
        if reporter is not None:
            hint[_REPORTER_HINT] = reporter
        if _held:
            held = _claim(error)
            if held is not None:
                _merge_log_event(event, held)
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


def _resend(binding: _Binding, event: Any, hint: Any) -> None:
    """Capture an event again through ``binding`` (it was already enriched)."""
    try:
        hint = dict(hint) if isinstance(hint, dict) else {}
        hint[_RESENT_HINT] = True
        event.pop("breadcrumbs", None)  # the scope adds them again
        _send(binding, event, hint, None, None)
    except Exception:
        _log.debug("Sentry capture failed", exc_info=True)


def _current_binding() -> _Binding | None:
    reporter = _current_reporter()
    if reporter is not None:
        return reporter.binding
    for binding in _bindings.values():
        if binding.is_global:
            return binding
    return next(iter(_bindings.values()), None)


def _current_pii() -> bool:
    reporter = _current_reporter()
    return reporter.send_default_pii if reporter is not None else False


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


# --- clients --------------------------------------------------------------------------------


class _Binding:
    """One ``sentry_sdk`` client, the options it was made from, and its hooks.

    Its ``before_send`` hands an event over to the client of the app it belongs to (a
    log record of another app's request, a client inherited across a fork) before
    scrubbing it with the rules of that client.
    """

    __slots__ = ("client", "is_global", "key", "options", "scrubber")

    def __init__(self, key: tuple[Any, ...], scrubber: Scrubber) -> None:
        self.key = key
        self.scrubber = scrubber
        self.client: Any = None
        self.options: dict[str, Any] = {}
        self.is_global = False

    def before_send(self, event: Any, hint: Any) -> Any:
        """``before_send``: route to the right client, then scrub (fail closed)."""
        if not (isinstance(hint, dict) and hint.get(_RESENT_HINT)):
            try:
                stale = _pid != os.getpid()
                if stale:
                    after_fork()  # this event came through the client of the parent
                reporter = _current_reporter()
                target = reporter.binding if reporter is not None else None
                if stale or (target is not None and target is not self):
                    _resend(target or self, event, hint)
                    return None
            except Exception:  # routing failed: scrub with our rules and send here
                _log.debug("Sentry routing failed", exc_info=True)
        return self.scrubber.before_send(event, hint)

    def before_send_transaction(self, event: Any, hint: Any) -> Any:
        """``before_send_transaction``: trim and scrub (fail closed)."""
        return self.scrubber.before_send_transaction(event, hint)

    def before_breadcrumb(self, crumb: Any, hint: Any) -> Any:
        """``before_breadcrumb``: leave our loggers out, mask secret log arguments."""
        return self.scrubber.before_breadcrumb(crumb, hint)


# --- set-up ----------------------------------------------------------------------------------


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

    def options(binding: _Binding) -> dict[str, Any]:
        return _client_options(dsn, environment, release, settings, binding, extra)

    _obtain(key, options, scrubber)
    reporter = SentryReporter(state, key, scrubber)
    _reporters.add(reporter)
    state.error_listeners.append(reporter.on_error)
    state.observers.append(reporter.observer())
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
    binding: _Binding,
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
        before_send=binding.before_send,
        before_send_transaction=binding.before_send_transaction,
        before_breadcrumb=binding.before_breadcrumb,
    )
    if tracing:
        options["traces_sampler"] = _traces_sampler(
            settings.sentry_traces_sample_rate, settings.sentry_traces_follow_parent
        )
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


def _traces_sampler(rate: float, follow_parent: bool) -> Callable[[dict[str, Any]], float]:
    """The configured rate; an incoming ``sentry-trace`` decision only if trusted (else any
    caller could have every one of its requests traced). The app's own endpoints are
    dropped per app by :class:`_TracedRequest`."""

    def sampler(context: dict[str, Any]) -> float:
        if follow_parent:
            parent = context.get("parent_sampled")
            if parent is not None:
                return float(parent)
        return rate

    return sampler


def _obtain(
    key: tuple[Any, ...], make_options: Callable[[_Binding], dict[str, Any]], scrubber: Scrubber
) -> _Binding:
    """The client for ``key``: the existing one, or a new one (global if none is)."""
    global _pid, _foreign_warned
    import sentry_sdk

    if _bindings and _pid != os.getpid():
        after_fork()  # an app set up in a forked child: the inherited clients first
    with _lock:
        _install_process_hooks()
        binding = _bindings.get(key)
        if binding is not None:
            return binding
        binding = _Binding(key, scrubber)
        options = make_options(binding)
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
        binding.is_global = not current.is_active()
        if binding.is_global:
            sentry_sdk.init(**options)
            client = sentry_sdk.get_client()
        else:
            client = sentry_sdk.Client(**options)
        # Keep what sentry_sdk guessed (release from git, ...) for a re-creation after a
        # fork; "" (no release) stops it from guessing again in every child.
        options["release"] = client.options.get("release") or ""
        binding.client = client
        binding.options = options
        _bindings[key] = binding
        _pid = os.getpid()
        return binding


def _install_process_hooks() -> None:
    global _process_hooks
    if _process_hooks:
        return
    from sentry_sdk.integrations import logging as sentry_logging
    from sentry_sdk.scope import add_global_event_processor

    # first: it must run before sentry-sdk's dedupe processor (see _hold)
    add_global_event_processor(_event_processor)
    # The sender thread's first request resolves the "idna" codec (importing
    # encodings.idna and stringprep). If a server forks (gunicorn --preload) while that
    # thread is inside the import, the child inherits the module's import lock held and
    # hangs on its first request; importing them here, before any fork, avoids it.
    codecs.lookup("idna")
    # Exact names only, and few: sentry-sdk matches every other record against each
    # (fnmatch) on every log line. The per-request access lines and the error handler's
    # own "unhandled error" record (its event would be built, then dropped as a
    # duplicate) are worth it; the rest of ours is dropped by the hooks.
    for name in (ACCESS_LOGGER_NAME, LOGGER_NAME, "gunicorn.access"):
        sentry_logging.ignore_logger(name)
        ignore_sentry_logs = getattr(sentry_logging, "ignore_logger_for_sentry_logs", None)
        if ignore_sentry_logs is not None:
            ignore_sentry_logs(name)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    atexit.register(_flush_at_exit)
    _process_hooks = True


def _after_fork_in_child() -> None:
    # Cheap on purpose: it runs in every child (multiprocessing, subprocess with
    # preexec_fn). The clients are re-created on the child's first event.
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by a thread that is gone


def _flush_at_exit() -> None:
    # sentry-sdk flushes its global client at exit; the clients of our other apps are ours.
    if _pid != os.getpid():
        return  # a forked child that never reported: the queues are the parent's
    flush(only_own=True)


# --- process lifecycle ------------------------------------------------------------------


def after_fork() -> bool:
    """Give this process clients of its own after a fork; a no-op if it has them already.

    A forked child inherits the parent's transport: its connection pool (sockets the
    parent also uses) and a queue whose sender thread did not survive the fork. The
    clients are re-created on the child's first event (so forks that never report,
    ``multiprocessing`` helpers or ``subprocess`` with ``preexec_fn``, pay nothing);
    gunicorn's ``post_fork`` hook may call this to do it at once. The process's global
    client is replaced only if it is still ours (an application that called
    ``sentry_sdk.init`` itself keeps its client).

    :returns: whether clients were re-created.
    """
    global _pid
    if not _bindings or _pid == os.getpid():
        return False
    import sentry_sdk

    with _lock:
        if _pid == os.getpid():
            return False
        global_scope = sentry_sdk.get_global_scope()
        for binding in _bindings.values():
            old = binding.client
            binding.client = sentry_sdk.Client(**binding.options)
            if binding.is_global:
                if global_scope.client is old:
                    global_scope.set_client(binding.client)
                else:
                    binding.is_global = False
        _pid = os.getpid()
    return True


def flush(timeout: float | None = None, *, only_own: bool = False) -> None:
    """Wait until pending events are sent, at most ``timeout`` seconds in all.

    Default: the largest ``GATEWAY_OBS_SENTRY_SHUTDOWN_TIMEOUT`` configured. For
    gunicorn's ``worker_exit`` hook; at interpreter exit it runs on its own.

    :param only_own: leave out the process's global client (sentry-sdk flushes it).
    """
    if not _bindings or _pid != os.getpid():
        return  # nothing sent in this process yet (a fresh fork): nothing to wait for
    bindings = [b for b in _bindings.values() if not (only_own and b.is_global)]
    if not bindings:
        return
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
        _held.clear()
        _foreign_warned = False
    _fresh_isolation_scope()
    _request_user.set(None)
