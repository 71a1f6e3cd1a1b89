"""A real OTLP/HTTP traces receiver on 127.0.0.1, for the tests.

It decodes every ``ExportTraceServiceRequest`` with opentelemetry-proto and keeps the
spans as plain :class:`ReceivedSpan` records, so tests assert on what went over the
wire, not on SDK internals. ``status`` makes it answer 500 (a collector in trouble).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

#: Span kinds by their protobuf number.
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    if kind is None:
        return None
    return getattr(value, kind)


@dataclass
class ReceivedSpan:
    """One decoded span."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status: str
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]
    scope: str
    start_ns: int
    end_ns: int
    trace_state: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def event(self, name: str) -> dict[str, Any]:
        """The attributes of the first event called ``name``."""
        for event_name, attributes in self.events:
            if event_name == name:
                return attributes
        raise KeyError(f"no event {name!r} on span {self.name!r}: {self.events}")


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=KINDS[span.kind],
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status=STATUS[span.status.code],
                        status_message=span.status.message,
                        events=[
                            (e.name, {a.key: _value(a.value) for a in e.attributes})
                            for e in span.events
                        ],
                        resource=resource,
                        scope=scope_spans.scope.name,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        trace_state=span.trace_state,
                    )
                )
    return spans


class OtlpReceiver:
    """Receives ``POST /v1/traces`` at :attr:`endpoint`; see the module's docstring."""

    def __init__(self) -> None:
        #: HTTP status of every answer (500: a failing collector).
        self.status = 200
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                with receiver._lock:
                    receiver.requests += 1
                    status = receiver.status
                    if status == 200 and self.path == "/v1/traces":
                        receiver.spans.extend(decode(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                if self.path != "/v1/traces":
                    status = 404
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        """The spans once at least ``count`` arrived (fails after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.01)
        with self._lock:
            raise AssertionError(f"{len(self.spans)} span(s) arrived, wanted {count}: {self.spans}")

    def named(self, name: str) -> list[ReceivedSpan]:
        """The spans called ``name`` received so far."""
        with self._lock:
            return [span for span in self.spans if span.name == name]
