"""One long-lived process per variant: drives its app through the WSGI callable.

The harness talks to it with one JSON object per line on stdin/stdout::

    {"op": "run", "n": 1000}      -> {"ns": <elapsed nanoseconds for n requests>}
    {"op": "profile", "n": 200}   -> {"calls": <Python function calls per request>}
    {"op": "quit"}

On start it builds the app, checks one response and answers a ``ready`` object
(or ``{"error": ...}``). Everything the app writes to stdout (access logs) goes
to ``/dev/null``: formatting and writing a line is measured, a terminal is not.
"""

from __future__ import annotations

import cProfile
import gc
import json
import os
import pstats
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any

from werkzeug.test import EnvironBuilder


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    _start_response.status = status  # type: ignore[attr-defined]
    _start_response.headers = headers  # type: ignore[attr-defined]


class Driver:
    """Sends the same request to ``app`` over and over, the way a WSGI server would."""

    def __init__(self, app: Callable[..., Iterable[bytes]], path: str, headers: dict[str, str]):
        self.app = app
        builder = EnvironBuilder(
            path=path,
            method="GET",
            headers=list(headers.items()),
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        )
        self.environ = builder.get_environ()
        builder.close()

    def once(self) -> tuple[str, list[tuple[str, str]], bytes]:
        environ = dict(self.environ)
        environ["wsgi.input"] = BytesIO()
        body = self.app(environ, _start_response)
        try:
            data = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return _start_response.status, _start_response.headers, data  # type: ignore[attr-defined]

    def drive(self, n: int) -> int:
        """Nanoseconds taken by ``n`` requests, each body consumed and closed."""
        app = self.app
        base = self.environ
        start_response = _start_response
        new_input = BytesIO
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(n):
            environ = base.copy()
            environ["wsgi.input"] = new_input()
            body = app(environ, start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return clock() - start


def _count_output_lines(driver: Driver) -> tuple[int, str]:
    """Lines one request writes to stdout, and the first of them (checks the log is on)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        try:
            driver.once()
            sys.stdout.flush()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        capture.seek(0)
        lines = capture.read().decode("utf-8", "replace").splitlines()
    return len(lines), (lines[0][:4000] if lines else "")


def main(argv: list[str]) -> int:
    name = argv[0]
    # The protocol keeps the real stdout; fd 1 (where the apps log) becomes /dev/null.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)

    def answer(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")

    from benchmarks.variants import REQUEST_HEADERS, REQUEST_PATH, build

    try:
        built = build(name)
        driver = Driver(built.app, REQUEST_PATH, REQUEST_HEADERS)
        status, headers, body = driver.once()
        lines, sample = _count_output_lines(driver)
        driver.drive(200)  # warm caches, lazy imports and first-request set-up
    except LookupError as exc:
        answer({"unavailable": str(exc)})
        return 0
    except Exception as exc:
        traceback.print_exc()
        answer({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    between = built.between_slices
    if between is not None:
        between()
    answer(
        {
            "ready": True,
            "status": status,
            "body": body.decode("utf-8", "replace")[:200],
            "headers": sorted({key for key, _ in headers}),
            "log_lines": lines,
            "log_sample": sample,
        }
    )
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "run":
            ns = driver.drive(int(command["n"]))
            if between is not None:
                between()
            answer({"ns": ns})
        elif op == "profile":
            n = int(command["n"])
            profiler = cProfile.Profile()
            gc.collect()
            profiler.enable()
            driver.drive(n)
            profiler.disable()
            if between is not None:
                between()
            calls = pstats.Stats(profiler).total_calls  # type: ignore[attr-defined]
            answer({"calls": calls / n})
        elif op == "quit":
            answer({"bye": True})
            return 0
        else:
            answer({"error": f"unknown op {op!r}"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
