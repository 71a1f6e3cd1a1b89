"""How concerns report: the recorder of metrics, request observers, error listeners.

A concern never imports another concern. Breakers, retries, rate limits and health
checks report what the metrics count through ``state.recorder`` (a :class:`Recorder`
that does nothing until metrics are on); concerns that care about every request plug
into the WSGI step as a :class:`RequestObserver`; concerns that care about errors
(metrics, Sentry) add an :data:`ErrorListener`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .context import RequestContext

__all__ = [
    "ErrorInfo",
    "ErrorListener",
    "Recorder",
    "RequestObserver",
    "RequestScope",
    "Tracer",
]


class Recorder:
    """Where concerns report what the metrics count; a no-op until metrics are on.

    Breakers, retries, rate limits and health checks call these methods on
    ``state.recorder`` and never import the metrics concern themselves.
    """

    def error(self, error_type: str, source: str) -> None:
        """Count one error in ``errors_total{type,source}``."""

    def dependency(self, dependency: str, operation: str, seconds: float, failed: bool) -> None:
        """Observe one call in ``dependency_latency_seconds``; count it in
        ``errors_total{source="dependency"}`` when it failed."""

    def breaker_state(self, breaker: str, state: int) -> None:
        """Set ``circuit_breaker_state{breaker}``: 0 closed, 1 open, 2 half-open."""

    def breaker_call(self, breaker: str, outcome: str) -> None:
        """Count one call in ``circuit_breaker_calls_total{breaker,outcome}``: ``success``
        (the dependency answered, a 4xx included), ``failure`` (it counts against the
        breaker) or ``rejected`` (refused without calling: open, or no trial slot)."""

    def breaker_failure_rate(self, breaker: str, rate: float) -> None:
        """Set ``circuit_breaker_failure_rate{breaker}``: the share (0 to 1) of failed calls
        in the breaker's ``count:``/``time:`` window, in this process."""

    def bulkhead_in_use(self, bulkhead: str, calls: int) -> None:
        """Set ``bulkhead_in_use{bulkhead}``: the calls running inside it now, in this process."""

    def bulkhead_rejected(self, bulkhead: str) -> None:
        """Count one call refused by a full bulkhead in ``bulkhead_rejected_total{bulkhead}``."""

    def retry_attempt(self, operation: str, outcome: str) -> None:
        """Count ``retry_attempts_total{operation,outcome}``."""

    def rate_limit_exceeded(self, route: str) -> None:
        """Count ``rate_limit_exceeded_total{route}``."""

    def health_check(self, check: str, status: str) -> None:
        """Set ``health_check_status{check}`` from healthy / degraded / unhealthy."""

    def spans_dropped(self, count: int, reason: str) -> None:
        """Count ``tracing_spans_dropped_total{reason}``: spans lost to a full export queue
        (``queue_full``) or a failed export (``export_failed``)."""


class Tracer:
    """Where concerns report to tracing; a no-op until tracing is on.

    Breakers and retries add span events to the current span, dependency tracking
    opens client spans, through ``state.tracer``: they never import OpenTelemetry.
    """

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        """Add the event ``name`` to the current span (breaker transitions, retry attempts)."""

    def client_span(self, dependency: str, operation: str) -> AbstractContextManager[Any]:
        """A CLIENT span around one call to ``dependency`` under the current span."""
        return nullcontext()

    def rejected(self, breaker: str) -> None:
        """Mark the current span (the client span inside ``track_dependency``): the open
        breaker ``breaker`` refused the call, nothing was sent."""

    def failed(self, error_type: str) -> None:
        """Mark the current span (the client span inside ``track_dependency``) failed
        though nothing was raised (``mark_failed``: an upstream 5xx): ``error.type`` and
        status ERROR."""

    def inject(self, carrier: MutableMapping[str, str]) -> bool:
        """Put the current span's context into ``carrier`` (outgoing headers) through the
        configured propagators; ``False`` when tracing is off (nothing was put)."""
        return False


class RequestObserver(Protocol):
    """A concern that wants to know when each request starts and ends."""

    def request_started(self, ctx: RequestContext) -> None:
        """Called when a request arrives, before Flask routes it (no ``flask.request`` yet)."""

    def request_finished(
        self, ctx: RequestContext, method: str, route: str | None, status: int, duration: float
    ) -> None:
        """Called once per request with the URL rule (``None`` when nothing matched), the
        final status and the duration in seconds."""


class RequestScope(Protocol):
    """A concern whose context must be current wherever the request's code runs: when
    the app is called and around each chunk of a streamed body (the tracing concern
    attaches the request's span there). ``exit`` runs in the context ``enter`` ran in."""

    def enter(self, ctx: RequestContext) -> Any:
        """Make the request's context current; returns what :meth:`exit` needs."""

    def exit(self, token: Any) -> None:
        """Undo :meth:`enter`."""


@dataclass
class ErrorInfo:
    """What the error handler learned about one error; listeners may add ``extensions``."""

    error: BaseException
    status: int
    code: str
    operational: bool
    source: str = "http"
    extensions: dict[str, Any] = field(default_factory=dict)


#: A listener learns of each error once; it may add members to the problem body.
ErrorListener = Callable[[ErrorInfo], None]
