"""Bounded label values: the fixed route and method labels, and :func:`normalize_path`.

Kept free of prometheus_client so importing the package does not import it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["OTHER_METHOD", "STANDARD_METHODS", "UNMATCHED_ROUTE", "normalize_path"]

#: ``route`` label of every request that matched no URL rule (404, 405, redirects).
UNMATCHED_ROUTE = "<unmatched>"
#: ``method`` label of every non-standard method.
OTHER_METHOD = "OTHER"
STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)

_NUMERIC = re.compile(r"[0-9]+").fullmatch
_UUID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
).fullmatch
_HEX = re.compile(r"[0-9a-fA-F]{16,}").fullmatch
_MAX_NORMALIZED = 256


def normalize_path(url_or_path: str) -> str:
    """The path of a URL with IDs replaced by placeholders, fit for a metric label.

    Numeric segments become ``{id}``, UUIDs ``{uuid}``, hex tokens of 16 or more
    characters ``{hex}``; scheme, host, query and fragment are dropped.

    >>> normalize_path("https://api.example.com/users/42/orders/9f1c0e4e-1b7a-4a53-9d5e-2f6b3c1d0a7e?x=1")
    '/users/{id}/orders/{uuid}'
    """
    text = str(url_or_path)
    if "://" in text or text.startswith("//"):
        try:
            path = urlsplit(text).path
        except ValueError:
            path = ""
    else:
        path = text.split("?", 1)[0].split("#", 1)[0]
    segments = []
    for segment in path.split("/"):
        if segment:
            if _NUMERIC(segment):
                segment = "{id}"
            elif _UUID(segment):
                segment = "{uuid}"
            elif _HEX(segment):
                segment = "{hex}"
        segments.append(segment)
    result = "/".join(segments)
    if not result.startswith("/"):
        result = "/" + result
    return result[:_MAX_NORMALIZED]
