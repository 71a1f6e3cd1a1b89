"""What the metrics tests share: an app with the routes they call, parsing, promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, abort, stream_with_context
from prometheus_client.parser import text_string_to_metric_families

from flask_gateway_obs import AppError, BadRequestError
from flask_gateway_obs.config import Keys
from flask_gateway_obs.testing import metric_value

from ..conftest import MakeApp, unavailable

QUIET = {
    Keys.LOG_CONFIGURE: False,
    Keys.HEALTH_CHECK_DISK: False,
    Keys.HEALTH_CHECK_MEMORY: False,
}
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


def gateway(make_app: MakeApp, **config: Any) -> Flask:
    """An app with the routes the tests call: 200, 400, 500, 409 (AppError), a stream."""
    app = make_app(config={**QUIET, **{getattr(Keys, k): v for k, v in config.items()}})

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.post("/items")
    def create() -> tuple[dict[str, str], int]:
        return {"created": "yes"}, 201

    @app.get("/bad")
    def bad() -> None:
        raise BadRequestError("nope")

    @app.get("/boom")
    def boom() -> None:
        raise ZeroDivisionError("secret detail")

    @app.get("/conflict")
    def conflict() -> None:
        raise AppError("taken", 409, code="taken")

    @app.get("/abort")
    def aborted() -> None:
        abort(503)

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            yield "a"
            yield "b"

        return Response(stream_with_context(chunks()))

    @app.get("/in-flight")
    def in_flight() -> dict[str, float]:
        return {"value": metric_value(app, "active_connections")}

    return app


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of every sample called ``name`` in a text exposition."""
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition by ``(name, sorted labels)``."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        unavailable("promtool is not installed (apt-get install prometheus)")
        raise AssertionError  # unreachable: unavailable() skips or fails
    return binary


def promtool_check(text: str) -> None:
    """``promtool check metrics`` accepts the text-format ``text`` (lint included)."""
    result = subprocess.run(
        [_promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def promtool_check_openmetrics(text: str) -> None:
    """promtool's OpenMetrics parser accepts ``text``, exemplars included.

    ``promtool check metrics`` reads the text format 0.0.4 only; Prometheus's own
    OpenMetrics parser is reached through ``promtool tsdb create-blocks-from
    openmetrics``, which wants a timestamp on every sample: one is added to each
    sample line (after its value, before its exemplar); nothing else is changed.
    """
    assert text.endswith("# EOF\n")
    stamped = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            sample, marker, exemplar = line.partition(" # {")
            line = f"{sample} 1700000000{marker}{exemplar}"
        stamped.append(line)
    with tempfile.TemporaryDirectory(prefix="om-check-") as work:
        source = os.path.join(work, "exposition.om")
        with open(source, "w") as handle:
            handle.write("\n".join(stamped) + "\n")
        result = subprocess.run(
            [_promtool(), "tsdb", "create-blocks-from", "openmetrics", source, work + "/blocks"],
            capture_output=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
