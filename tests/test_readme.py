"""The README stays true to the code: its config table and its two commands."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("config_table", ROOT / "scripts/config_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_table_matches_the_code() -> None:
    """Every key, default and description in the README table comes from config.py."""
    script = _script()
    readme = (ROOT / "README.rst").read_text()
    assert script.current_block(readme) == script.table(), (
        "README config table is stale: run `.venv/bin/python scripts/config_table.py --write`"
    )


def test_readme_names_the_two_commands() -> None:
    """The README gives `make demo` and `make test`, and the Makefile has both targets."""
    readme = (ROOT / "README.rst").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"``make {target}``" in readme
        assert f"\n{target}:" in makefile
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_readme_is_valid_restructuredtext() -> None:
    """The README renders without a single docutils warning (PyPI refuses broken RST)."""
    import io

    import docutils.core

    warnings = io.StringIO()
    docutils.core.publish_doctree(
        (ROOT / "README.rst").read_text(),
        settings_overrides={"warning_stream": warnings, "report_level": 2, "halt_level": 5},
    )
    assert warnings.getvalue() == ""
