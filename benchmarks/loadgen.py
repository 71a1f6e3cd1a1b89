"""A small HTTP/1.1 load client, used when ``wrk`` is not installed.

Sends a fixed number of ``GET`` requests over a few keep-alive connections
(reconnecting when the server closes, as gunicorn's sync worker does) and prints
one JSON object with the same fields as ``fixed_count.lua``. It is far heavier
than wrk on the CPU it shares with the server, so its throughput figures are
lower; the harness says which client it used.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from urllib.parse import urlsplit


class _Connection:
    def __init__(self, host: str, port: int, request: bytes, timeout: float) -> None:
        self.host, self.port, self.request, self.timeout = host, port, request, timeout
        self.sock: socket.socket | None = None

    def get(self) -> int:
        """Send one request and read the whole response; the status code."""
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        sock.sendall(self.request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-response")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            body += chunk
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def run(url: str, requests: int, connections: int, timeout: float = 10.0) -> dict[str, float]:
    """Send ``requests`` GETs to ``url`` over ``connections`` connections; the figures."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "User-Agent: bench-client/1.0\r\nAccept: application/json\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    counters = {"bad_status": 0, "socket_errors": 0}
    remaining = [requests]
    lock = threading.Lock()

    def worker() -> None:
        conn = _Connection(host, port, request, timeout)
        local: list[float] = []
        bad = errors = 0
        while True:
            with lock:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
            start = time.perf_counter()
            try:
                status = conn.get()
            except OSError:
                conn.close()
                errors += 1
                continue
            local.append(time.perf_counter() - start)
            if status != 200:
                bad += 1
        conn.close()
        with lock:
            latencies.extend(local)
            counters["bad_status"] += bad
            counters["socket_errors"] += errors

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()

    def percentile(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1e6

    return {
        "requests": len(latencies),
        "elapsed_s": elapsed,
        "bad_status": counters["bad_status"],
        "socket_errors": counters["socket_errors"],
        "p50_us": percentile(50),
        "p90_us": percentile(90),
        "p99_us": percentile(99),
        "max_us": latencies[-1] * 1e6 if latencies else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(run(args.url, args.requests, args.connections)))


if __name__ == "__main__":
    main()
