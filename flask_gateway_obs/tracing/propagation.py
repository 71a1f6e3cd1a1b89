"""Trace context in and out through OpenTelemetry's propagator API.

Incoming headers are read from the WSGI environ by whatever propagator is configured
(W3C ``traceparent``/``tracestate`` and baggage by default; B3 or Jaeger when the user
set them with ``OTEL_PROPAGATORS`` or ``propagate.set_global_textmap``). The W3C
propagators are skipped outright when none of their headers arrived (most requests at
a gateway's edge); any other propagator is always asked. A lone ``traceparent`` (no
``tracestate``, no ``baggage``) read by the W3C trace-context propagator may be parsed by
the request step itself where :mod:`flask_gateway_obs._compat.opentelemetry` allows it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "BAGGAGE_KEY",
    "TRACEPARENT_KEY",
    "TRACESTATE_KEY",
    "EnvironGetter",
    "Extractor",
    "inject",
]

_SKIPPABLE = frozenset({CompositePropagator, TraceContextTextMapPropagator, W3CBaggagePropagator})
_W3C_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
#: The environ keys of the W3C headers, checked by the request step.
TRACEPARENT_KEY = "HTTP_TRACEPARENT"
TRACESTATE_KEY = "HTTP_TRACESTATE"
BAGGAGE_KEY = "HTTP_BAGGAGE"


class EnvironGetter(Getter[Mapping[str, Any]]):
    """Reads HTTP headers from a WSGI environ (``traceparent`` -> ``HTTP_TRACEPARENT``)."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}

    def environ_key(self, header: str) -> str:
        key = self._keys.get(header)
        if key is None:
            key = "HTTP_" + header.upper().replace("-", "_")
            if len(self._keys) < 256:
                self._keys[header] = key
        return key

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(self.environ_key(key))
        if value is None:
            return None
        return [value] if isinstance(value, str) else list(value)

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


class Extractor:
    """What the request step needs to extract an incoming context through the global
    propagator: the getter, and whether to ask it at all.

    With ``w3c`` (the propagator is W3C trace context and/or baggage, alone or in the
    default composite) it reads only ``traceparent``, ``tracestate`` and ``baggage``:
    without any of them there is nothing to extract. ``reads_traceparent`` says whether
    a lone ``traceparent`` may be parsed by the request step instead.

    :param w3c_traceparent: whether a propagator's ``traceparent`` is the W3C
        trace-context propagator's, and nothing else reads the headers (see
        :mod:`flask_gateway_obs._compat.opentelemetry`).
    """

    def __init__(self, w3c_traceparent: Callable[[TextMapPropagator], bool] | None = None) -> None:
        self.getter = EnvironGetter()
        self.propagator: TextMapPropagator | None = None
        self.w3c = False
        self.reads_traceparent = False
        self._w3c_traceparent = w3c_traceparent

    def learn(self, propagator: TextMapPropagator) -> None:
        """Note the global propagator (it may be replaced at any time)."""
        self.propagator = propagator
        # The W3C propagators (and the default composite of them) read exactly the
        # headers they name in ``fields``; any other propagator is always asked.
        self.w3c = type(propagator) in _SKIPPABLE and set(propagator.fields) <= _W3C_HEADERS
        check = self._w3c_traceparent
        self.reads_traceparent = self.w3c and check is not None and check(propagator)

    def extract(self, propagator: TextMapPropagator, environ: Any, context: Any) -> Any:
        """The context ``propagator`` reads from ``environ``, over ``context`` (the
        current one, so what an outer middleware attached is kept)."""
        return propagator.extract(environ, context or None, getter=self.getter)


def inject(carrier: MutableMapping[str, str]) -> None:
    """Put the current context into ``carrier`` through the global propagator."""
    propagate.inject(carrier)
