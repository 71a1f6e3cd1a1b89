"""prometheus_client internals read by the metrics' hot path and fast renderer.

Verified with prometheus_client 0.20.0 to 0.26.0, every minor release in between:

- the hot path adds to a metric child's value objects directly (``_value.inc`` of a
  counter or gauge, ``_sum.inc`` and ``_buckets[i].inc`` of a histogram child), which
  is what ``inc()`` and ``observe()`` end in, without their per-call checks; in one
  process it adds to their floats under one lock (:class:`PlainSeries`), in
  multiprocess mode it writes their file entries under prometheus_client's own lock,
  once per request instead of once per value and without its process-id system call
  per value (:class:`FileSeries`; a forked child lets prometheus_client move to its
  own files first);
- the fast renderer reads the children (``_metrics`` under ``_lock``) and their values
  (``_value``, ``_sum``, ``_buckets``, ``_upper_bounds``) instead of building a
  ``Sample`` per line through ``collect()``;
- :class:`flask_gateway_obs.metrics.multiprocess.MultiprocessReader` reads the layout
  of the multiprocess files (``mmap_dict``) itself.

Outside those versions, when the internals are not as expected, or when the
environment variable ``FGO_PUBLIC_PATH`` names ``prometheus_client`` (or ``all``), the
metrics take the public path: ``inc()``/``observe()``, ``collect()`` and prometheus_client's
own renderers and ``MultiProcessCollector``. The numbers are the same; requests and
scrapes cost more. The choice is logged once at info level.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from ..core import process
from .versions import PUBLIC_PATH_ENV, installed, public_path_forced, release

__all__ = [
    "PUBLIC_PATH_ENV",
    "VERIFIED",
    "FileGauge",
    "FileSeries",
    "PlainGauge",
    "PlainSeries",
    "fast_path",
    "histogram_updaters",
    "histogram_values",
    "value_adder",
    "values_of",
]

#: Lowest and highest ``(major, minor)`` release the internals were verified with.
VERIFIED = ((0, 20), (0, 26))

_log = logging.getLogger("flask_gateway_obs.metrics")

Adder = Callable[[float], None]
_bisect = bisect.bisect_left


def fast_path() -> bool:
    """Whether the internals may be read; decided (and logged) once per process."""
    return bool(process.registry("compat.prometheus_client", _decide))


def _decide() -> bool:
    version = installed("prometheus_client")
    reason = public_path_reason(version)
    if reason is None:
        return True
    _log.info(
        "prometheus_client %s: %s; metrics use its public API (same numbers, slower "
        "requests and scrapes)",
        version or "(unknown version)",
        reason,
    )
    return False


def public_path_reason(version: str | None) -> str | None:
    """Why the public path must be taken with ``version`` here, or ``None``."""
    if public_path_forced({"all", "prometheus_client", "prometheus-client"}):
        return f"{PUBLIC_PATH_ENV} asks for the public path"
    low, high = VERIFIED
    found = release(version)
    if found is None or not low <= found <= high:
        return "outside the versions verified for the fast path (0.20 to 0.26)"
    if not _internals_present():
        return "its internals differ from those of the verified versions"
    return None


def _internals_present() -> bool:
    # Labelled metrics without children: in multiprocess mode a child is a file entry.
    from prometheus_client import Counter, Histogram

    counter = Counter("compat_probe", "probe", ["label"], registry=None)
    histogram = Histogram("compat_probe_seconds", "probe", ["label"], registry=None)
    return (
        isinstance(getattr(counter, "_metrics", None), dict)
        and hasattr(counter, "_lock")
        and isinstance(getattr(histogram, "_upper_bounds", None), list)
    )


# --- the hot path --------------------------------------------------------------------


def value_adder(metric: Any) -> Adder:
    """What ``inc(amount)`` of an unlabelled counter or gauge (or a child) ends in.

    :raises AttributeError: when the metric is not as the verified versions make it.
    """
    adder: Adder = metric._value.inc
    return adder


class PlainGauge:
    """An in-process gauge (or child) changed under a lock shared with
    :class:`PlainSeries`: its ``MutexValue``'s float ``_value`` is added to directly,
    which only this module does; readers take the value's own lock and read one float,
    which the GIL keeps whole.

    :raises AttributeError: in multiprocess mode (the value is a file entry) or when the
        value is not as the verified versions make it.
    """

    __slots__ = ("lock", "value")

    def __init__(self, gauge: Any, lock: threading.Lock) -> None:
        self.value = _plain(gauge._value)
        self.lock = lock

    def add(self, amount: float) -> None:
        """What ``inc(amount)`` does, under the shared lock."""
        lock = self.lock
        lock.acquire()
        try:
            self.value._value += amount
        finally:
            lock.release()


class PlainSeries:
    """One request series: a counter child and a histogram child, changed together
    under one lock (and the in-flight gauge with them) instead of one ``with`` block
    per ``inc``. See :class:`PlainGauge`.

    :raises AttributeError: as :class:`PlainGauge`.
    """

    __slots__ = ("bounds", "buckets", "count", "gauge", "lock", "sum")

    def __init__(
        self, counter: Any, histogram: Any, gauge: PlainGauge | None, lock: threading.Lock
    ) -> None:
        self.count = _plain(counter._value)
        self.sum = _plain(histogram._sum)
        self.buckets = [_plain(bucket) for bucket in histogram._buckets]
        self.bounds = list(histogram._upper_bounds)
        self.gauge = gauge.value if gauge is not None else None
        self.lock = lock

    def record(self, duration: float, leaving: bool) -> None:
        """``inc()`` the counter and ``observe(duration)`` the histogram; one less in
        flight too when ``leaving`` (and the gauge is plain)."""
        index = _bisect(self.bounds, duration)
        gauge = self.gauge
        lock = self.lock
        lock.acquire()
        try:
            if leaving and gauge is not None:
                gauge._value -= 1.0
            self.count._value += 1.0
            self.sum._value += duration
            self.buckets[index]._value += 1.0
        finally:
            lock.release()


def _plain(value: Any) -> Any:
    from prometheus_client.values import MutexValue

    if type(value) is not MutexValue or type(value._value) is not float:
        raise AttributeError("not an in-process MutexValue")
    return value


#: Bumped in a forked child, whose file entries prometheus_client must move first.
_generation = 0
_watching_forks = False


def _forked() -> None:
    global _generation
    _generation += 1


def _file_value(value: Any) -> Any:
    """``value`` if it is a multiprocess ``MmapedValue`` as the verified versions make it."""
    cls = type(value)
    if cls.__name__ != "MmapedValue" or not getattr(cls, "_multiprocess", False):
        raise AttributeError("not a multiprocess MmapedValue")
    value._file.write_value  # noqa: B018 (raises AttributeError when it is not there)
    if type(value._key) is not str or type(value._value) is not float:
        raise AttributeError("not a multiprocess MmapedValue")
    return value


def _file_lock(value: Any) -> Any:
    """The lock every ``MmapedValue`` of ``value``'s kind takes (a free variable of ``inc``)."""
    inc = type(value).inc
    try:
        cell = inc.__closure__[inc.__code__.co_freevars.index("lock")]
    except (TypeError, ValueError) as exc:
        raise AttributeError("MmapedValue.inc has no lock") from exc
    lock = cell.cell_contents
    if not (hasattr(lock, "acquire") and hasattr(lock, "release")):
        raise AttributeError("MmapedValue.inc has no lock")
    return lock


