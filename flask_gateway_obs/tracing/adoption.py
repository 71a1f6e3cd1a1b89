"""Server spans of other instrumentations, adopted as the request's own.

With a server span already current when the request step starts (an outer WSGI
instrumentation) or opentelemetry-instrumentation-flask on the app, no span of the
extension's is made: the request is marked :class:`Adopted` and the IDs of that span
go on its log lines. The Flask instrumentation's span starts later, in a before-request
hook: :class:`Correlator` notes its IDs when it is recorded, and :func:`note_current_span`,
a before-request hook run right after the instrumentation's (only on an app it
instruments), when it is not (the SDK hands an unsampled span to no span processor).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from ..core.context import RequestContext, current_request

__all__ = [
    "Adopted",
    "Correlator",
    "follow_flask_instrumentation",
    "note_current_span",
    "note_ids",
    "span_of",
]

#: The module of opentelemetry-instrumentation-flask's hooks.
_FLASK_INSTRUMENTATION = "opentelemetry.instrumentation.flask"


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


def note_current_span() -> None:
    """A before-request hook: the IDs of the span the Flask instrumentation made current
    go on an adopted request whose span nobody noted (recorded or not)."""
    ctx = current_request.get()
    if ctx is None:
        return
    adopted = ctx.span
    if not isinstance(adopted, Adopted) or adopted.span is not None:
        return  # not adopted, or the Correlator noted a recorded span already
    span = trace.get_current_span()
    context = span.get_span_context()
    if context.is_valid:
        adopted.span = span
        note_ids(ctx, context.trace_id, context.span_id, context.trace_flags.sampled)


def follow_flask_instrumentation(app: Any) -> None:
    """Run :func:`note_current_span` right after the Flask instrumentation's
    before-request hook on ``app`` (once; at the first request the app serves)."""
    hooks = list(app.before_request_funcs.get(None, ()))
    if note_current_span in hooks:
        return
    at = 0
    for index, hook in enumerate(hooks):
        if getattr(hook, "__module__", None) == _FLASK_INSTRUMENTATION:
            at = index + 1
    hooks.insert(at, note_current_span)
    # A new list, not an insert: a request served meanwhile iterates the old one whole.
    app.before_request_funcs[None] = hooks
