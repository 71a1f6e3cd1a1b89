"""Shortening an event's strings to ``max_value_length``, once the event is scrubbed.

sentry-sdk shortens every string of an event before ``before_send`` runs. A secret
quoted in a long string then reaches the scrubber cut short, and the sweep for the
whole secret misses the prefix that is left. So sentry-sdk is given no limit of its own
(:data:`UNLIMITED`) and the scrubber shortens the strings itself after scrubbing, the
way sentry-sdk does: by UTF-8 size, on a code point, ending in ``...``, each cut
annotated in the event's ``_meta``; mapping keys and span descriptions are left whole.
This module imports nothing of ``sentry_sdk``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UNLIMITED", "shorten"]

#: The ``max_value_length`` sentry-sdk is given: 16 times its old default, enough for a
#: long secret to be quoted whole in a string the scrubber then sees, and still a bound on
#: what an event carries to the scrubber (a number: sentry-sdk 2.0 reads ``None`` as its
#: default of 1024; without a bound, sentry-sdk 2.0's worker under gunicorn ``--preload``
#: does not exit while it sends the events it holds).
UNLIMITED = 16_384
_ELLIPSIS = "..."
_MAX_DEPTH = 64


def shorten(event: Any, limit: int | None) -> Any:
    """``event`` (in place) with every string longer than ``limit`` bytes of UTF-8 cut
    to ``limit``; ``None`` cuts nothing."""
    if limit is None or not isinstance(event, dict):
        return event
    cuts: list[tuple[tuple[str, ...], int]] = []
    for key, value in event.items():
        if key != "_meta":
            event[key] = _walk(value, (str(key),), limit, cuts)
    if cuts:
        meta = event.get("_meta")
        if not isinstance(meta, dict):
            meta = event["_meta"] = {}
        for path, size in cuts:
            _annotate(meta, path, size, limit)
    return event


def _walk(value: Any, path: tuple[str, ...], limit: int, cuts: list[Any]) -> Any:
    if isinstance(value, str):
        cut = _cut(value, limit)
        if cut is None:
            return value
        if len(path) == 3 and path[0] == "spans" and path[2] == "description":
            return value  # as sentry-sdk: a span's description (its SQL) stays whole
        cuts.append((path, _size(value)))
        return cut
    if len(path) > _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _walk(item, (*path, str(key)), limit, cuts)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _walk(item, (*path, str(index)), limit, cuts)
    return value


def _cut(text: str, limit: int) -> str | None:
    """``text`` cut to ``limit`` bytes, or ``None`` if it fits."""
    if len(text) <= limit // 4:
        return None  # fits for sure (a code point is at most 4 bytes): the common case
    keep = max(limit - len(_ELLIPSIS), 0)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: by length, as sentry-sdk falls back
        return text[:keep] + _ELLIPSIS if len(text) > limit else None
    if len(encoded) <= limit:
        return None
    return encoded[:keep].decode("utf-8", "ignore") + _ELLIPSIS


def _size(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return len(text)


def _annotate(meta: dict[str, Any], path: tuple[str, ...], size: int, limit: int) -> None:
    node = meta
    for segment in path:
        child = node.get(segment)
        if not isinstance(child, dict):
            child = node[segment] = {}
        node = child
    note = node.get("")
    if not isinstance(note, dict):
        note = node[""] = {}
    note["len"] = size
    rem = note.get("rem")
    note["rem"] = [*(rem if isinstance(rem, list) else ()), ["!limit", "x", limit - 3, limit]]
