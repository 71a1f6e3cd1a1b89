"""Memory readings for the memory check: a cgroup's usage and limit, else the process's.

In a cgroup with a memory limit (a container, a systemd slice) what the kernel enforces
is the limit on the cgroup's usage, summed over every process in it: under gunicorn the
workers together, not one worker's resident memory. So the reading is the cgroup's usage
against its limit (v2 ``memory.current`` minus the reclaimable ``inactive_file`` of
``memory.stat``; v1 ``memory.usage_in_bytes`` minus ``total_inactive_file``), taken at
the level of the hierarchy whose limit is nearest to being reached. Without a limit it is
the process's resident memory against the machine's total.

Every path is a parameter, so a test can point the readers at a tree of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "CGROUP_ROOT",
    "PROC_MEMINFO",
    "PROC_SELF_CGROUP",
    "PROC_SELF_STATM",
    "MemoryLimit",
    "MemoryUsage",
    "cgroup_memory_limit",
    "cgroup_memory_usage",
    "memory_limit",
    "memory_usage",
    "resident_memory",
    "system_memory",
]

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"
PROC_MEMINFO = "/proc/meminfo"
PROC_SELF_STATM = "/proc/self/statm"
#: cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages); anything above this is it.
_V1_UNLIMITED = 1 << 60


class MemoryLimit(NamedTuple):
    """A memory limit in bytes and where it came from (``cgroup v2``, ``cgroup v1``, ``system``)."""

    limit_bytes: int
    source: str


class MemoryUsage(NamedTuple):
    """Memory in use against a limit.

    :param used_bytes: the cgroup's usage without reclaimable file cache, or the process's
        resident memory.
    :param limit_bytes: the limit it is compared with.
    :param source: where the limit came from (``cgroup v2``, ``cgroup v1``, ``system``).
    :param scope: what ``used_bytes`` measures: ``cgroup`` or ``process``.
    """

    used_bytes: int
    limit_bytes: int
    source: str
    scope: str


class _Layout(NamedTuple):
    version: str
    base: Path
    relative: str | None
    limit_file: str
    usage_file: str
    inactive_keys: tuple[str, ...]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _own_cgroup_paths(self_cgroup: Path) -> tuple[str | None, str | None]:
    """The process's cgroup path in the v2 hierarchy and in the v1 memory controller."""
    text = _read_text(self_cgroup)
    v2 = v1 = None
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _walk_up(base: Path, relative: str | None) -> list[Path]:
    """The process's cgroup directory and every ancestor up to ``base``.

    Inside a container the hierarchy is usually mounted at the container's own cgroup,
    so the path named in ``/proc/self/cgroup`` may not exist under the mount; its
    ancestors, and the mount's root, do.
    """
    found: list[Path] = []
    parts = [p for p in (relative or "").split("/") if p]
    while True:
        candidate = base.joinpath(*parts)
        if candidate not in found:
            found.append(candidate)
        if not parts:
            return found
        parts.pop()


def _parse_limit(text: str | None, *, v1: bool) -> int | None:
    if text is None or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    if value <= 0 or (v1 and value >= _V1_UNLIMITED):
        return None
    return value


def _layouts(root: Path, self_cgroup: Path) -> tuple[_Layout, _Layout]:
    v2_path, v1_path = _own_cgroup_paths(self_cgroup)
    return (
        _Layout("cgroup v2", root, v2_path, "memory.max", "memory.current", ("inactive_file",)),
        _Layout(
            "cgroup v1",
            root / "memory",
            v1_path,
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            ("total_inactive_file", "inactive_file"),
        ),
    )


def _limited(layout: _Layout) -> list[tuple[Path, int]]:
    """Each directory of the process's cgroup and its ancestors that has a limit."""
    v1 = layout.version == "cgroup v1"
    return [
        (directory, limit)
        for directory in _walk_up(layout.base, layout.relative)
        if (limit := _parse_limit(_read_text(directory / layout.limit_file), v1=v1)) is not None
    ]


def _inactive_file(stat: Path, keys: tuple[str, ...]) -> int:
    """Reclaimable file cache from ``memory.stat`` (0 when it cannot be read)."""
    fields: dict[str, str] = {}
    for line in (_read_text(stat) or "").splitlines():
        name, _, value = line.partition(" ")
        fields[name] = value
    for key in keys:
        try:
            return max(0, int(fields[key]))
        except (KeyError, ValueError):
            continue
    return 0


