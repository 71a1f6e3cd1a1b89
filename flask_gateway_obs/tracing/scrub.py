"""What an error event on a span says: the exception's type, and its message scrubbed
exactly as the Sentry scrubber scrubs an event's exception value.

The Sentry scrubber masks a message with the logs' free-text rules, masks any user name
in a URL, and sweeps from it every secret value it met elsewhere in the event: secret
headers, every cookie, secret query parameters, view arguments and body fields of the
request, and secret-named local variables of the traceback. :class:`MessageScrubber`
does the same from the request being served and the exception, on the error path only.

The free-text rules are the logs' (:class:`~flask_gateway_obs.logs.TextMasker`) and the
secrets of a request are found by :mod:`flask_gateway_obs.logs.secrets`, as the Sentry
concern finds them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

from flask import has_request_context, request

from ..logs import REPORT_FRAGMENTS, Redactor, TextMasker
from ..logs.redaction import REDACTED
from ..logs.secrets import harvest, is_pii, mask_url_users, request_secrets, swept

__all__ = ["MessageScrubber", "error_type_of"]

_MAX_MESSAGE = 1024


def error_type_of(error: BaseException) -> str:
    """``error.type`` of an exception: its fully qualified class name."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _exception_chain(error: BaseException) -> Iterable[BaseException]:
    """``error`` and its causes, as sentry-sdk walks them."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


class MessageScrubber:
    """An exception's message as error events carry it: scrubbed as the Sentry scrubber
    scrubs an event's exception value (see the module's docstring), then cut to a
    bounded length. Called on the error path only.

    :param fragments: the extra key fragments (``GATEWAY_OBS_LOG_REDACT_KEYS``, the Sentry
        denylist).
    :param send_default_pii: values of IP and e-mail names are kept (not swept).
    :param include_locals: secret-named local variables of the traceback are swept.
    :param body_limit: request bodies up to this size are read for secret fields
        (``None``: any size, ``0``: never).
    """

    def __init__(
        self,
        fragments: Iterable[str] = (),
        send_default_pii: bool = False,
        include_locals: bool = True,
        body_limit: int | None = 0,
    ) -> None:
        self.redactor = Redactor((*REPORT_FRAGMENTS, *fragments))
        self.masker = TextMasker(self.redactor.fragments)
        self.send_default_pii = send_default_pii
        self.include_locals = include_locals
        self.body_limit = body_limit
        self._exact: frozenset[str] | None = None

    def is_secret(self, name: str) -> bool:
        """Whether values under ``name`` are secret (as Sentry's ``is_secret_key``)."""
        if self.redactor.is_secret(name):
            return True
        lowered = name.lower()
        if is_pii(lowered):
            return not self.send_default_pii
        return lowered in self._exact_names()

    def _exact_names(self) -> frozenset[str]:
        # sentry-sdk's own denylist, which the Sentry concern gives its scrubber too;
        # read only when sentry-sdk is loaded already (Sentry on): tracing never imports it.
        exact = self._exact
        if exact is None:
            module = sys.modules.get("sentry_sdk.scrubber")
            names = getattr(module, "DEFAULT_DENYLIST", None) if module is not None else None
            if names is None:
                return frozenset()
            exact = frozenset(str(name).lower() for name in names)
            exact = self._exact = frozenset(name for name in exact if not is_pii(name))
        return exact

    def secrets(self, error: BaseException | None) -> set[str]:
        """The secret values of the request being served and of ``error``'s traceback."""
        secrets: set[str] = set()
        if has_request_context():
            secrets |= request_secrets(request, self.is_secret, self.body_limit)
        if error is not None and self.include_locals:
            for link in _exception_chain(error):
                tb = link.__traceback__
                while tb is not None:
                    harvest(tb.tb_frame.f_locals, self.is_secret, secrets, 1)
                    tb = tb.tb_next
        return secrets

    def scrub(self, message: str, secrets: set[str]) -> str:
        """``message`` with ``secrets`` swept, URL credentials and users and secret
        ``key=value`` pairs masked; what a pass masks is swept in the next."""
        return swept(message, set(secrets), self._scrub_once)

    def _scrub_once(self, text: str, sweep: re.Pattern[str] | None, found: set[str] | None) -> str:
        if sweep is not None:
            text = sweep.sub(REDACTED, text)
        return mask_url_users(self.masker.mask(text, found))

    def __call__(self, message: str, error: BaseException | None = None) -> str:
        try:
            secrets = self.secrets(error)
        except Exception:  # an unreadable request still gets the text rules
            secrets = set()
        message = self.scrub(message, secrets)
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + "..."
        return message
