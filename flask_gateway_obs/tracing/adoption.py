"""Server spans of other instrumentations, adopted as the request's own.

With a server span already current when the request step starts (an outer WSGI
instrumentation) or opentelemetry-instrumentation-flask on the app, no span of the
extension's is made: the request is marked :class:`Adopted` and the IDs of that span
go on its log lines (:class:`Correlator` notes those of the Flask instrumentation's span,
which starts later, in a before-request hook).
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from ..core.context import RequestContext, current_request

__all__ = ["Adopted", "Correlator", "note_ids", "span_of"]


class Adopted:
    """The request's server span belongs to another instrumentation (``span`` is
    ``None`` until it starts, for the Flask instrumentation's before-request hook)."""

    __slots__ = ("span",)

    def __init__(self, span: Any = None) -> None:
        self.span = span


def span_of(ctx: RequestContext | None) -> Any:
    """The request's server span (ours or adopted), or ``None``."""
    span = ctx.span if ctx is not None else None
    return span.span if isinstance(span, Adopted) else span


def note_ids(ctx: RequestContext, trace_id: int, span_id: int, sampled: bool) -> None:
    """Put another instrumentation's span IDs on the request (its log lines carry them)."""
    ctx.trace_id = trace_id.to_bytes(16, "big").hex()
    ctx.span_id = span_id.to_bytes(8, "big").hex()
    ctx.trace_flags = "01" if sampled else "00"


class Correlator(SpanProcessor):
    """Notes the IDs of a SERVER span that another instrumentation starts inside a
    request the extension adopted (opentelemetry-instrumentation-flask's)."""

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        if span.kind is not SpanKind.SERVER:
            return
        ctx = current_request.get()
        if ctx is None or not isinstance(ctx.span, Adopted) or ctx.span.span is not None:
            return
        ctx.span.span = span
        context = span.get_span_context()
        note_ids(ctx, context.trace_id, context.span_id, context.trace_flags.sampled)

    def on_end(self, span: ReadableSpan) -> None:
        """Nothing to do when a span ends."""
