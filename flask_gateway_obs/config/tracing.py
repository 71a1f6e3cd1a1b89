"""Keys of tracing with OpenTelemetry (``GATEWAY_OBS_TRACING_*``)."""

from __future__ import annotations

import dataclasses

from .parsers import (
    PREFIX,
    _bool,
    _choice,
    _fraction,
    _int,
    _optional,
    _setting,
    _url,
)

#: The most spans a worker may hold waiting for export.
MAX_QUEUE_SIZE = 1_000_000


@dataclasses.dataclass(frozen=True)
class TracingSettings:
    """Keys of tracing with OpenTelemetry (``GATEWAY_OBS_TRACING_*``)."""

    tracing_enabled: bool = _setting(
        "TRACING_ENABLED",
        False,
        _bool,
        "a boolean",
        "a SERVER span per request, client spans, trace IDs on logs (needs the ``[otel]`` extra)",
    )
    tracing_sample_rate: float = _setting(
        "TRACING_SAMPLE_RATE",
        1.0,
        _fraction,
        "a number from 0 to 1",
        "share of new traces sampled; a request with a parent follows its parent's decision",
    )
    tracing_otlp_endpoint: str | None = _setting(
        "TRACING_OTLP_ENDPOINT",
        None,
        _optional(_url("http", "https")),
        "an http(s) URL",
        "full OTLP/HTTP traces URL; unset: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else "
        "``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``, else ``http://localhost:4318/v1/traces``",
    )
    tracing_exporter: str = _setting(
        "TRACING_EXPORTER",
        "otlp",
        _choice("otlp", "console", "none"),
        "one of otlp, console, none",
        "where sampled spans go: OTLP/HTTP, stdout, or nowhere (trace IDs still on logs)",
    )
    tracing_queue_size: int = _setting(
        "TRACING_QUEUE_SIZE",
        2048,
        _int(1, MAX_QUEUE_SIZE),
        f"an integer from 1 to {MAX_QUEUE_SIZE}",
        "spans a worker holds for export; past it spans are dropped and counted",
    )


class TracingKeys:
    """The ``app.config`` keys of tracing."""

    TRACING_ENABLED = PREFIX + "TRACING_ENABLED"
    TRACING_SAMPLE_RATE = PREFIX + "TRACING_SAMPLE_RATE"
    TRACING_OTLP_ENDPOINT = PREFIX + "TRACING_OTLP_ENDPOINT"
    TRACING_EXPORTER = PREFIX + "TRACING_EXPORTER"
    TRACING_QUEUE_SIZE = PREFIX + "TRACING_QUEUE_SIZE"
