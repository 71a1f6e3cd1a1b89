"""The app's metrics: its collectors on a registry, the exposition, ``init_app``.

Every metric of the contract is made here with prometheus_client's public classes and
put on the app's registry (or ``prometheus_client.REGISTRY`` when the user opts in;
see :mod:`.registry`). ``/metrics`` renders them on the fast path (read through
:mod:`flask_gateway_obs._compat.prometheus_client`) or through ``collect()``, and
appends the registry's other collectors, never a ``_created`` series.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Metric,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from .._compat import prometheus_client as compat
from ..core.state import state_of
from .endpoint import blueprint
from .exposition import Family, MetricSpec, MetricWalker, render, with_exemplars
from .multiprocess import MultiprocessReader, multiprocess_dir
from .observer import ErrorCounter, HttpMetrics
from .recorder import MetricsRecorder
from .registry import AppInfo, family_name, other_families, register

if TYPE_CHECKING:
    from ..core.state import ObsState

__all__ = ["AppMetrics", "app_metrics", "init_app"]

_log = logging.getLogger("flask_gateway_obs.metrics")


class _InFlight:
    """The in-flight gauge as a collector, before and after it exists."""

    def __init__(self, metrics: AppMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        spec = self.metrics.in_flight_spec
        return [GaugeMetricFamily(spec.name, spec.help)]

    def collect(self) -> Iterable[Metric]:
        return self.metrics.in_flight().collect()


class AppMetrics:
    """Every collector of one app, the observer, the recorder and the exposition."""

    def __init__(self, state: ObsState) -> None:
        settings = state.settings
        self.settings = settings
        self.multiprocess_dir = multiprocess_dir()
        #: Whether prometheus_client's internals are read (see ``_compat``).
        self.fast_path = compat.fast_path()
        if settings.metrics_registry == "global":
            self.registry: CollectorRegistry = REGISTRY
        else:
            self.registry = CollectorRegistry(auto_describe=True)
        ns = settings.metrics_namespace or ""
        self.namespace = ns
        #: ``(spec, metric)`` of each metric, in exposition order; ``None``: in flight.
        self._own: list[tuple[MetricSpec, Any]] = []
        self._specs: dict[int, MetricSpec] = {}

        def build(cls: Any, name: str, doc: str, labels: tuple[str, ...] = (), **kw: Any) -> Any:
            type_ = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}[cls]
            spec = MetricSpec(family_name(ns, name, type_), type_, doc, labels)
            metric = cls(name, doc, labels, namespace=ns, registry=None, **kw)
            self._own.append((spec, metric))
            self._specs[id(metric)] = spec
            return metric

        self.requests = build(
            Counter,
            "http_requests_total",
            "HTTP requests served, by method, route template and status code.",
            ("method", "route", "status"),
        )
        self.duration = build(
            Histogram,
            "http_request_duration_seconds",
            "Time from the start of the request to the response, in seconds.",
            ("method", "route"),
            buckets=settings.metrics_buckets,
        )
        self.errors = build(
            Counter,
            "errors_total",
            "Errors by exception class and source (http: handled by the app; dependency: "
            "a call to a dependency failed; ratelimit: the limiter's storage failed).",
            ("type", "source"),
        )
        # In multiprocess mode the gauge is made at the first request or scrape: an
        # unlabelled metric writes its file as it is made, and a process that only
        # loads the app (a CLI command) would leave that file behind.
        self.in_flight_spec = MetricSpec(
            family_name(ns, "active_connections", "gauge"),
            "gauge",
            "Requests being served right now (summed over live workers).",
            (),
        )
        self._in_flight: Gauge | None = None
        self._in_flight_lock = threading.Lock()
        self._own.append((self.in_flight_spec, None))
        if self.multiprocess_dir is None:
            self.in_flight()
        self.dependency_latency = build(
            Histogram,
            "dependency_latency_seconds",
            "Duration of calls to dependencies, in seconds, by dependency and operation.",
            ("dependency", "operation"),
            buckets=settings.metrics_dependency_buckets,
        )
        self.breaker_state = build(
            Gauge,
            "circuit_breaker_state",
            "State of each circuit breaker: 0 closed, 1 open, 2 half-open.",
            ("breaker",),
            multiprocess_mode="livemostrecent",
        )
        self.breaker_calls = build(
            Counter,
            "circuit_breaker_calls_total",
            "Calls through each circuit breaker by outcome: success (the dependency "
            "answered, a 4xx included), failure (counted against the breaker), rejected "
            "(refused while open, or with no half-open trial slot free).",
            ("breaker", "outcome"),
        )
        self.breaker_failure_rate = build(
            Gauge,
            "circuit_breaker_failure_rate",
            "Share (0 to 1) of failed calls in the window of each circuit breaker with a "
            "count: or time: window, per worker.",
            ("breaker",),
            multiprocess_mode="livemax",
        )
        self.bulkhead_in_use = build(
            Gauge,
            "bulkhead_in_use",
            "Calls running inside each bulkhead right now (summed over live workers).",
            ("bulkhead",),
            multiprocess_mode="livesum",
        )
        self.bulkhead_rejected = build(
            Counter,
            "bulkhead_rejected_total",
            "Calls refused by a full bulkhead (503) after waiting up to its max_wait.",
            ("bulkhead",),
        )
        self.retry_attempts = build(
            Counter,
            "retry_attempts_total",
            "Retries by operation and outcome: retry (one scheduled), then one success, "
            "failure (not retryable) or exhausted per call.",
            ("operation", "outcome"),
        )
        self.rate_limit_exceeded = build(
            Counter,
            "rate_limit_exceeded_total",
            "Requests refused with 429 by a rate limit, by route template.",
            ("route",),
        )
        self.spans_dropped = build(
            Counter,
            "tracing_spans_dropped_total",
            "Finished spans never exported: the export queue was full (queue_full) or the "
            "export failed (export_failed).",
            ("reason",),
        )
        self.health_status = build(
            Gauge,
            "health_check_status",
            "Last result of each health check: 1 healthy, 0.5 degraded, 0 unhealthy.",
            ("check",),
            multiprocess_mode="livemostrecent",
        )
        self.app_info = AppInfo(
            f"{ns}_app" if ns else "app", state.service, settings.service_version or "unknown"
        )
        self._register()
        self._render_lock = threading.RLock()  # one render at a time: the reader keeps state
        self._cache: dict[tuple[bool, bool], tuple[float, bytes]] = {}
        self._known_samples = {n for spec, _ in self._own for n in spec.sample_names()}
        self._default_names: set[str] | None = None

        self.recorder = MetricsRecorder(self)
        metrics_path = {settings.metrics_path} if settings.metrics_endpoint else set()
        excluded = metrics_path if settings.metrics_count_internal else state.internal_paths
        duration_spec = self.spec_of(self.duration)
        self.http = HttpMetrics(
            self.requests,
            self.duration,
            [*settings.metrics_buckets, math.inf],
            self.in_flight,
            lazy_in_flight=self.multiprocess_dir is not None,
            fast=self.fast_path,
            excluded=excluded,
            name=duration_spec.name,
        )
        self.error_counter = ErrorCounter(self.recorder, excluded)
        self._walkers: list[MetricWalker] = []
        self._reader: MultiprocessReader | None = None
        if self.fast_path and self.multiprocess_dir is not None:
            self._reader = MultiprocessReader(self.multiprocess_dir)
        elif self.fast_path:
            self._walkers = [
                MetricWalker(
                    spec,
                    self.in_flight() if metric is None else metric,
                    self.http.exemplars if metric is self.duration else None,
                )
                for spec, metric in self._own
            ]

    def spec_of(self, metric: Any) -> MetricSpec:
        """What the extension made ``metric`` with (its family name, type and labels)."""
        return self._specs[id(metric)]

    def in_flight(self) -> Gauge:
        """The ``active_connections`` gauge, made on first use."""
        gauge = self._in_flight
        if gauge is None:
            with self._in_flight_lock:
                gauge = self._in_flight
                if gauge is None:
                    gauge = self._in_flight = Gauge(
                        "active_connections",
                        self.in_flight_spec.help,
                        namespace=self.namespace,
                        registry=None,
                        multiprocess_mode="livesum",
                    )
        return gauge

    # -- the registry --------------------------------------------------------------

    def _register(self) -> None:
        sources = [_InFlight(self) if m is None else m for _, m in self._own]
        register(self.registry, [*sources, self.app_info])
        if self.registry is not REGISTRY and self.multiprocess_dir is None:
            # Process metrics describe the one process; in multiprocess mode they'd mislead.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # -- exposition ----------------------------------------------------------------

    def _fast_families(self, openmetrics: bool) -> list[Family]:
        exemplars = self.http.exemplars if openmetrics else None
        if self._reader is not None:
            self.in_flight()  # a process that is scraped serves: its in-flight file exists now
            families = self._reader.families(exemplars)
        else:
            families = [walker.family(openmetrics) for walker in self._walkers]
        families.append(self.app_info.family())
        return families

    def _public_families(self, openmetrics: bool) -> list[Metric]:
        if self.multiprocess_dir is not None:
            self.in_flight()
            files = MultiProcessCollector(None, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            collected = list(files.collect())  # type: ignore[no-untyped-call]
        else:
            metrics = [self.in_flight() if m is None else m for _, m in self._own]
            collected = [family for metric in metrics for family in metric.collect()]
        collected.extend(self.app_info.collect())
        if openmetrics:
            name = self.http.exemplars.name
            collected = [
                with_exemplars(m, self.http.exemplars) if m.name == name else m for m in collected
            ]
        return collected

    def _others(self, taken: set[str]) -> list[Metric]:
        """The families of the registry's other collectors (a user's own, process
        metrics), without any of the extension's, whichever app made them: on the
        global registry an earlier app's scrape must not repeat a later app's families."""
        collected = other_families(self.registry)
        others = [metric for metric in collected if metric.name not in taken]
        if self.multiprocess_dir is not None:
            # The workers' files hold every prometheus_client metric (``taken``); what
            # describes this one process only (process_*, python_*) is left out.
            skip = self._default_collector_names()
            others = [m for m in others if m.samples and m.name not in skip]
        return others

    def _default_collector_names(self) -> set[str]:
        if self._default_names is None:
            names: set[str] = set()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                with contextlib.suppress(Exception):
                    names.update(metric.name for metric in collector.collect())
            self._default_names = names
        return self._default_names

    def render(self, openmetrics: bool) -> bytes:
        """The exposition in the text format or OpenMetrics."""
        with self._render_lock:
            return self._render(openmetrics)

    def _render(self, openmetrics: bool) -> bytes:
        if self.fast_path:
            try:
                families = self._fast_families(openmetrics)
                others = self._others({family.name for family in families})
                return render(families, others, openmetrics=openmetrics)
            except AttributeError:  # pragma: no cover - a changed prometheus_client
                _log.warning("fast metrics rendering failed; using prometheus_client's")
                self.fast_path = False
        collected = self._public_families(openmetrics)
        others = self._others({metric.name for metric in collected})
        return render((), [*collected, *others], openmetrics=openmetrics)

    def exposition(self, openmetrics: bool, compress: bool) -> bytes:
        """:meth:`render`, gzipped if asked, reused for ``GATEWAY_OBS_METRICS_CACHE_SECONDS``."""
        ttl = self.settings.metrics_cache_seconds
        key = (openmetrics, compress)
        if ttl > 0:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
        with self._render_lock:  # concurrent scrapes wait for one render, then share it
            if ttl > 0:
                cached = self._cache.get(key)
                if cached is not None and cached[0] > time.monotonic():
                    return cached[1]
            body = self.render(openmetrics)
            if compress:
                body = gzip.compress(body, compresslevel=1, mtime=0)
            if ttl > 0:
                self._cache[key] = (time.monotonic() + ttl, body)
            return body

    def sample_value(self, name: str, labels: dict[str, str]) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (see
        :func:`flask_gateway_obs.testing.metric_value`)."""
        names = [name]
        if self.namespace and not name.startswith(self.namespace + "_"):
            names.append(f"{self.namespace}_{name}")
        text = self.render(False).decode("utf-8")
        total, named = 0.0, False
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in names:
                    named = True
                    if all(sample.labels.get(k) == v for k, v in labels.items()):
                        total += sample.value
        if not named and self._known_samples.isdisjoint(names):
            raise KeyError(
                f"no metric sample named {name!r}; the extension's are: "
                + ", ".join(sorted(self._known_samples))
            )
        return total

    def blueprint(self) -> Blueprint:
        """The blueprint that serves the exposition at ``GATEWAY_OBS_METRICS_PATH``."""
        return blueprint(self)


def init_app(app: Flask, state: ObsState) -> None:
    """Install the metrics of ``app``: recorder, observer, error listener, endpoint."""
    settings = state.settings
    if not settings.metrics_enabled:
        return
    if settings.metrics_endpoint:
        state.add_internal_path(settings.metrics_path)
    metrics = AppMetrics(state)
    state.recorder = metrics.recorder
    state.observers.append(metrics.http)
    state.error_listeners.append(metrics.error_counter)
    if settings.metrics_endpoint:
        app.register_blueprint(metrics.blueprint())


def app_metrics(app: Flask) -> AppMetrics:
    """The :class:`AppMetrics` of ``app``.

    :raises RuntimeError: if the extension is not set up on ``app`` or metrics are off.
    """
    state = state_of(app)
    if state is None:
        raise RuntimeError("flask-gateway-obs is not set up on this app (call init_app)")
    recorder = state.recorder
    if not isinstance(recorder, MetricsRecorder):
        raise RuntimeError("metrics are disabled on this app (GATEWAY_OBS_METRICS_ENABLED)")
    metrics: AppMetrics = recorder.metrics
    return metrics
