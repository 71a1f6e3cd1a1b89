"""Multiprocess mode: the directory, the process's own clean-up, and the fast reader.

With ``PROMETHEUS_MULTIPROC_DIR`` set (before prometheus_client is imported, as
gunicorn's config module :mod:`flask_gateway_obs.gunicorn` makes sure), the values
live in that directory's files and ``/metrics`` reports the total over every worker:
through :class:`MultiprocessReader` on the fast path, through prometheus_client's
``MultiProcessCollector`` on the public path (see
:mod:`flask_gateway_obs._compat.prometheus_client`).
"""

from __future__ import annotations

import atexit
import bisect
import glob
import json
import logging
import os
import struct
import tempfile
from collections.abc import Mapping

from ..core import process
from .exposition import (
    ExemplarRecord,
    Exemplars,
    Family,
    bound_of,
    exemplar_text,
    format_value,
    label_string,
    le_string,
)

__all__ = [
    "MultiprocessReader",
    "check_directory",
    "forget_process",
    "multiprocess_dir",
    "multiprocess_dir_setting",
]

_log = logging.getLogger("flask_gateway_obs.metrics")


def check_directory(path: str) -> str | None:
    """Create ``path`` if needed and prove it writable; the problem, or ``None``."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", suffix=".tmp"):
            pass
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def multiprocess_dir_setting() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR``, if set and not empty."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def forget_process(path: str | None = None) -> None:
    """Remove the live-gauge files of this process from the multiprocess directory.

    What ``child_exit`` does for a gunicorn worker (``mark_process_dead``), done by
    the process itself; registered to run at exit in every process that uses the
    directory, so that one that is not a server worker (a CLI command, a script)
    leaves no in-flight count, breaker state or health result behind. Counters and
    histograms stay: their totals must survive the process.
    """
    path = path or multiprocess_dir_setting()
    if not path:
        return
    try:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]
    except Exception:  # at exit, or racing the master's child_exit: never fail
        _log.debug("removing this process's live metric files failed", exc_info=True)


def _forget_process_at_exit(path: str) -> None:
    # One exit hook per process: a reset forgets the registry entry, and the hook
    # registered again then replaces the earlier one instead of adding a second.
    def install() -> str:
        atexit.unregister(forget_process)
        atexit.register(forget_process, path)
        return path

    process.registry("metrics.forget_process_at_exit", install)


def multiprocess_dir() -> str | None:
    """The directory this process shares its metrics through, or ``None`` (one process).

    :raises RuntimeError: when prometheus_client is in multiprocess mode but the
        directory is unset or unusable.
    """
    from prometheus_client import values

    path = multiprocess_dir_setting()
    in_mp_mode = values.ValueClass is not values.MutexValue
    if path and not in_mp_mode:
        _log.warning(
            "PROMETHEUS_MULTIPROC_DIR is set but prometheus_client was imported before it "
            "was: this process keeps its metrics to itself and /metrics shows one worker. "
            "Set the variable in the environment that starts the server."
        )
        return None
    if not in_mp_mode:
        return None
    if not path:
        raise RuntimeError(
            "prometheus_client is in multiprocess mode but PROMETHEUS_MULTIPROC_DIR is no "
            "longer set; keep it set for the life of the process"
        )
    problem = check_directory(path)
    if problem is not None:
        raise RuntimeError(
            f"PROMETHEUS_MULTIPROC_DIR={path!r} is not a writable directory ({problem}); "
            "metrics cannot be shared between workers. Create it (writable by the "
            "workers' user) or unset the variable for a single-process server."
        )
    _forget_process_at_exit(path)
    return path


# --- the fast reader -------------------------------------------------------------------

_HEADER = struct.Struct("i")
_SUM, _MIN, _MAX, _RECENT = 0, 1, 2, 3
_GAUGE_OPS = {
    "sum": _SUM,
    "livesum": _SUM,
    "all": _SUM,  # one series per pid: summing a single value is a copy
    "liveall": _SUM,
    "min": _MIN,
    "livemin": _MIN,
    "max": _MAX,
    "livemax": _MAX,
    "mostrecent": _RECENT,
    "livemostrecent": _RECENT,
}
_MAX_KEYS = 200_000


class _MpSeries:
    """One line of a counter, gauge or summary family: its slot and its line prefix."""

    __slots__ = ("prefix", "slot")

    def __init__(self, slot: int, prefix: str) -> None:
        self.slot = slot
        self.prefix = prefix


class _MpHistogram:
    """One label set of a histogram: bucket slots sorted by bound, and the sum slot."""

    __slots__ = ("bounds", "buckets", "count_prefix", "labels", "sum_prefix", "sum_slot")

    def __init__(self, name: str, labels: str, values: Mapping[str, str]) -> None:
        #: The series' labels (``le`` aside), to find its exemplars.
        self.labels = dict(values)
        braces = f"{{{labels}}}" if labels else ""
        self.count_prefix = f"{name}_count{braces} "
        self.sum_prefix = f"{name}_sum{braces} "
        self.sum_slot = -1
        self.bounds: list[float] = []
        self.buckets: list[tuple[int, str]] = []


class _MpFamily:
    __slots__ = ("help", "histograms", "name", "series", "type")

    def __init__(self, name: str, type_: str, help_: str) -> None:
        self.name = name
        self.type = type_
        self.help = help_
        self.series: list[_MpSeries] = []
        self.histograms: dict[str, _MpHistogram] = {}


class _Layout:
    """Where the values sit in one metric file, for one ``(inode, used size)`` of it.

    The inode tells a file that was removed and written anew under the same name (a
    dead worker's live gauge, then a new process with the same pid) from the old one,
    though both may have the same size and different keys at the same offsets.
    """

    __slots__ = ("identity", "op", "slots", "struct")

    def __init__(
        self, identity: tuple[int, int, int], op: int, slots: list[int], unpack: struct.Struct
    ) -> None:
        #: ``(st_dev, st_ino, used)`` of the file the layout was parsed from.
        self.identity = identity
        self.op = op
        self.slots = slots
        self.struct = unpack


class MultiprocessReader:
    """Merges the metric files of every worker in ``PROMETHEUS_MULTIPROC_DIR``.

    Gives the same numbers as prometheus_client's ``MultiProcessCollector``
    (counters and histograms summed over every process that ever ran, gauges
    by their multiprocess mode) but keeps, per file, where each value sits: a
    file whose inode and used size have not changed since the last scrape is read
    with a single ``struct.unpack``, and each series' line prefix is built once.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._families: dict[str, _MpFamily] = {}
        self._slots: dict[tuple[str, str], int] = {}
        self._series: dict[tuple[str, str, float | None], int] = {}
        self._nslots = 0
        self._layouts: dict[str, _Layout] = {}
        self._recent_slots: set[int] = set()
        self._warned: set[str] = set()

    def families(self, exemplars: Exemplars | None = None) -> list[Family]:
        """The merged families of every metric file in the directory.

        :param exemplars: this process's exemplars of one histogram family, shown on
            its bucket lines (OpenMetrics).
        """
        acc: list[float] = [0.0] * self._nslots
        present: set[int] = set()
        extreme: dict[int, float] = {}
        recent: dict[int, float] = {}
        paths = glob.glob(os.path.join(self.path, "*.db"))
        if len(self._layouts) > len(paths):  # files removed (dead workers): forget them
            existing = set(paths)
            for gone in [p for p in self._layouts if p not in existing]:
                del self._layouts[gone]
        for path in paths:
            read = self._read(path)
            if read is None:
                continue
            layout, values = read
            if len(acc) < self._nslots:
                acc.extend([0.0] * (self._nslots - len(acc)))
            slots = layout.slots
            present.update(slots)
            op = layout.op
            if op == _SUM:
                for slot, value in zip(slots, values[::2], strict=False):
                    acc[slot] += value
            elif op == _RECENT:
                for slot, value, stamp in zip(slots, values[::2], values[1::2], strict=False):
                    if stamp > recent.get(slot, 0.0):
                        recent[slot] = stamp
                        acc[slot] = value
            else:
                for slot, value in zip(slots, values[::2], strict=False):
                    current = extreme.get(slot)
                    if current is None or (value < current if op == _MIN else value > current):
                        extreme[slot] = value
        for slot, value in extreme.items():
            acc[slot] = value
        if self._recent_slots:
            # Like prometheus_client: a mostrecent gauge that was never set has no sample.
            present -= self._recent_slots - recent.keys()
        return [
            self._family(f, acc, present, exemplars if f.name == name else None)
            for name in [exemplars.name if exemplars is not None else None]
            for f in self._families.values()
        ]

    def _family(
        self,
        family: _MpFamily,
        acc: list[float],
        present: set[int],
        exemplars: Exemplars | None,
    ) -> Family:
        lines: list[str] = []
        append = lines.append
        for series in family.series:
            if series.slot in present:
                append(series.prefix + format_value(acc[series.slot]))
        for hist in family.histograms.values():
            if hist.sum_slot not in present and not any(s in present for s, _ in hist.buckets):
                continue
            records = _records(exemplars, hist)
            total = 0.0
            for bound, (slot, prefix) in zip(hist.bounds, hist.buckets, strict=True):
                if slot in present:
                    total += acc[slot]
                    record = records.get(bound) if records is not None else None
                    if record is None:
                        append(prefix + format_value(total))
                    else:
                        append(prefix + format_value(total) + exemplar_text(record))
            append(hist.count_prefix + format_value(total))
            if hist.sum_slot in present:
                append(hist.sum_prefix + format_value(acc[hist.sum_slot]))
        return Family(family.name, family.type, family.help, lines)

    # -- files ---------------------------------------------------------------------

    def _read(self, path: str) -> tuple[_Layout, tuple[float, ...]] | None:
        try:
            with open(path, "rb") as handle:
                data = handle.read(65536)
                if len(data) < 8:
                    return None
                used = _HEADER.unpack_from(data, 0)[0]
                if used > len(data):
                    data += handle.read(used - len(data))
                stat = os.fstat(handle.fileno())
        except FileNotFoundError:
            return None  # a live gauge's file removed by mark_process_dead meanwhile
        except OSError as exc:
            self._warn_once(path, f"metric file unreadable: {exc}")
            return None
        used = min(used, len(data))
        identity = (stat.st_dev, stat.st_ino, used)
        layout = self._layouts.get(path)
        if layout is None or layout.identity != identity:
            layout = self._parse(path, data, identity)
            if layout is None:
                return None
            self._layouts[path] = layout
        try:
            return layout, layout.struct.unpack_from(data, 0)
        except struct.error:
            self._layouts.pop(path, None)
            return None

    def _parse(self, path: str, data: bytes, identity: tuple[int, int, int]) -> _Layout | None:
        used = identity[2]
        name = os.path.basename(path)[:-3]
        parts = name.split("_")
        kind = parts[0]
        if kind == "gauge" and len(parts) >= 3:
            mode, pid = parts[1], parts[-1]
            op = _GAUGE_OPS.get(mode)
            if op is None:
                return None
        elif kind in ("counter", "histogram", "summary") and len(parts) >= 2:
            mode, pid, op = "", parts[-1], _SUM
        else:
            return None
        fmt: list[str] = ["="]
        slots: list[int] = []
        offset = 0
        pos = 8
        while pos < used:
            if pos + 4 > used:
                break
            length = _HEADER.unpack_from(data, pos)[0]
            if length < 0 or pos + 4 + length > used:
                self._warn_once(path, "metric file is corrupt; reading what precedes the damage")
                break
            key = data[pos + 4 : pos + 4 + length].decode("utf-8", "replace")
            pos += 4 + length + (8 - (length + 4) % 8)
            if pos + 16 > used:
                break
            slot = self._slot(key, kind, mode, pid)
            if slot is not None:
                if pos > offset:
                    fmt.append(f"{pos - offset}x")
                fmt.append("dd")
                offset = pos + 16
                slots.append(slot)
            pos += 16
        return _Layout(identity, op, slots, struct.Struct("".join(fmt)))

    def _slot(self, key: str, kind: str, mode: str, pid: str) -> int | None:
        per_pid = mode in ("all", "liveall")
        cache_key = (key, pid if per_pid else "")
        slot = self._slots.get(cache_key)
        if slot is not None:
            return slot
        if len(self._slots) >= _MAX_KEYS:
            self._warn_once(self.path, f"more than {_MAX_KEYS} series; the rest are left out")
            return None
        try:
            metric_name, sample_name, labels, help_text = json.loads(key)
            labels = {str(k): str(v) for k, v in labels.items()}
        except (ValueError, TypeError, AttributeError):
            return None
        if per_pid:
            labels["pid"] = pid
        le = labels.pop("le", None) if kind == "histogram" else None
        names = sorted(labels)
        label_text = label_string(names, [labels[k] for k in names])
        bound = bound_of(le) if le is not None else None
        # One series per sample name and labels, whatever else differs in the key (help).
        identity = (sample_name, label_text, bound)
        slot = self._series.get(identity)
        if slot is None:
            slot = self._new_series(
                metric_name, sample_name, kind, str(help_text), (label_text, labels), bound
            )
            self._series[identity] = slot
            if kind == "gauge" and _GAUGE_OPS[mode] == _RECENT:
                self._recent_slots.add(slot)
        self._slots[cache_key] = slot
        return slot

    def _new_series(
        self,
        metric_name: str,
        sample_name: str,
        kind: str,
        help_text: str,
        series_labels: tuple[str, dict[str, str]],
        bound: float | None,
    ) -> int:
        label_text, labels = series_labels
        family = self._families.get(metric_name)
        if family is None:
            family = self._families[metric_name] = _MpFamily(metric_name, kind, help_text)
        slot = self._nslots
        self._nslots += 1
        if kind != "histogram":
            prefix = f"{sample_name}{{{label_text}}} " if label_text else f"{sample_name} "
            family.series.append(_MpSeries(slot, prefix))
            return slot
        hist = family.histograms.get(label_text)
        if hist is None:
            hist = family.histograms[label_text] = _MpHistogram(metric_name, label_text, labels)
        if bound is None:
            hist.sum_slot = slot
        else:
            sep = "," if label_text else ""
            prefix = f'{metric_name}_bucket{{{label_text}{sep}le="{le_string(bound)}"}} '
            index = bisect.bisect_right(hist.bounds, bound)
            hist.bounds.insert(index, bound)
            hist.buckets.insert(index, (slot, prefix))
        return slot

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            _log.warning("%s (%s)", message, what)


def _records(exemplars: Exemplars | None, hist: _MpHistogram) -> dict[float, ExemplarRecord] | None:
    """The exemplars of one histogram series by bucket bound, if it has any."""
    if exemplars is None:
        return None
    records = exemplars.lookup(hist.labels)
    if records is None:
        return None
    found: dict[float, ExemplarRecord] = {}
    for bound in hist.bounds:
        index = exemplars.index(bound)
        record = records[index] if index is not None and index < len(records) else None
        if record is not None:
            found[bound] = record
    return found
