"""OpenTelemetry API internals read by the tracing hot path (the request's server span).

Verified with opentelemetry-api 1.35.0 and 1.45.1; taken for 1.35 to 1.45:

- the current context is the ``ContextVar`` of ``opentelemetry.context._RUNTIME_CONTEXT``
  (a ``ContextVarsRuntimeContext``, the default runtime context): ``attach``, ``detach``
  and ``get_current`` end in its ``set``, ``reset`` and ``get``, here called directly
  (no Python frame);
- ``trace.set_span_in_context(span, context)`` is a new ``Context`` holding the items of
  ``context`` and ``span`` under ``opentelemetry.trace.propagation._SPAN_KEY``, here built
  in one step;
- the W3C ``TraceContextTextMapPropagator`` reads a ``traceparent`` with its
  ``_TRACEPARENT_HEADER_FORMAT_RE`` and the rules of ``parse_traceparent`` below (zero IDs,
  version ``00`` with more fields and version ``ff`` are invalid); the tracing concern
  parses a lone ``traceparent`` (no ``tracestate``, no ``baggage``) so, instead of
  building the propagator's context and span to read them back, when the global
  propagator is that one alone or a ``CompositePropagator`` (its ``_propagators``) of
  it and the W3C baggage propagator.

Outside those versions, with another runtime context (``OTEL_PYTHON_CONTEXT``), when the
internals are not as expected, or when the environment variable ``FGO_PUBLIC_PATH``
names ``opentelemetry`` (or ``all``), the tracing concern takes the public API:
``context.attach``/``detach``, ``trace.set_span_in_context``, the propagator's
``extract``. The traces are the same; each request costs more. The choice is logged
once at info level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator

from ..core import process
from .versions import PUBLIC_PATH_ENV, installed, public_path_forced, release

__all__ = [
    "PUBLIC_PATH_ENV",
    "VERIFIED",
    "ContextPath",
    "context_path",
    "public_path_reason",
]

#: Lowest and highest ``(major, minor)`` release of opentelemetry-api verified.
VERIFIED = ((1, 35), (1, 45))
_NAMES = frozenset({"all", "opentelemetry", "opentelemetry-api", "opentelemetry_api"})
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

_log = logging.getLogger("flask_gateway_obs.tracing")

#: ``(trace-id hex, parent span-id hex, trace flags)`` of a valid ``traceparent``.
Traceparent = tuple[str, str, int]


@dataclass(frozen=True)
class ContextPath:
    """How the tracing concern reaches OpenTelemetry's context, on either path.

    ``attach``, ``detach`` and ``get_current`` behave as ``context.attach``,
    ``context.detach`` and ``context.get_current`` (``detach`` may raise where the
    public one logs).
    """

    fast: bool
    attach: Callable[[Context], Any]
    detach: Callable[[Any], Any]
    get_current: Callable[[], Context]
    #: The key a span is stored under in a ``Context`` (fast path), else ``None``:
    #: ``Context({span_key: span})`` is ``trace.set_span_in_context(span, Context())``.
    span_key: str | None = None
    #: ``traceparent`` value -> :data:`Traceparent` or ``None`` (invalid), as the W3C
    #: propagator reads it (fast path), else ``None``.
    parse_traceparent: Callable[[str], Traceparent | None] | None = None
    #: Whether a propagator's ``traceparent`` is the W3C trace-context propagator's and
    #: no other part reads the W3C headers (fast path), else ``None``.
    w3c_traceparent: Callable[[TextMapPropagator], bool] | None = None


def context_path() -> ContextPath:
    """The path for the installed version; decided (and logged) once per process."""
    return process.registry("compat.opentelemetry", _decide)


def _public() -> ContextPath:
    return ContextPath(
        False,
        otel_context.attach,
        otel_context.detach,
        otel_context.get_current,
    )


def _decide() -> ContextPath:
    version = installed("opentelemetry-api")
    reason = public_path_reason(version)
    if reason is None:
        try:
            return _fast()
        except (AttributeError, TypeError, ValueError):
            reason = "its internals differ from those of the verified versions"
    _log.info(
        "opentelemetry-api %s: %s; tracing uses its public API (same traces, slower requests)",
        version or "(unknown version)",
        reason,
    )
    return _public()


def public_path_reason(version: str | None) -> str | None:
    """Why the public path must be taken with ``version`` here, or ``None``."""
    if public_path_forced(_NAMES):
        return f"{PUBLIC_PATH_ENV} asks for the public path"
    low, high = VERIFIED
    found = release(version)
    if found is None or not low <= found <= high:
        return "outside the versions verified for the fast path (1.35 to 1.45)"
    return None


# --- the fast path -------------------------------------------------------------------


def _fast() -> ContextPath:
    """The fast path, after checking the internals are what the verified versions have.

    :raises AttributeError, TypeError, ValueError: when they are not.
    """
    from contextvars import ContextVar

    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation import _SPAN_KEY
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    runtime = otel_context._RUNTIME_CONTEXT
    if type(runtime) is not ContextVarsRuntimeContext:
        raise TypeError("another runtime context is configured")
    var = runtime._current_context
    if not isinstance(var, ContextVar) or not isinstance(_SPAN_KEY, str):
        raise TypeError("the runtime context is not a context variable")
    # The span key is the one the public API stores a span under.
    if trace.set_span_in_context(trace.INVALID_SPAN, Context()) != {_SPAN_KEY: trace.INVALID_SPAN}:
        raise ValueError("set_span_in_context stores spans under another key")
    search = TraceContextTextMapPropagator._TRACEPARENT_HEADER_FORMAT_RE.search
    probe = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    if [type(part) for part in getattr(probe, "_propagators", ())] != [
        TraceContextTextMapPropagator,
        W3CBaggagePropagator,
    ]:
        raise ValueError("a composite propagator keeps its parts elsewhere")

    def w3c_traceparent(propagator: TextMapPropagator) -> bool:
        parts = [propagator]
        if type(propagator) is CompositePropagator:
            parts = list(propagator._propagators)
        kinds = [type(part) for part in parts]
        return TraceContextTextMapPropagator in kinds and all(
            kind is TraceContextTextMapPropagator or kind is W3CBaggagePropagator for kind in kinds
        )

    return ContextPath(
        True,
        var.set,
        var.reset,
        var.get,
        _SPAN_KEY,
        _traceparent_parser(search),
        w3c_traceparent,
    )


def _traceparent_parser(search: Callable[[str], Any]) -> Callable[[str], Traceparent | None]:
    def parse_traceparent(value: str) -> Traceparent | None:
        # TraceContextTextMapPropagator.extract's rules, in its order.
        match = search(value)
        if match is None:
            return None
        version, trace_id, span_id, flags, rest = match.groups()
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            return None
        if (version == "00" and rest) or version == "ff":
            return None
        return trace_id, span_id, int(flags, 16)

    return parse_traceparent