def _watch_forks() -> None:
    global _watching_forks
    if not _watching_forks:
        _watching_forks = True
        os.register_at_fork(after_in_child=_forked)


class FileGauge:
    """A multiprocess gauge (or child): its file entry written under prometheus_client's
    lock, as ``inc()`` does, without the process-id check per call (a fork is noticed
    through :func:`os.register_at_fork`, and prometheus_client then moves to the child's
    own files before anything is written).

    :raises AttributeError: in one process, or when the value is not as the verified
        versions make it.
    """

    __slots__ = ("lock", "value")

    def __init__(self, gauge: Any) -> None:
        self.value = _file_value(gauge._value)
        self.lock = _file_lock(self.value)
        _watch_forks()

    def add(self, amount: float) -> None:
        """What ``inc(amount)`` does."""
        if _moved != _generation:
            _follow_fork(self.value)
        value = self.value
        lock = self.lock
        lock.acquire()
        try:
            value._value += amount
            value._file.write_value(value._key, value._value, 0.0)
        finally:
            lock.release()


#: The fork generation prometheus_client's files were last checked at.
_moved = 0


def _follow_fork(value: Any) -> None:
    """After a fork: prometheus_client's own check (any value's ``get()``) moves every
    value to this process's files."""
    global _moved
    generation = _generation
    value.get()
    _moved = generation


