"""Every Python example of the README runs as written.

A block is an example when it is a ``.. code-block:: python`` or a ``::`` block that
compiles as Python (not JSON output). Blocks that show a fragment of a bigger app use the
names the surrounding text gives them: ``app`` (with the extension and an
``/items/<int:item_id>`` route), ``obs``, ``client``, ``url`` (a real local HTTP server),
``session``, ``requests``; nothing else is provided.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docutils.core
import docutils.nodes
import pytest
import requests
from flask import Flask

from flask_gateway_obs import GatewayObs

ROOT = Path(__file__).resolve().parent.parent


def _examples() -> list[tuple[int, str]]:
    doctree = docutils.core.publish_doctree(
        (ROOT / "README.rst").read_text(), settings_overrides={"report_level": 5}
    )
    found = []
    for block in doctree.findall(docutils.nodes.literal_block):
        classes = block.get("classes", [])
        if "code" in classes and "python" not in classes:
            continue  # shell, yaml, console, text
        text = block.astext()
        if re.match(r"\s*[\[{]", text):
            continue  # JSON shown as output
        try:
            compile(text, "README", "exec")
        except SyntaxError:
            continue  # output, a signature, a header dump
        found.append((block.line or 0, text))
    return found


EXAMPLES = _examples()


class _Upstream(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(status: int) -> tuple[ThreadingHTTPServer, str]:
    handler = type("Upstream", (_Upstream,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/latest"


@pytest.fixture
def upstream() -> Iterator[str]:
    """A real local HTTP server answering 200 with a small JSON body."""
    server, url = _serve(200)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def names(upstream: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The names the README's fragments take from their surrounding text."""
    monkeypatch.chdir(tmp_path)
    obs = GatewayObs()
    app = Flask("readme_app", instance_path=str(tmp_path))
    app.config["TESTING"] = True
    obs.init_app(app)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    session = requests.Session()
    return {
        "__name__": "readme_example",
        "app": app,
        "obs": obs,
        "client": app.test_client(),
        "url": upstream,
        "session": session,
        "requests": requests,
    }


def test_the_readme_has_python_examples() -> None:
    """The collector finds the README's examples (a broken collector would pass everything)."""
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize(("line", "code"), EXAMPLES, ids=[f"line{n}" for n, _ in EXAMPLES])
def test_readme_example_runs(line: int, code: str, names: dict[str, Any]) -> None:
    """The example at this README line runs without an error."""
    namespace = dict(names)
    try:
        exec(compile(code, f"README.rst:{line}", "exec"), namespace)
    finally:
        namespace["session"].close()


def test_the_resilient_example_falls_back_on_an_upstream_5xx(
    monkeypatch: pytest.MonkeyPatch, names: dict[str, Any]
) -> None:
    """The README's obs.resilient(fallback=...) example: an upstream 503 runs the fallback."""
    block = next(code for _, code in EXAMPLES if "@obs.resilient(" in code)
    failing, url = _serve(503)
    real_get = requests.get
    # rates.internal does not resolve here: send the example's call to a local 503 instead.
    monkeypatch.setattr(requests, "get", lambda _url, **kw: real_get(url, **kw))
    try:
        namespace: dict[str, Any] = {"__name__": "readme_example"}
        exec(compile(block, "README.rst", "exec"), namespace)
        app = namespace["create_app"]()
        app.config["GATEWAY_OBS_RETRY_POLICIES"] = {"rates": {"base_delay": 0}}
        with app.app_context():
            assert namespace["fetch_rates"]() == {"rates": None, "stale": True}
    finally:
        failing.shutdown()
        failing.server_close()
