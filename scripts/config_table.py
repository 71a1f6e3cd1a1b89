"""Print the README's configuration table from ``flask_gateway_obs.config.Settings``.

``python scripts/config_table.py --write`` rewrites the table in README.rst between
its markers; without ``--write`` it prints the table. A test checks the two agree.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from flask_gateway_obs.config import all_keys

START = ".. config-table-start"
END = ".. config-table-end"
README = Path(__file__).resolve().parent.parent / "README.rst"


def _default(field: dataclasses.Field[Any]) -> str:
    value = field.default
    if field.metadata["key"].endswith("_LEVEL") and isinstance(value, int):
        return f"``{logging.getLevelName(value).lower()}``"
    if value is None:
        return "(unset)"
    if isinstance(value, tuple):
        return "``[]``" if not value else "``" + ", ".join(str(v) for v in value) + "``"
    if isinstance(value, dict):
        return "``{}``" if not value else f"``{value!r}``"
    return f"``{value!r}``" if isinstance(value, str) else f"``{value}``"


def table() -> str:
    """The RST list-table of every key."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 30 12 58",
        "",
        "   * - Key",
        "     - Default",
        "     - Meaning (accepts)",
    ]
    for key, field in all_keys().items():
        meaning = f"{field.metadata['doc']} (accepts {field.metadata['accepts']})"
        lines += [f"   * - ``{key}``", f"     - {_default(field)}", f"     - {meaning}"]
    return "\n".join(lines) + "\n"


def current_block(text: str) -> str:
    """The table between the README's markers."""
    start = text.index(START) + len(START)
    end = text.index(END)
    return text[start:end].strip("\n") + "\n"


def main() -> None:
    generated = table()
    if "--write" not in sys.argv:
        sys.stdout.write(generated)
        return
    text = README.read_text()
    start = text.index(START) + len(START)
    end = text.index(END)
    README.write_text(text[:start] + "\n\n" + generated + "\n" + text[end:])


if __name__ == "__main__":
    main()
