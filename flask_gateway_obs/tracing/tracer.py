"""``state.tracer`` when tracing is on: client spans, span events, outgoing headers.

Breakers, retries and dependency tracking report here through the
:class:`~flask_gateway_obs.core.contracts.Tracer` contract and never import
OpenTelemetry themselves.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping, MutableMapping
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.status import Status, StatusCode

from ..core.context import RequestContext, current_request
from ..core.contracts import Tracer
from ..errors import CircuitOpenError
from .propagation import inject
from .scrub import error_type_of

__all__ = ["ClientSpan", "OtelTracer"]

#: The client span open in this context (a breaker rejection marks it).
_current_client: contextvars.ContextVar[ClientSpan | None] = contextvars.ContextVar(
    "flask_gateway_obs_client_span", default=None
)


class ClientSpan:
    """A CLIENT span around one call to a dependency, current while the call runs.

    An exception leaving the block is an ``exception`` event (message scrubbed) and
    sets status ERROR (for the :class:`CircuitOpenError` of a breaker's tripping call, the
    failure behind it); an open breaker's refusal (:meth:`OtelTracer.rejected`, or a
    :class:`CircuitOpenError` of its own) marks the span ``circuit_breaker.rejected``.
    """

    __slots__ = (
        "_client_token",
        "_ctx",
        "_server_span_id",
        "_token",
        "attributes",
        "name",
        "rejected",
        "scrub",
        "span",
        "tracer",
    )

    def __init__(
        self,
        tracer: trace.Tracer,
        dependency: str,
        operation: str,
        scrub: Callable[[str, BaseException | None], str],
    ) -> None:
        self.tracer = tracer
        self.scrub = scrub
        self.name = f"{dependency} {operation}"
        self.attributes = {"peer.service": dependency, "dependency.operation": operation}
        self.span: Any = None
        self.rejected = False
        self._token: Any = None
        self._client_token: Any = None
        self._ctx: RequestContext | None = None
        self._server_span_id: str | None = None

    def __enter__(self) -> ClientSpan:
        self.span = self.tracer.start_span(
            self.name, kind=SpanKind.CLIENT, attributes=self.attributes
        )
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        self._client_token = _current_client.set(self)
        # Lines logged during the call carry the client span's ID; the request's own
        # (the access line's) is back when it ends.
        ctx = current_request.get()
        if ctx is not None and ctx.trace_id is not None:
            span_context = self.span.get_span_context()
            if span_context.is_valid and format(span_context.trace_id, "032x") == ctx.trace_id:
                self._ctx, self._server_span_id = ctx, ctx.span_id
                ctx.span_id = format(span_context.span_id, "016x")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self.span
        try:
            if isinstance(exc, CircuitOpenError) and exc.__cause__ is None:
                if not self.rejected:  # refused, nothing sent
                    self.mark_rejected(exc.breaker)
            elif exc is not None and isinstance(exc, Exception):
                # A breaker's tripping call raises CircuitOpenError from the real failure.
                error = (exc.__cause__ if isinstance(exc, CircuitOpenError) else None) or exc
                self.fail(error_type_of(error), self.scrub(str(error), error))
        finally:
            ctx, self._ctx = self._ctx, None
            if ctx is not None:
                ctx.span_id = self._server_span_id
            _current_client.reset(self._client_token)
            otel_context.detach(self._token)
            span.end()

    def fail(self, error_type: str, message: str | None = None) -> None:
        """Mark the call failed (``error.type``, status ERROR), with an exception event
        when a message is given."""
        span = self.span
        if span is None or not span.is_recording():
            return
        if message is not None:
            span.add_event(
                "exception", {"exception.type": error_type, "exception.message": message}
            )
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR))

    def mark_rejected(self, breaker: str | None) -> None:
        """The call was refused by an open breaker: nothing was sent."""
        self.rejected = True
        span = self.span
        if span is None or not span.is_recording():
            return
        span.set_attribute("circuit_breaker.rejected", True)
        if breaker:
            span.set_attribute("circuit_breaker.name", str(breaker))
        span.set_attribute("error.type", "circuit_open")
        span.set_status(Status(StatusCode.ERROR, "circuit breaker open"))


class OtelTracer(Tracer):
    """The tracing concern's :class:`~flask_gateway_obs.core.contracts.Tracer`.

    :param tracer: the OpenTelemetry tracer of client spans (ours or the user's provider's).
    :param scrub: masks an exception's message for its event.
    """

    def __init__(
        self, tracer: trace.Tracer, scrub: Callable[[str, BaseException | None], str]
    ) -> None:
        self.tracer = tracer
        self.scrub = scrub

    def client_span(self, dependency: str, operation: str) -> ClientSpan:
        return ClientSpan(self.tracer, dependency, operation, self.scrub)

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, dict(attributes))

    def rejected(self, breaker: str) -> None:
        client = _current_client.get()
        if client is not None:
            client.mark_rejected(breaker)
        else:
            self.event("circuit_breaker.rejected", {"circuit_breaker.name": breaker})

    def failed(self, error_type: str) -> None:
        """The call of the current client span failed though nothing was raised
        (``mark_failed``: an upstream 5xx): ``error.type`` and status ERROR."""
        client = _current_client.get()
        if client is not None:
            client.fail(error_type)

    def inject(self, carrier: MutableMapping[str, str]) -> bool:
        inject(carrier)
        return True