def cgroup_memory_limit(
    root: str | os.PathLike[str] = CGROUP_ROOT,
    self_cgroup: str | os.PathLike[str] = PROC_SELF_CGROUP,
) -> MemoryLimit | None:
    """The memory limit of the process's cgroup, or ``None`` when there is none.

    cgroup v2 (``memory.max``) first, then v1 (``memory/memory.limit_in_bytes``). The
    process's own cgroup and its ancestors are read (the smallest limit applies).
    """
    for layout in _layouts(Path(root), Path(self_cgroup)):
        limits = [limit for _, limit in _limited(layout)]
        if limits:
            return MemoryLimit(min(limits), layout.version)
    return None


def cgroup_memory_usage(
    root: str | os.PathLike[str] = CGROUP_ROOT,
    self_cgroup: str | os.PathLike[str] = PROC_SELF_CGROUP,
) -> MemoryUsage | None:
    """The usage of the process's cgroup against its limit, or ``None`` without a limit.

    Of the cgroup and its ancestors that have a limit and a readable usage, the one whose
    usage is the largest share of its limit. Usage leaves out ``inactive_file``: page
    cache the kernel reclaims before it would hit the limit.
    """
    for layout in _layouts(Path(root), Path(self_cgroup)):
        readings: list[tuple[int, int]] = []
        for directory, limit in _limited(layout):
            current = _read_int(directory / layout.usage_file)
            if current is None:
                continue
            inactive = _inactive_file(directory / "memory.stat", layout.inactive_keys)
            readings.append((max(0, current - inactive), limit))
        if readings:
            used, limit = max(readings, key=lambda reading: reading[0] / reading[1])
            return MemoryUsage(used, limit, layout.version, "cgroup")
    return None


def system_memory(meminfo: str | os.PathLike[str] = PROC_MEMINFO) -> int | None:
    """Total memory of the machine in bytes (``/proc/meminfo``, else psutil when installed)."""
    text = _read_text(Path(meminfo))
    for line in (text or "").splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            try:
                return int(fields[1]) * (1024 if fields[-1].lower() == "kb" else 1)
            except (IndexError, ValueError):
                break
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().total)


def memory_limit(
    root: str | os.PathLike[str] = CGROUP_ROOT,
    self_cgroup: str | os.PathLike[str] = PROC_SELF_CGROUP,
    meminfo: str | os.PathLike[str] = PROC_MEMINFO,
) -> MemoryLimit | None:
    """The limit that applies to this process: its cgroup's, capped at the machine's total."""
    total = system_memory(meminfo)
    cgroup = cgroup_memory_limit(root, self_cgroup)
    if cgroup is not None and (total is None or cgroup.limit_bytes < total):
        return cgroup
    return MemoryLimit(total, "system") if total is not None else None


def resident_memory(statm: str | os.PathLike[str] = PROC_SELF_STATM) -> int | None:
    """Resident memory of this process in bytes (``/proc/self/statm``, else psutil)."""
    text = _read_text(Path(statm))
    if text:
        try:
            return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (IndexError, ValueError, OSError):
            pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def memory_usage(
    root: str | os.PathLike[str] = CGROUP_ROOT,
    self_cgroup: str | os.PathLike[str] = PROC_SELF_CGROUP,
    meminfo: str | os.PathLike[str] = PROC_MEMINFO,
    statm: str | os.PathLike[str] = PROC_SELF_STATM,
) -> MemoryUsage | None:
    """What the memory check compares: the cgroup's usage against its limit when it has
    one (capped at the machine's total), else the process's resident memory against the
    machine's total. ``None`` when nothing can be measured."""
    cgroup = cgroup_memory_usage(root, self_cgroup)
    total = system_memory(meminfo)
    if cgroup is not None:
        if total is not None and total < cgroup.limit_bytes:
            return cgroup._replace(limit_bytes=total, source="system")
        return cgroup
    rss = resident_memory(statm)
    limit = memory_limit(root, self_cgroup, meminfo)
    if rss is None or limit is None or limit.limit_bytes <= 0:
        return None
    return MemoryUsage(rss, limit.limit_bytes, limit.source, "process")
