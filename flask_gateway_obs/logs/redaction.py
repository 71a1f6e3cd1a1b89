"""Secrets out of log data: key-based redaction, URL credentials, control characters."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"
#: Key fragments that mark a value as secret (matched case-insensitively, as substrings).
SECRET_FRAGMENTS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "authorization",
    "cookie",
    "session",
    "credential",
    "private_key",
)
_MAX_DEPTH = 8


class Redactor:
    """Replaces the values of secret-looking keys, at any depth, in a copy of the data."""

    def __init__(self, extra_fragments: Iterable[str] = ()) -> None:
        self.fragments = tuple(
            dict.fromkeys(f.lower() for f in (*SECRET_FRAGMENTS, *extra_fragments) if f)
        )
        self._verdicts: dict[str, bool] = {}

    def is_secret(self, key: str) -> bool:
        """Whether ``key`` names a secret (cached per key)."""
        verdict = self._verdicts.get(key)
        if verdict is None:
            lowered = key.lower()
            verdict = any(fragment in lowered for fragment in self.fragments)
            if len(self._verdicts) < 4096:
                self._verdicts[key] = verdict
        return verdict

    def redact(self, value: Any, depth: int = 0) -> Any:
        """A JSON-ready copy of ``value`` with secret keys' values replaced.

        Mappings and anything with ``items()`` (werkzeug's ``Headers``, ``MultiDict``)
        are walked by key; a ``(key, value)`` pair whose key looks secret (a list of
        header pairs) has its value replaced; non-finite floats become strings.
        """
        if value is None or isinstance(value, (str, int, bool)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else repr(value)
        if depth >= _MAX_DEPTH:
            return "<too deep>"
        items = getattr(value, "items", None)
        if isinstance(value, Mapping) or (callable(items) and not isinstance(value, type)):
            out: dict[str, Any] = {}
            try:
                pairs = list(value.items())
            except Exception:
                return _safe_repr(value)
            for key, item in pairs:
                name = key if isinstance(key, str) else repr(key)
                out[name] = REDACTED if self.is_secret(name) else self.redact(item, depth + 1)
            return out
        if isinstance(value, (list, tuple, set, frozenset)):
            if (
                isinstance(value, tuple)
                and len(value) == 2
                and isinstance(value[0], str)
                and self.is_secret(value[0])
            ):
                return [value[0], REDACTED]
            return [self.redact(item, depth + 1) for item in value]
        return _safe_repr(value)


# Credentials in a URL: with a password, everything up to the last "@" before the line
# ends or another URL starts is masked (drivers accept unencoded "@", "/" and spaces in
# it, so over-masking is the safe side); a user name alone that looks like a token
# (https://ghp_x1y2z3@host) is masked whole.
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):"
    r"(?P<password>(?:(?![A-Za-z][A-Za-z0-9+.-]*://)[^\n])*)@"
)
_URL_USER = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^:@/\s]+@")


def mask_url_credentials(text: str) -> str:
    """``postgresql://user:pass@host`` -> ``postgresql://user:***@host``;
    ``https://tok3n@host`` -> ``https://***@host``; ``postgresql://postgres@host`` stays."""
    if "://" not in text or "@" not in text:
        return text
    text = _URL_PASSWORD.sub(_masked_password, text)
    return _URL_USER.sub(_masked_user, text)


def _masked_user(match: re.Match[str]) -> str:
    # A user name alone is kept when it reads as a name (postgres, git); one that looks
    # like a token (long, or with digits) is masked.
    user = match[0][len(match["scheme"]) : -1]
    if len(user) >= 16 or any(c.isdigit() for c in user):
        return f"{match['scheme']}***@"
    return match[0]


def _masked_password(match: re.Match[str]) -> str:
    # With an empty password the user name is the secret (a token): mask it instead.
    if match["password"]:
        return f"{match['scheme']}{match['user']}:***@"
    return f"{match['scheme']}***:@"


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a broken __repr__ must not break logging
        return f"<unrepresentable {type(value).__name__}>"


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_control(text: str) -> str:
    """Escape control characters so that one record stays one line."""
    return text.translate(_CONTROL)
