"""The request being served: its ID, trace context and bound fields, in one context variable.

The context lives in one :class:`contextvars.ContextVar`, so the threads of a threaded
server never see each other's request, and ``async`` views (run by Flask through
``asgiref``, which copies the context) see their own.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "RequestContext",
    "bind_context",
    "current_request",
    "get_request_id",
    "get_trace_id",
    "new_request_id",
    "parse_traceparent",
    "valid_request_id",
]

#: What an incoming request ID must look like to be kept.
valid_request_id = re.compile(r"[A-Za-z0-9._-]{1,128}").fullmatch
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})").fullmatch


class RequestContext:
    """What the extension knows about the request being served (one per request)."""

    __slots__ = (
        "bound",
        "duration",
        "environ",
        "finished",
        "headers",
        "in_flight",
        "method",
        "path",
        "remote_addr",
        "request_id",
        "response_size",
        "route",
        "service",
        "span",
        "span_id",
        "start",
        "status",
        "trace_flags",
        "trace_id",
        "user_agent",
    )

    # Set by the WSGI step just before the access line, which reads the context as
    # its fields (see flask_gateway_obs.logs.AccessFields).
    duration: float
    remote_addr: str | None
    user_agent: str | None

    def __init__(
        self,
        request_id: str,
        service: str,
        start: float,
        environ: dict[str, Any] | None = None,
        trace_id: str | None = None,
        trace_flags: str = "01",
    ) -> None:
        self.request_id = request_id
        self.service = service
        self.start = start
        self.environ = environ if environ is not None else {}
        self.trace_id = trace_id
        self.trace_flags = trace_flags
        #: The current server span's ID (16 hex) when tracing is on.
        self.span_id: str | None = None
        #: The request's server span (an OpenTelemetry span) when tracing is on.
        self.span: Any = None
        #: Fields bound with :func:`bind_context`: on every log line of the request.
        self.bound: dict[str, Any] | None = None
        self.finished = False
        #: Headers a concern adds to the response (the rate-limit headers), appended by
        #: the WSGI step when the response starts; None when there are none.
        self.headers: list[tuple[str, str]] | None = None
        #: Set by the metrics observer when it counted this request as in flight.
        self.in_flight = False
        # What the response turned out to be, noted when it starts.
        self.method = "GET"
        self.path = "/"
        self.route: str | None = None
        self.status = 0  # 0 until the response starts
        self.response_size: int | None = None


current_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "flask_gateway_obs_request", default=None
)


#: The process registry (:func:`flask_gateway_obs.core.process.registry`) where the tracing
#: concern, while on, puts a callable giving the current span's ``(trace_id, span_id)`` in
#: hex, or ``None`` outside any span: what log lines written outside a request (a job in
#: a span of its own) are correlated with.
SPAN_IDS = "tracing.span_ids"


def span_ids_outside_a_request() -> tuple[str, str] | None:
    """The current span's IDs for a line written outside a request, when tracing is on."""
    from . import process

    source = process.lookup(SPAN_IDS)
    if source is None:
        return None
    try:
        ids: tuple[str, str] | None = source()
    except Exception:  # correlation never breaks a log line
        return None
    return ids


def get_request_id() -> str | None:
    """The current request's ID, or ``None`` outside a request."""
    ctx = current_request.get()
    return ctx.request_id if ctx is not None else None


def get_trace_id() -> str | None:
    """The W3C trace-id of the current request's ``traceparent``, if one arrived."""
    ctx = current_request.get()
    return ctx.trace_id if ctx is not None else None


def bind_context(**fields: Any) -> None:
    """Bind ``fields`` to the current request: they appear on every log line written
    while it is served, its access line included, and are gone when it ends.

    Secret-looking names are redacted like any other field. Outside a request
    nothing is bound (there is nothing to bind to).

    .. code-block:: python

        bind_context(tenant="acme", client_id=client.id)
    """
    ctx = current_request.get()
    if ctx is None or not fields:
        return
    if ctx.bound is None:
        ctx.bound = dict(fields)
    else:
        ctx.bound.update(fields)


#: UUID4 texts made per draw of randomness: one ``os.urandom`` call serves this many
#: requests, each of which then takes its ID from a list iterator (atomic under the GIL).
_IDS_PER_DRAW = 128
#: Where the 32 hex digits go in the 36 characters of a UUID's text.
_DIGIT_AT = tuple(i for i in range(36) if i not in (8, 13, 18, 23))
#: The variant digit of RFC 9562 (``10xx``: 8, 9, a or b) for each random hex digit.
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
_TEMPLATE = b"-" * 36 + b"\n"
_ids: Iterator[str] = iter(())
_fork_safe = False


def new_request_id() -> str:
    """A random UUID4 as text, as ``str(uuid.uuid4())`` gives it, from ``os.urandom``.

    IDs are drawn in batches; a forked child (a gunicorn worker) forgets the batch it
    inherited, so no two processes hand out the same ID.
    """
    request_id = next(_ids, None)
    return request_id if request_id is not None else _draw()


def _draw() -> str:
    # The batch is laid out column by column (one strided copy per digit position), so
    # no per-ID Python code runs: this is the cost of a request ID.
    global _ids, _fork_safe
    if not _fork_safe:
        os.register_at_fork(after_in_child=_forget_ids)
        _fork_safe = True
    count = _IDS_PER_DRAW
    digits = os.urandom(16 * count).hex().encode("ascii")
    text = bytearray(_TEMPLATE * count)
    for digit, at in enumerate(_DIGIT_AT):
        text[at::37] = digits[digit::32]
    text[14::37] = b"4" * count  # the version
    text[19::37] = text[19::37].translate(_VARIANT)
    batch = text.decode("ascii").split("\n")
    batch.pop()  # after the last newline
    ids = iter(batch)
    _ids = ids
    return next(ids)


def _forget_ids() -> None:
    global _ids
    _ids = iter(())


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, flags)`` of a valid W3C ``traceparent``, else ``None``."""
    if not value or len(value) > 256:
        return None
    match = _TRACEPARENT(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, flags
