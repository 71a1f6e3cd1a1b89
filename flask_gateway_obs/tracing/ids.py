"""Random trace and span IDs for the request step, drawn in batches.

A request that starts a trace needs a 128-bit trace ID and a 64-bit span ID as 32 and 16
lowercase hex digits (what its log lines carry; the numbers are read back from them
only when someone asks for the span's ``SpanContext``). Two ``os.urandom`` reads and two
``hex()`` calls for :data:`BATCH` pairs, the IDs cut apart in C, cost a third of what
a draw, its conversion to hex and two cuts cost per request. Taking a pair is one
``list.pop()``, which is atomic, so two threads never get the same pair; a forked child
drops the pairs its parent drew, so workers never share IDs.
"""

from __future__ import annotations

import os
import threading

__all__ = ["BATCH", "POOL", "new_ids"]

#: Pairs drawn at once.
BATCH = 256
#: ``(trace ID, span ID)`` pairs not handed out yet; ``POOL.pop()`` takes one (the
#: request step binds it; on ``IndexError`` it calls :func:`new_ids`).
POOL: list[tuple[str, str]] = []
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_fork_lock = threading.Lock()
_fork_hook = False


def new_ids() -> tuple[str, str]:
    """A new ``(trace ID, span ID)`` pair in hex, neither all zeros (the W3C invalid IDs)."""
    while True:
        try:
            return POOL.pop()
        except IndexError:
            _refill()


def _refill() -> None:
    global _fork_hook
    if not _fork_hook and hasattr(os, "register_at_fork"):
        with _fork_lock:
            if not _fork_hook:
                os.register_at_fork(after_in_child=POOL.clear)
                _fork_hook = True
    # Cut in C: hex() puts a space between IDs, split() makes the strings.
    traces = os.urandom(16 * BATCH).hex(" ", 16).split()
    spans = os.urandom(8 * BATCH).hex(" ", 8).split()
    pairs = list(zip(traces, spans, strict=True))
    if _ZERO_TRACE in traces or _ZERO_SPAN in spans:  # about once in 2**58 batches
        pairs = [pair for pair in pairs if pair[0] != _ZERO_TRACE and pair[1] != _ZERO_SPAN]
    POOL.extend(pairs)
