"""A small HTTP server on 127.0.0.1 that receives Sentry envelopes, for the tests.

It keeps the raw (decompressed) bytes of every envelope, so a test can assert that a
secret occurs nowhere in what left the process, and the parsed items.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def decode_body(body: bytes, encoding: str) -> bytes:
    """The envelope bytes of a request body sent with ``Content-Encoding: encoding``."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(body))
    raise ValueError(f"unknown Content-Encoding {encoding!r}")


def parse_envelope(raw: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """``(headers, [(item_headers, payload), ...])`` of one envelope."""
    first, _, rest = raw.partition(b"\n")
    headers = json.loads(first)
    items: list[tuple[dict[str, Any], bytes]] = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        item_headers = json.loads(line)
        length = item_headers.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            if rest.startswith(b"\n"):
                rest = rest[1:]
        items.append((item_headers, payload))
    return headers, items


class SentrySink:
    """Receives envelopes at ``http://key@127.0.0.1:<port>/1`` (see :attr:`dsn`)."""

    def __init__(self, delay: float = 0.0) -> None:
        #: Seconds each envelope takes to be answered (a slow Sentry).
        self.delay = delay
        self.raw: list[bytes] = []
        self.paths: list[str] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._open = threading.Event()
        self._open.set()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                sink._open.wait(timeout=30)  # held: the sender waits for the answer
                if sink.delay:
                    time.sleep(sink.delay)
                try:
                    raw = decode_body(body, self.headers.get("Content-Encoding", ""))
                except Exception as exc:  # recorded, so a test can fail on it
                    with sink._cond:
                        sink.errors.append(repr(exc))
                    self.send_response(400)
                    self.end_headers()
                    return
                with sink._cond:
                    sink.raw.append(raw)
                    sink.paths.append(self.path)
                    sink._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.dsn = f"http://publickey@127.0.0.1:{self.port}/1"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def start(self) -> SentrySink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._open.set()
        self.server.shutdown()
        self.server.server_close()

    def hold(self) -> None:
        """Keep every envelope's answer back (and the envelope unrecorded) until :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        """Answer the held envelopes and those to come."""
        self._open.set()

    # reading what arrived -------------------------------------------------------------

    def all_bytes(self) -> bytes:
        """Every envelope received, decompressed, concatenated."""
        with self._cond:
            return b"\n".join(self.raw)

    def items(self, item_type: str) -> list[dict[str, Any]]:
        """The JSON payloads of every item of ``item_type`` (``event``, ``transaction``)."""
        with self._cond:
            raws = list(self.raw)
        found = []
        for raw in raws:
            _, items = parse_envelope(raw)
            for headers, payload in items:
                if headers.get("type") == item_type:
                    found.append(json.loads(payload))
        return found

    def events(self) -> list[dict[str, Any]]:
        """The error and message events received."""
        return self.items("event")

    def wait_for(self, item_type: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` items of ``item_type`` arrived (or ``timeout``); return them."""
        with self._cond:
            self._cond.wait_for(lambda: self._count(item_type) >= count, timeout=timeout)
        return self.items(item_type)

    def _count(self, item_type: str) -> int:
        total = 0
        for raw in self.raw:
            _, items = parse_envelope(raw)
            total += sum(1 for headers, _ in items if headers.get("type") == item_type)
        return total
