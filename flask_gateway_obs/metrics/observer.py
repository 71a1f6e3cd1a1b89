"""Per request: the observer of the WSGI step, its exemplars, and the error counter.

:class:`HttpMetrics` is a :class:`~flask_gateway_obs.core.contracts.RequestObserver`:
one dict lookup finds the cached metric children of the request's ``(method, route,
status)``; on the fast path (see :mod:`flask_gateway_obs._compat.prometheus_client`)
it adds to their values directly, on the public path it calls ``inc()`` and
``observe()``. A sampled request (its trace flags say so) also leaves its trace ID
as the exemplar of the duration bucket it fell in.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flask import request

from .._compat import prometheus_client as compat
from ..labels import OTHER_METHOD, STANDARD_METHODS, UNMATCHED_ROUTE
from .exposition import ExemplarRecord

if TYPE_CHECKING:
    from ..core.context import RequestContext
    from ..core.contracts import ErrorInfo
    from .recorder import MetricsRecorder

__all__ = ["ErrorCounter", "ExemplarStore", "HttpMetrics"]

_SKIP = object()
_bisect = bisect.bisect_left
_now = time.time
#: W3C trace flags (two hex digits) with the ``sampled`` bit set.
_SAMPLED = frozenset(
    text for flags in range(1, 256, 2) for text in (f"{flags:02x}", f"{flags:02X}")
)
_TRACE_ID_LENGTH = 32


class ExemplarStore:
    """The latest exemplar of each bucket of the duration histogram, per (method, route).

    Written for sampled requests only, shown in OpenMetrics only. Each process keeps
    its own: in multiprocess mode a scrape carries the exemplars of the worker that
    answered it, while the counts are every worker's.
    """

    def __init__(self, name: str, bounds: Sequence[float]) -> None:
        #: The histogram family's name.
        self.name = name
        self.bounds = list(bounds)
        self._index = {bound: i for i, bound in enumerate(self.bounds)}
        self._series: dict[tuple[str, str], list[ExemplarRecord | None]] = {}
        self._lock = threading.Lock()

    def slots(self, method: str, route: str) -> list[ExemplarRecord | None]:
        """The (shared, mutable) exemplar slots of one series, one per bucket."""
        key = (method, route)
        found = self._series.get(key)
        if found is None:
            with self._lock:
                found = self._series.setdefault(key, [None] * len(self.bounds))
        return found

    def lookup(self, labels: Mapping[str, str]) -> Sequence[ExemplarRecord | None] | None:
        """The slots of the series with these ``method`` and ``route`` labels, if any."""
        return self._series.get((labels.get("method", ""), labels.get("route", "")))

    def index(self, bound: float) -> int | None:
        """The slot of the bucket whose upper bound is ``bound``."""
        return self._index.get(bound)


class HttpMetrics:
    """The request observer: ``http_requests_total``, the duration histogram, in-flight.

    :param in_flight: returns the in-flight gauge, creating it on first call.
    :param lazy_in_flight: wait for the first request to call ``in_flight`` (in
        multiprocess mode creating the gauge writes this process's file).
    :param excluded: routes (rule templates) not counted; a live set, so paths
        other concerns add later are honoured.
    """

    def __init__(
        self,
        requests: Any,
        duration: Any,
        bounds: Sequence[float],
        in_flight: Callable[[], Any],
        *,
        lazy_in_flight: bool,
        fast: bool,
        excluded: set[str],
        name: str,
    ) -> None:
        self._requests = requests
        self._duration = duration
        self._bounds = list(bounds)
        self._fast = fast
        self._in_flight = in_flight
        self.exemplars = ExemplarStore(name, self._bounds)
        #: Held while a request's values change, when they are changed directly (the
        #: fast path in one process): one lock for all of a request's updates.
        self._values_lock = threading.Lock()
        self._gauge: compat.PlainGauge | None = None
        self._file_gauge: compat.FileGauge | None = None
        self._in_flight_inc: Callable[[float], None] = self._first_in_flight
        if not lazy_in_flight:
            self._in_flight_inc = self._adder(in_flight())
        self._excluded = excluded
        self._entries: dict[tuple[str, str, int], Any] = {}
        self._lock = threading.Lock()

    @property
    def fast_path(self) -> bool:
        """Whether requests are counted through prometheus_client's internals."""
        return self._fast

    def request_started(self, ctx: RequestContext) -> None:
        # Routing has not happened yet: the extension's own endpoints (a scrape in
        # progress) are recognised by their exact path.
        if ctx.environ.get("PATH_INFO") not in self._excluded:
            ctx.in_flight = True
            self._in_flight_inc(1.0)

    def request_finished(
        self, ctx: RequestContext, method: str, route: str | None, status: int, duration: float
    ) -> None:
        in_flight = ctx.in_flight
        ctx.in_flight = False  # the gauge returns to idle whatever the request became
        if method not in STANDARD_METHODS:
            method = OTHER_METHOD
        entry: Any = _SKIP
        if route is not None or ctx.environ.get("PATH_INFO") not in self._excluded:
            # (No rule matched, 404 or 405: an endpoint of ours is still recognised by
            # its path, so POST /metrics is never counted.)
            if route is None:
                route = UNMATCHED_ROUTE
            entry = self._entries.get((method, route, status))
            if entry is None:
                entry = self._entry(method, route, status)
        if entry is _SKIP:
            if in_flight:
                self._in_flight_inc(-1.0)
            return
        count, observe, buckets, bounds, slots = entry
        if count is None:  # a Plain/FileSeries: every value in one step, in flight included
            observe.record(duration, in_flight)
            if in_flight and observe.gauge is None:
                self._in_flight_inc(-1.0)
        else:
            if in_flight:
                self._in_flight_inc(-1.0)
            count(1.0)
            observe(duration)
            if buckets is not None:
                buckets[_bisect(bounds, duration)](1.0)
        trace_id = ctx.trace_id
        if (
            trace_id is not None
            and ctx.trace_flags in _SAMPLED
            and len(trace_id) == _TRACE_ID_LENGTH
        ):
            slots[_bisect(self._bounds, duration)] = (trace_id, duration, _now())

    def _first_in_flight(self, amount: float) -> None:
        adder = self._adder(self._in_flight())
        self._in_flight_inc = adder
        adder(amount)

    def _adder(self, gauge: Any) -> Callable[[float], None]:
        if self._fast:
            try:
                self._gauge = compat.PlainGauge(gauge, self._values_lock)
                return self._gauge.add
            except AttributeError:  # multiprocess mode: its values are file entries
                pass
            try:
                self._file_gauge = compat.FileGauge(gauge)
                return self._file_gauge.add
            except AttributeError:  # pragma: no cover - a changed prometheus_client
                pass
            try:
                return compat.value_adder(gauge)
            except AttributeError:  # pragma: no cover - a changed prometheus_client
                self._fast = False
        inc: Callable[[float], None] = gauge.inc
        return inc

    def _entry(self, method: str, route: str, status: int) -> Any:
        key = (method, route, status)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                return entry
            if route in self._excluded:
                entry = _SKIP
            else:
                counter = self._requests.labels(method, route, str(status))
                histogram = self._duration.labels(method, route)
                slots = self.exemplars.slots(method, route)
                entry = (counter.inc, histogram.observe, None, self._bounds, slots)
                if self._fast:
                    entry = self._fast_entry(counter, histogram, slots) or entry
            self._entries[key] = entry
            return entry

    def _fast_entry(self, counter: Any, histogram: Any, slots: Any) -> Any:
        try:
            series = compat.PlainSeries(counter, histogram, self._gauge, self._values_lock)
            if series.bounds == self._bounds:
                return (None, series, None, self._bounds, slots)
        except AttributeError:  # multiprocess mode: its values are file entries
            pass
        try:
            files = compat.FileSeries(counter, histogram, self._file_gauge)
            if files.bounds == self._bounds:
                return (None, files, None, self._bounds, slots)
        except AttributeError:  # pragma: no cover - a changed prometheus_client
            pass
        try:
            add_sum, add_buckets, bounds = compat.histogram_updaters(histogram)
            if bounds != self._bounds:
                raise AttributeError("bucket bounds differ")
            return (compat.value_adder(counter), add_sum, add_buckets, self._bounds, slots)
        except AttributeError:  # pragma: no cover - a changed prometheus_client
            self._fast = False
            return None


class ErrorCounter:
    """Error listener: counts each handled error once in ``errors_total{type,source}``."""

    def __init__(self, recorder: MetricsRecorder, excluded: set[str]) -> None:
        self._recorder = recorder
        self._excluded = excluded

    def __call__(self, info: ErrorInfo) -> None:
        if request:
            rule = request.url_rule
            excluded = self._excluded
            if (rule.rule if rule is not None else request.environ.get("PATH_INFO")) in excluded:
                return  # an endpoint of ours, whatever the method (a 405 has no rule)
        error = info.error
        cause = getattr(error, "original_exception", None) or error
        self._recorder.error(type(cause).__name__, info.source)