class FileSeries:
    """One request series in multiprocess mode: a counter child and a histogram child
    (and the in-flight gauge) written together under prometheus_client's one lock.
    See :class:`FileGauge`.

    :raises AttributeError: as :class:`FileGauge`.
    """

    __slots__ = ("bounds", "buckets", "count", "gauge", "lock", "sum")

    def __init__(self, counter: Any, histogram: Any, gauge: FileGauge | None) -> None:
        self.count = _file_value(counter._value)
        self.sum = _file_value(histogram._sum)
        self.buckets = [_file_value(bucket) for bucket in histogram._buckets]
        self.bounds = list(histogram._upper_bounds)
        self.lock = _file_lock(self.count)
        if gauge is not None and gauge.lock is not self.lock:
            raise AttributeError("the gauge's values take another lock")
        self.gauge = gauge.value if gauge is not None else None
        _watch_forks()

    def record(self, duration: float, leaving: bool) -> None:
        """``inc()`` the counter and ``observe(duration)`` the histogram; one less in
        flight too when ``leaving`` (and the gauge is a file gauge)."""
        if _moved != _generation:
            _follow_fork(self.count)
        bucket = self.buckets[_bisect(self.bounds, duration)]
        count = self.count
        total = self.sum
        gauge = self.gauge
        lock = self.lock
        lock.acquire()
        try:
            if leaving and gauge is not None:
                gauge._value -= 1.0
                gauge._file.write_value(gauge._key, gauge._value, 0.0)
            count._value += 1.0
            count._file.write_value(count._key, count._value, 0.0)
            total._value += duration
            total._file.write_value(total._key, total._value, 0.0)
            bucket._value += 1.0
            bucket._file.write_value(bucket._key, bucket._value, 0.0)
        finally:
            lock.release()


def histogram_updaters(child: Any) -> tuple[Adder, list[Adder], list[float]]:
    """``(sum.inc, [bucket.inc, ...], upper bounds)`` of a histogram child, whose
    ``observe(v)`` is ``sum.inc(v)`` and ``buckets[bisect_left(bounds, v)].inc(1)``.

    :raises AttributeError: when the child is not as the verified versions make it.
    """
    return child._sum.inc, [bucket.inc for bucket in child._buckets], list(child._upper_bounds)


# --- the fast renderer ---------------------------------------------------------------


def _children(metric: Any, labelled: bool) -> list[tuple[tuple[str, ...], Any]]:
    if not labelled:
        return [((), metric)]
    with metric._lock:
        return list(metric._metrics.items())


def values_of(metric: Any, labelled: bool) -> list[tuple[tuple[str, ...], float]]:
    """``(label values, value)`` of every child of a counter or gauge."""
    return [(labels, child._value.get()) for labels, child in _children(metric, labelled)]


def histogram_values(
    metric: Any, labelled: bool
) -> list[tuple[tuple[str, ...], list[float], list[float], float]]:
    """``(label values, upper bounds, bucket counts (not cumulated), sum)`` per child."""
    return [
        (labels, child._upper_bounds, [b.get() for b in child._buckets], child._sum.get())
        for labels, child in _children(metric, labelled)
    ]
