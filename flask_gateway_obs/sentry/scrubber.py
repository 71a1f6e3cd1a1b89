"""The scrubber every Sentry event, transaction and breadcrumb passes through; fails closed.

It imports nothing of ``sentry_sdk``: it works on the events as sentry-sdk hands them to
``before_send`` (plain dicts and lists), and its free-text rules are those of the logs
(:class:`flask_gateway_obs.logs.redaction.TextMasker`), so a secret is masked the same
way in a log line and in an event.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..logs.loggers import LOGGER_NAME
from ..logs.redaction import REDACTED, REPORT_FRAGMENTS, Redactor, TextMasker
from ..logs.secrets import PII_FRAGMENTS, add_secret, is_pii, mask_url_users, swept
from .shorten import shorten

__all__ = ["PII_FRAGMENTS", "SECRETS_HINT", "SENTRY_FRAGMENTS", "Scrubber", "add_secret"]

#: Fragments scrubbed in events on top of :data:`logs.SECRET_FRAGMENTS` (shared with the
#: exception events of traces: :data:`logs.REPORT_FRAGMENTS`).
SENTRY_FRAGMENTS: tuple[str, ...] = REPORT_FRAGMENTS
#: The hint member through which the secrets met in the request reach the scrubber.
SECRETS_HINT = "flask_gateway_obs_secrets"
_SOURCE_KEYS = ("pre_context", "context_line", "post_context")
#: What a transaction keeps of the request (no body, cookies, query or environment).
_TRANSACTION_REQUEST_KEYS = ("method", "headers")
# A %-style conversion of a log message template (``%s``, ``%(name)r``, ``%5.2f``, ``%%``).
_PERCENT_SPEC = re.compile(
    r"%(?:\((?P<name>[^)]*)\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?"
    r"(?P<type>[diouxXeEfFgGcrsa%])"
)
_ALL = ("*",)  # every argument of a log message is secret
_MAX_DEPTH = 64
_MAX_CACHED = 2048

_log = logging.getLogger(__name__)


class Scrubber:
    """Removes secrets from events, transactions and breadcrumbs; fails closed.

    - values of keys whose name contains a secret fragment (``logs.SECRET_FRAGMENTS``,
      :data:`SENTRY_FRAGMENTS` and ``extra_fragments``) or is one of ``exact_names``
      (sentry-sdk's own denylist), at any depth, lists included: headers, cookies,
      query parameters, bodies, local variables, breadcrumb data, extra;
    - IP addresses, IP headers and e-mails (:data:`PII_FRAGMENTS`) unless
      ``send_default_pii``; the user is reduced to its id;
    - the arguments of a log message that follow a secret-looking word in its template
      (``"api_key=%s"``, ``"invalid token %s"``); only the masked message is sent;
    - in every string, the free-text rules of the logs (URL credentials, ``key=value``
      pairs, a token after a secret-looking word), any user name in a URL, and source
      context lines as code (string literals after a secret-looking name);
    - then every value masked anywhere, or seen under a secret name, is swept from the
      whole event (exception values, other frames' variables, mapping keys included);
    - last, strings longer than ``max_value_length`` are shortened (:mod:`.shorten`):
      sentry-sdk is told not to, so that the sweep sees each secret whole.

    :param extra_fragments: further key fragments to treat as secret.
    :param send_default_pii: keep IP addresses and the user's other fields.
    :param user_hook: ``(event, hint) -> event | None`` run after scrubbing.
    :param exact_names: key names (any case) that are secret as a whole.
    :param max_value_length: the UTF-8 size strings are cut to once scrubbed (``None``:
        not cut), before ``user_hook`` sees the event.
    """

    def __init__(
        self,
        extra_fragments: Iterable[str] = (),
        send_default_pii: bool = False,
        user_hook: Callable[[Any, Any], Any] | None = None,
        exact_names: Iterable[str] = (),
        max_value_length: int | None = None,
    ) -> None:
        self.max_value_length = max_value_length
        self.redactor = Redactor((*SENTRY_FRAGMENTS, *extra_fragments))
        self.masker = TextMasker(self.redactor.fragments)
        # the PII names among them (REMOTE_ADDR, ...) follow send_default_pii instead
        self.exact_names = frozenset(
            name.lower() for name in exact_names if not is_pii(name.lower())
        )
        self.send_default_pii = send_default_pii
        self.user_hook = user_hook
        self._verdicts: dict[str, bool] = {}
        self._slot_cache: dict[str, tuple[Any, ...]] = {}
        fragments = "|".join(re.escape(f) for f in self.masker.fragments)
        # a template's text right before a conversion that takes a secret
        self._label = re.compile(
            rf"(?:{fragments})[\w.-]*(?:['\"]?\s*[=:]\s*['\"]?|['\"]\s*,\s*['\"]|\s+)"
            r"(?:(?:bearer|basic|token|digest|apikey)\s+)?$",
            re.IGNORECASE,
        ).search

    # the hooks given to sentry_sdk.init -------------------------------------------------

    def before_send(self, event: Any, hint: Any) -> Any:
        """``before_send``: scrub, then run the user's hook; ``None`` drops the event."""
        try:
            event = shorten(self.scrub_event(event, hint), self.max_value_length)
            if self.user_hook is not None:
                event = self.user_hook(event, hint)
            return event
        except Exception:  # fail closed: an event we could not scrub is not sent
            _log.warning("Sentry event dropped: scrubbing failed", exc_info=True)
            return None

    def before_send_transaction(self, event: Any, hint: Any) -> Any:
        """``before_send_transaction``: trim and scrub the transaction; ``None`` drops."""
        try:
            return shorten(self.scrub_transaction(event, hint), self.max_value_length)
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
        given = hint.get(SECRETS_HINT) if isinstance(hint, Mapping) else None
        if given:
            secrets.update(given)
        self.harvest(event, secrets)
        logentry = event.get("logentry")
        if isinstance(logentry, dict):
            event["logentry"] = self._scrub_logentry(logentry, secrets)
        if not self.send_default_pii:
            user = event.get("user")
            if isinstance(user, Mapping):
                event["user"] = {"id": user["id"]} if user.get("id") is not None else {}
        # A value masked in one place (``api_key=...`` in a message) is swept from every
        # other place too; a pass that masks nothing new is the last.
        return swept(event, secrets, lambda data, sweep, found: self._clean(data, sweep, 0, found))

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

    def scrub_data(self, value: Any, secrets: set[str]) -> Any:
        """``value`` (a request body) with secret keys' values masked; what they held is
        added to ``secrets``, to be swept from the rest of the event."""
        self.harvest(value, secrets, 1)
        return self._clean(value, None, 1, None)

    def is_secret_key(self, key: str) -> bool:
        """Whether values under ``key`` are scrubbed."""
        verdict = self._verdicts.get(key)
        if verdict is None:
            lowered = key.lower()
            verdict = self.redactor.is_secret(key) or lowered in self.exact_names
            if not verdict and not self.send_default_pii:
                verdict = is_pii(lowered)
            if len(self._verdicts) < _MAX_CACHED:
                self._verdicts[key] = verdict
        return verdict

    def scrub_text(
        self, text: str, sweep: re.Pattern[str] | None = None, found: set[str] | None = None
    ) -> str:
        """``text`` with ``sweep`` hits, URL credentials and user names and secret
        ``key=value`` pairs masked.

        :param found: collects the values masked by the patterns.
        """
        if sweep is not None:
            text = sweep.sub(REDACTED, text)
        text = self.masker.mask(text, found)
        if "://" in text:
            text = mask_url_users(text)
        return text

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

    def harvest(self, value: Any, secrets: set[str], depth: int = 0) -> None:
        """Add to ``secrets`` every value found under a secret-looking key of ``value``."""
        self._harvest(value, secrets, depth, False)

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
            if self._label(before) is not None or (name is not None and self.is_secret_key(name)):
                slots.append(index if name is None else name)
            if name is None:
                index += 1
            last = match.end()
        return tuple(slots)

    def _scrub_logentry(self, logentry: dict[str, Any], secrets: set[str]) -> dict[str, Any]:
        template = logentry.get("message")
        params = logentry.get("params")
        out = {key: value for key, value in logentry.items() if key != "params"}
        slots = self.secret_slots(template) if isinstance(template, str) and params else ()
        if slots:
            for value in _slot_values(params, slots):
                add_secret(secrets, value)
            masked = self.mask_log_args(template, params)
            if masked is not None:
                out["formatted"] = masked
        elif isinstance(template, str) and not isinstance(out.get("formatted"), str):
            # older sentry-sdk sends the template and its arguments only; the arguments
            # are left out here, so the formatted message carries them
            out["formatted"] = _formatted(template, params)
        return out

    def _clean(
        self, value: Any, sweep: re.Pattern[str] | None, depth: int, found: set[str] | None
    ) -> Any:
        if isinstance(value, str):
            return self.scrub_text(value, sweep, found)
        if depth > _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            source = self._source(value, sweep, found) if "context_line" in value else None
            out: dict[Any, Any] = {}
            for key, item in value.items():
                if depth == 0 and key == "_meta":
                    out[key] = item  # sentry's annotations: paths and lengths, no values
                    continue
                name = key
                if isinstance(key, str):
                    # a secret can be a key too: {api_key_value: "owner"}
                    name = self.scrub_text(key, sweep, found)
                    if self.is_secret_key(key):
                        out[name] = REDACTED
                        continue
                if source is not None and key in source:
                    out[name] = source[key]
                else:
                    out[name] = self._clean(item, sweep, depth + 1, found)
            return out
        if isinstance(value, (list, tuple)):
            return [self._clean(item, sweep, depth + 1, found) for item in value]
        return value

    def _source(
        self, frame: Mapping[str, Any], sweep: re.Pattern[str] | None, found: set[str] | None
    ) -> dict[str, Any] | None:
        """A frame's source context, masked as code across its lines (a literal on the
        line after ``API_KEY = (`` is masked too); ``None`` if not in the usual shape."""
        pre, line, post = (frame.get(key) for key in _SOURCE_KEYS)
        if not (
            isinstance(line, str)
            and isinstance(pre, (list, type(None)))
            and isinstance(post, (list, type(None)))
        ):
            return None
        lines = [*(pre or ()), line, *(post or ())]
        if sweep is not None:
            lines = [sweep.sub(REDACTED, item) if isinstance(item, str) else item for item in lines]
        masked = [
            mask_url_users(item) if isinstance(item, str) else item
            for item in self.masker.mask_code(lines, found)
        ]
        before = len(pre or ())
        out: dict[str, Any] = {"context_line": masked[before]}
        if pre is not None:
            out["pre_context"] = masked[:before]
        if post is not None:
            out["post_context"] = masked[before + 1 :]
        return out

    def _harvest(self, value: Any, secrets: set[str], depth: int, under_secret: bool) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                if depth == 0 and key == "_meta":
                    continue
                secret = under_secret or (isinstance(key, str) and self.is_secret_key(key))
                self._harvest(item, secrets, depth + 1, secret)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self._harvest(item, secrets, depth + 1, under_secret)
        elif under_secret:
            add_secret(secrets, value)


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


def _formatted(template: str, params: Any) -> str:
    if not params:
        return template
    try:
        return template % (params if isinstance(params, (Mapping, tuple)) else tuple(params))
    except Exception:  # a message that does not format: its template says enough
        return template


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
