"""Trace context in and out through OpenTelemetry's propagator API.

Incoming headers are read from the WSGI environ by whatever propagator is configured
(W3C ``traceparent``/``tracestate`` and baggage by default; B3 or Jaeger when the user
set them with ``OTEL_PROPAGATORS`` or ``propagate.set_global_textmap``). The W3C
propagators are skipped outright when none of their headers arrived (most requests at
a gateway's edge); any other propagator is always asked.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["EnvironGetter", "Extractor", "inject"]

_SKIPPABLE = frozenset({CompositePropagator, TraceContextTextMapPropagator, W3CBaggagePropagator})
_W3C_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})


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
    propagator: the getter, and which environ keys decide whether to ask at all."""

    def __init__(self) -> None:
        self.getter = EnvironGetter()
        self.propagator: TextMapPropagator | None = None
        #: environ keys of a W3C propagator's headers; ``None``: always extract
        self.keys: tuple[str, ...] | None = None

    def learn(self, propagator: TextMapPropagator) -> None:
        """Note the global propagator (it may be replaced at any time)."""
        self.propagator = propagator
        self.keys = None
        # The W3C propagators (and the default composite of them) read exactly the
        # headers they name in ``fields``; any other propagator is always asked.
        if type(propagator) in _SKIPPABLE and set(propagator.fields) <= _W3C_HEADERS:
            self.keys = tuple(self.getter.environ_key(field) for field in propagator.fields)


def inject(carrier: MutableMapping[str, str]) -> None:
    """Put the current context into ``carrier`` through the global propagator."""
    propagate.inject(carrier)
