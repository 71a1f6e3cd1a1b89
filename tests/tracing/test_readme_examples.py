"""The Python examples of the README's tracing section run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import flask_gateway_obs

from ..conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(flask_gateway_obs.__file__)))


def _examples() -> list[str]:
    readme = (ROOT / "README.rst").read_text()
    start = readme.index("Tracing (OpenTelemetry)\n=======")
    end = readme.index("\n=====", start + 40)
    section = readme[start : readme.rindex("\n", 0, end)]
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", section)
    return [textwrap.dedent(block) for block in blocks]


def test_tracing_examples_run() -> None:
    """Each Python block of the tracing section runs in a fresh interpreter without error
    (the collector it names is a closed local port here)."""
    examples = _examples()
    assert examples
    closed = f"http://127.0.0.1:{free_port()}/v1/traces"
    for code in examples:
        code = code.replace("http://localhost:4318/v1/traces", closed)
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={
                **os.environ,
                "PYTHONPATH": PACKAGE_ROOT,
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
