"""Secret values met in a request, swept from error reports: one implementation for the
Sentry scrubber and the exception events of traces.

An error's text can quote a secret under no secret-looking name (``upstream rejected
hk_9f8e...``, the value of an ``X-Api-Key`` header). What is swept is what the request
itself marks secret: secret-named headers, every cookie, secret view arguments, query
parameters and body fields, secret-named local variables of a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from .redaction import MIN_SECRET_LENGTH, REDACTED, is_auth_scheme

__all__ = [
    "BODY_LIMITS",
    "FORM_TYPES",
    "PII_FRAGMENTS",
    "add_secret",
    "harvest",
    "is_pii",
    "mask_url_users",
    "request_secrets",
    "sweep_pattern",
    "sweep_request_secrets",
    "swept",
]

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
#: Request bodies read for secrets, by ``GATEWAY_OBS_SENTRY_MAX_REQUEST_BODY``.
BODY_LIMITS: dict[str, int | None] = {"never": 0, "small": 10**3, "medium": 10**4, "always": None}
#: Bodies whose fields are read: JSON, and these.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
#: Bounds of a walk over local variables or a body (sentry-sdk's databag limits).
_MAX_DEPTH = 5
_MAX_BREADTH = 10
#: Passes of a sweep: a value masked in one pass is swept in the next.
MAX_PASSES = 3
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^:@/\s]+@")


def is_pii(lowered: str) -> bool:
    """Whether a lower-case name holds an IP address or an e-mail (:data:`PII_FRAGMENTS`)."""
    lowered = lowered.replace("_", "-")
    return any(fragment in lowered for fragment in PII_FRAGMENTS)


def mask_url_users(text: str) -> str:
    """Any user name in a URL masked (``https://deploy@host`` -> ``https://***@host``)."""
    return _USERINFO.sub(r"\g<scheme>***@", text) if "://" in text else text


def add_secret(secrets: set[str], value: Any) -> None:
    """Remember ``value`` as secret text (and the token of ``Bearer <token>``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # frame variables arrive as repr()
    if len(text) < MIN_SECRET_LENGTH or text == REDACTED or text.startswith("<"):
        return  # too short to sweep safely, already scrubbed, or an object's repr
    secrets.add(text)
    encoded = quote(text, safe="")
    if encoded != text:
        secrets.add(encoded)
    parts = text.split()
    if len(parts) == 2 and is_auth_scheme(parts[0] + " ") and len(parts[1]) >= MIN_SECRET_LENGTH:
        secrets.add(parts[1])


def sweep_pattern(secrets: set[str]) -> re.Pattern[str] | None:
    """One pattern for every value in ``secrets``, longest first (``None``: no secret)."""
    if not secrets:
        return None
    ordered = sorted(secrets, key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in ordered))


_T = TypeVar("_T")


def swept(
    value: _T,
    secrets: set[str],
    clean: Callable[[_T, re.Pattern[str] | None, set[str] | None], _T],
) -> _T:
    """``clean(value, pattern of secrets, found)`` until a pass masks no new secret: a
    value masked in one place (``api_key=...`` in a message) is swept from every other
    place too. ``clean`` adds what it masks to ``found`` (``None`` on the last pass).
    ``secrets`` gains what was found."""
    for _ in range(MAX_PASSES):
        found: set[str] = set()
        cleaned = clean(value, sweep_pattern(secrets), found)
        new: set[str] = set()
        for text in found:
            add_secret(new, text)
        new -= secrets
        if not new:
            return cleaned
        secrets |= new
    return clean(value, sweep_pattern(secrets), None)


def request_secrets(
    req: Any, is_secret: Callable[[str], bool], body_limit: int | None = 0
) -> set[str]:
    """The secret values of ``req`` (a Flask request), as the Sentry reporter notes them:
    secret headers, every cookie, secret view arguments and query parameters, and values
    under secret keys of a JSON or form body no larger than ``body_limit`` (``None``: any
    size, ``0``: never)."""
    secrets: set[str] = set()
    for name, value in req.headers.items():
        if is_secret(name):
            add_secret(secrets, value)
    for value in req.cookies.values():
        add_secret(secrets, value)
    for name, value in (req.view_args or {}).items():
        if is_secret(name):
            add_secret(secrets, value)
    for name, value in req.args.items(multi=True):
        if is_secret(name):
            add_secret(secrets, value)
    length = req.content_length
    if body_limit != 0 and length and (body_limit is None or length <= body_limit):
        body: Any = None
        if req.is_json:
            body = req.get_json(silent=True)
        elif req.mimetype in FORM_TYPES:
            body = {name: req.form.getlist(name) for name in req.form}
        harvest(body, is_secret, secrets)
    return secrets


def harvest(
    value: Any,
    is_secret: Callable[[str], bool],
    secrets: set[str],
    depth: int = 0,
    under_secret: bool = False,
) -> None:
    """Add to ``secrets`` every value under a secret-looking key of ``value`` (mappings,
    lists and tuples, within sentry-sdk's depth and breadth bounds)."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, Mapping):
        for index, (key, item) in enumerate(value.items()):
            if index >= _MAX_BREADTH:
                break
            secret = under_secret or (isinstance(key, str) and is_secret(key))
            harvest(item, is_secret, secrets, depth + 1, secret)
    elif isinstance(value, (list, tuple)):
        for item in value[:_MAX_BREADTH]:
            harvest(item, is_secret, secrets, depth + 1, under_secret)
    elif under_secret:
        add_secret(secrets, value)


def sweep_request_secrets(
    fields: dict[str, Any], keys: tuple[str, ...], is_secret: Callable[[str], bool]
) -> None:
    """Sweep the secret values of the request being served (its secret headers, cookies,
    secret query parameters and view arguments; never its body) from the text ``fields``
    named by ``keys``, in place. Outside a request, or with a request that cannot be
    read, nothing changes."""
    from flask import has_request_context, request

    try:
        if not has_request_context():
            return
        sweep = sweep_pattern(request_secrets(request, is_secret))
    except Exception:  # an unreadable request still gets the text rules
        return
    if sweep is None:
        return
    for key in keys:
        text = fields.get(key)
        if isinstance(text, str):
            fields[key] = sweep.sub(REDACTED, text)
