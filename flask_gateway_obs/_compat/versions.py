"""What every ``_compat`` module asks before it reads a library's internals: which release
is installed, and whether the environment forces the library's public path."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Collection

__all__ = ["PUBLIC_PATH_ENV", "installed", "public_path_forced", "release"]

#: Comma-separated libraries (or ``all``) whose public path is forced.
PUBLIC_PATH_ENV = "FGO_PUBLIC_PATH"


def installed(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copies
        return None


def release(version: str | None) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string, or ``None`` when it has none."""
    if not version:
        return None
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def public_path_forced(names: Collection[str]) -> bool:
    """Whether :data:`PUBLIC_PATH_ENV` names one of ``names`` (or ``all``)."""
    forced = {p.strip().lower() for p in os.environ.get(PUBLIC_PATH_ENV, "").split(",")}
    return bool(forced & ({"all"} | set(names)))
