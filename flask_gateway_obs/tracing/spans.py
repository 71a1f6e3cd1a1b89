"""The request's SERVER span: a small implementation of OpenTelemetry's ``Span`` API.

The SDK's own span validates every attribute through locks and bounded containers:
about 25 µs per request for the dozen attributes of a server span, which alone is a
quarter of what the whole Flask instrumentation costs. The server span is ours to
build, so it is built here: plain slots in the request thread, turned into the SDK's
public ``ReadableSpan`` on the export thread, where the OTLP encoder takes it as it
takes any other span. An unsampled request gets the same object, not recording, whose
``SpanContext`` is made only if someone asks for it (propagation, a child span).

User code sees it as the current span (``trace.get_current_span()``) and may set
attributes, add events and set the status, as on any span.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

__all__ = ["MAX_ATTRIBUTES", "MAX_EVENTS", "ServerSpan", "valid_value"]

#: Limits of what user code may add to a server span (the SDK's default limits).
MAX_ATTRIBUTES = 128
MAX_EVENTS = 128
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_EMPTY_STATE = TraceState()
_PRIMITIVES = (str, bool, int, float)


def valid_value(value: Any) -> bool:
    """Whether ``value`` is an OpenTelemetry attribute value (a primitive, or a sequence
    of primitives of one type)."""
    if isinstance(value, _PRIMITIVES):
        return True
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        kinds = {type(item) for item in value}
        return len(kinds) <= 1 and all(isinstance(item, _PRIMITIVES) for item in value)
    return False


class ServerSpan(trace.Span):
    """One request's SERVER span; see the module's docstring.

    :param trace_hex: the trace's ID (the parent's, or a new one), 32 lowercase hex digits.
    :param span_hex: this span's ID, 16 lowercase hex digits.
    :param parent_context: the OpenTelemetry context to attach the span under.
    :param parent: the remote parent's context, if the request carried one.
    :param attributes: the span's attributes (owned by the span from here on); given, the
        span is sampled (recorded and exported), else it records nothing.
    :param start_ns: start time, ns since the epoch (sampled spans).
    """

    # Slots for what every request sets; the rest are class defaults, replaced on the
    # instance (the API's ``Span`` has no slots) only when a sampled span needs them or
    # someone asks for the span's context. An unsampled span may be made without
    # ``__init__`` (``ServerSpan.__new__(ServerSpan)``, then the three slots set): the
    # request step does so, saving a Python frame per request. The IDs are kept as the
    # hex the request's log lines carry; their numbers are read when the context is.
    __slots__ = ("parent_context", "span_hex", "trace_hex")
    _context: SpanContext | None = None
    sampled = False
    parent: SpanContext | None = None
    attributes: dict[str, Any] = {}  # never written: a sampled span gets its own
    start_ns = 0
    name = ""
    end_ns = 0
    ended = False
    kind = SpanKind.SERVER
    events: list[tuple[str, dict[str, Any], int]] | None = None
    status: Status | None = None

    def __init__(
        self,
        trace_hex: str,
        span_hex: str,
        parent_context: Any = None,
        parent: SpanContext | None = None,
        attributes: dict[str, Any] | None = None,
        start_ns: int = 0,
    ) -> None:
        self.trace_hex = trace_hex
        self.span_hex = span_hex
        #: The context the span is attached under (the incoming one, with its baggage).
        self.parent_context = parent_context
        if attributes is not None:  # sampled: recorded and exported
            self.sampled = True
            self.parent = parent
            self.attributes = attributes
            self.start_ns = start_ns
        elif parent is not None:
            self.parent = parent

    # --- the Span API --------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            context = self._context = SpanContext(
                int(self.trace_hex, 16),
                int(self.span_hex, 16),
                is_remote=False,
                trace_flags=_SAMPLED if self.sampled else _NOT_SAMPLED,
                trace_state=self.parent.trace_state if self.parent is not None else _EMPTY_STATE,
            )
        return context

    def is_recording(self) -> bool:
        return self.sampled and not self.ended

    def set_attribute(self, key: str, value: Any) -> None:
        if not self.sampled or self.ended or not isinstance(key, str) or not key:
            return
        if not valid_value(value):
            return
        attributes = self.attributes
        if key in attributes or len(attributes) < MAX_ATTRIBUTES:
            attributes[key] = (
                tuple(value)
                if isinstance(value, Sequence) and not isinstance(value, str)
                else value
            )

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None
    ) -> None:
        if not self.sampled or self.ended:
            return
        events = self.events
        if events is None:
            events = self.events = []
        if len(events) >= MAX_EVENTS:
            return
        clean = {
            k: v for k, v in (attributes or {}).items() if isinstance(k, str) and valid_value(v)
        }
        events.append((str(name), clean, timestamp if timestamp is not None else time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        """Links are not kept on server spans (none of ours makes one)."""

    def update_name(self, name: str) -> None:
        if self.sampled and not self.ended:
            self.name = str(name)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if not self.sampled or self.ended:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        current = self.status
        # As the SDK: OK is final; UNSET never replaces what was set.
        if (current is not None and current.status_code is StatusCode.OK) or (
            status.status_code is StatusCode.UNSET
        ):
            return
        self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Recorded as an ``exception`` event with the type alone: the message may hold
        secrets (the extension's own error events carry it scrubbed)."""
        event = {"exception.type": type(exception).__qualname__, "exception.escaped": escaped}
        event.update(attributes or {})
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """Ends the span; the extension ends it itself when the request ends."""

    # --- for the extension -----------------------------------------------------------

    def finish(self, name: str, end_ns: int) -> None:
        """End the span with ``name`` unless user code renamed it."""
        if not self.name:
            self.name = name
        self.end_ns = end_ns
        self.ended = True

    def readable(self, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
        """The SDK's read-only span, for the exporter (made on the export thread)."""
        events = tuple(Event(name, attrs, stamp) for name, attrs, stamp in self.events or ())
        return ReadableSpan(
            name=self.name,
            context=self.get_span_context(),
            parent=self.parent,
            resource=resource,
            attributes=self.attributes,
            events=events,
            kind=self.kind,
            status=self.status or Status(StatusCode.UNSET),
            start_time=self.start_ns,
            end_time=self.end_ns,
            instrumentation_scope=scope,
        )
