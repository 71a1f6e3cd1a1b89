"""Prometheus metrics: collectors on a per-app registry, the request observer, ``/metrics``.

Per request the extension's WSGI step calls :class:`HttpMetrics` (an observer):
one dict lookup finds the cached metric children of the request's
``(method, route, status)``. Breakers, retries, rate limits and health checks
report through :class:`MetricsRecorder`, set as ``state.recorder``.

Labels are bounded by construction: ``route`` is the URL rule template or
``<unmatched>``, ``method`` a standard method or ``OTHER``, and every label fed
by a recorder call is capped in how many distinct values it takes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (before prometheus_client is imported, as
gunicorn's config module :mod:`flask_gateway_obs.gunicorn` makes sure), the
values live in that directory's files and ``/metrics`` reports the total over
every worker.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import functools
import gzip
import hmac
import inspect
import ipaddress
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Blueprint, Flask, Response, current_app, has_app_context, request
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
    PlatformCollector,
    ProcessCollector,
    values,
)
from prometheus_client.core import InfoMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from . import errors
from .core.contracts import Recorder
from .core.state import EXTENSION_KEY
from .errors import ErrorInfo
from .exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    Family,
    MetricWalker,
    MultiprocessReader,
    escape_label_value,
    render,
    supports_fast_path,
    wants_openmetrics,
)
from .labels import OTHER_METHOD, STANDARD_METHODS, UNMATCHED_ROUTE, normalize_path

if TYPE_CHECKING:
    from .core.context import RequestContext
    from .core.state import Extension, ObsState

__all__ = [
    "OTHER_METHOD",
    "UNMATCHED_ROUTE",
    "AppMetrics",
    "DependencyTracker",
    "HttpMetrics",
    "MetricsRecorder",
    "forget_process",
    "init_app",
    "normalize_path",
    "track_dependency",
]

#: Distinct label sets a recorder-fed metric takes before folding new ones into ``other``.
LABEL_SET_LIMIT = 500
#: Longest label value a recorder call may set; longer ones are cut.
LABEL_VALUE_MAX = 128
HEALTH_VALUES = {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}

_log = logging.getLogger("flask_gateway_obs.metrics")
_SKIP = object()
#: Set on every collector the extension creates: ``/metrics`` renders its own and leaves
#: those of other apps on a shared registry (``GATEWAY_OBS_METRICS_REGISTRY=global``) out.
_OWNED_ATTRIBUTE = "_flask_gateway_obs_collector"
#: The clock of :class:`DependencyTracker` (tests replace it).
_clock: Callable[[], float] = time.perf_counter
_F = TypeVar("_F", bound=Callable[..., Any])


# --- bounded children ---------------------------------------------------------------


class _Children:
    """Children of one labelled metric cached by label values, at most ``limit`` of them."""

    __slots__ = ("_cache", "_limit", "_lock", "_metric", "_overflow", "_warned")

    def __init__(self, metric: Any, limit: int | None = None) -> None:
        self._metric = metric
        self._limit = LABEL_SET_LIMIT if limit is None else limit
        self._cache: dict[tuple[str, ...], Any] = {}
        self._overflow: Any = None
        self._warned = False
        self._lock = threading.Lock()

    def get(self, *labelvalues: str) -> Any:
        child = self._cache.get(labelvalues)
        if child is None:
            child = self._create(labelvalues)
        return child

    def _create(self, labelvalues: tuple[str, ...]) -> Any:
        clean = tuple(_label_value(v) for v in labelvalues)
        with self._lock:
            if len(self._cache) < self._limit:
                child = self._metric.labels(*clean)
                self._cache[labelvalues] = child
                return child
            if self._overflow is None:
                self._overflow = self._metric.labels(*["other"] * len(clean))
            if not self._warned:
                self._warned = True
                _log.warning(
                    "metric %s reached %d label sets; further ones are counted as 'other'",
                    self._metric._name,
                    self._limit,
                )
            return self._overflow


def _label_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= LABEL_VALUE_MAX else text[:LABEL_VALUE_MAX]


# --- the recorder ------------------------------------------------------------------


class MetricsRecorder(Recorder):
    """The real :class:`~flask_gateway_obs.extension.Recorder`: each call updates a metric.

    Every method contains its own failures: instrumentation never breaks a caller.
    """

    def __init__(self, metrics: AppMetrics) -> None:
        self.metrics = metrics
        self._errors = _Children(metrics.errors)
        self._dependencies = _Children(metrics.dependency_latency)
        self._breakers = _Children(metrics.breaker_state)
        self._retries = _Children(metrics.retry_attempts)
        self._rate_limited = _Children(metrics.rate_limit_exceeded)
        self._health = _Children(metrics.health_status)

    def error(self, error_type: str, source: str) -> None:
        """Count one error in ``errors_total{type,source}``."""
        try:
            self._errors.get(error_type, source).inc()
        except Exception:
            _log.debug("metrics: error() failed", exc_info=True)

    def dependency(self, dependency: str, operation: str, seconds: float, failed: bool) -> None:
        """Observe one call in ``dependency_latency_seconds``; a failure also counts in
        ``errors_total{type="DependencyError",source="dependency"}``."""
        self.observe_dependency(
            dependency, operation, seconds, "DependencyError" if failed else None
        )

    def observe_dependency(
        self, dependency: str, operation: str, seconds: float, error_type: str | None
    ) -> None:
        """Like :meth:`dependency`, counting a failure under its exception class name."""
        try:
            self._dependencies.get(dependency, operation).observe(max(0.0, float(seconds)))
            if error_type is not None:
                self._errors.get(error_type, "dependency").inc()
        except Exception:
            _log.debug("metrics: dependency() failed", exc_info=True)

    def breaker_state(self, breaker: str, state: int) -> None:
        """Set ``circuit_breaker_state{breaker}``: 0 closed, 1 open, 2 half-open."""
        try:
            self._breakers.get(breaker).set(state)
        except Exception:
            _log.debug("metrics: breaker_state() failed", exc_info=True)

    def retry_attempt(self, operation: str, outcome: str) -> None:
        """Count ``retry_attempts_total{operation,outcome}``."""
        try:
            self._retries.get(operation, outcome).inc()
        except Exception:
            _log.debug("metrics: retry_attempt() failed", exc_info=True)

    def rate_limit_exceeded(self, route: str) -> None:
        """Count ``rate_limit_exceeded_total{route}``."""
        try:
            self._rate_limited.get(route).inc()
        except Exception:
            _log.debug("metrics: rate_limit_exceeded() failed", exc_info=True)

    def health_check(self, check: str, status: str) -> None:
        """Set ``health_check_status{check}``: 1 healthy, 0.5 degraded, 0 unhealthy (or unknown)."""
        try:
            value = HEALTH_VALUES.get(str(status).lower(), 0.0)
            self._health.get(check).set(value)
        except Exception:
            _log.debug("metrics: health_check() failed", exc_info=True)


# --- per request -------------------------------------------------------------------


class HttpMetrics:
    """The request observer: ``http_requests_total``, the duration histogram, in-flight.

    :param excluded: routes (rule templates) not counted; a live set, so paths
        other concerns add later are honoured.
    """

    def __init__(self, metrics: AppMetrics, excluded: set[str]) -> None:
        self._requests = metrics.requests
        self._duration = metrics.duration
        self._fast = metrics.fast
        in_flight = metrics.in_flight
        self._in_flight_inc: Callable[[float], None] = (
            in_flight._value.inc if metrics.fast else in_flight.inc
        )
        self._excluded = excluded
        self._entries: dict[tuple[str, str, int], Any] = {}
        self._lock = threading.Lock()

    def request_started(self, ctx: RequestContext) -> None:
        # Routing has not happened yet: the extension's own endpoints (a scrape in
        # progress) are recognised by their exact path.
        if ctx.environ.get("PATH_INFO") not in self._excluded:
            ctx.in_flight = True
            self._in_flight_inc(1.0)

    def request_finished(
        self, ctx: RequestContext, method: str, route: str | None, status: int, duration: float
    ) -> None:
        if ctx.in_flight:  # the gauge returns to idle whatever the request became
            ctx.in_flight = False
            self._in_flight_inc(-1.0)
        if method not in STANDARD_METHODS:
            method = OTHER_METHOD
        if route is None:
            # No rule matched (404, or 405 for a wrong method): an endpoint of ours
            # is still recognised by its path, so POST /metrics is never counted.
            if ctx.environ.get("PATH_INFO") in self._excluded:
                return
            route = UNMATCHED_ROUTE
        entry = self._entries.get((method, route, status))
        if entry is None:
            entry = self._entry(method, route, status)
        if entry is _SKIP:
            return
        count, observe, buckets, bounds = entry
        count(1.0)
        observe(duration)
        if buckets is not None:
            buckets[bisect.bisect_left(bounds, duration)](1.0)

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
                entry = (counter.inc, histogram.observe, None, None)
                if self._fast:
                    try:
                        entry = (
                            counter._value.inc,
                            histogram._sum.inc,
                            [b.inc for b in histogram._buckets],
                            list(histogram._upper_bounds),
                        )
                    except AttributeError:  # pragma: no cover - a changed prometheus_client
                        self._fast = False
            self._entries[key] = entry
            return entry


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


# --- the app's metrics -----------------------------------------------------------------

#: Our collectors on ``prometheus_client.REGISTRY`` (``GATEWAY_OBS_METRICS_REGISTRY=global``):
#: a later app replaces an earlier one's instead of failing with duplicated timeseries.
_global_collectors: list[Any] = []
_global_lock = threading.Lock()


class _AppInfo:
    """``app_info{service,version} 1``: constant, so every worker reports it alike."""

    def __init__(self, name: str, service: str, version: str) -> None:
        setattr(self, _OWNED_ATTRIBUTE, True)
        self.name = name
        self.labels = {"service": service, "version": version}
        self.help = "Service name and version of the app (always 1)."

    def describe(self) -> Iterator[InfoMetricFamily]:
        return self.collect()

    def collect(self) -> Iterator[InfoMetricFamily]:
        yield InfoMetricFamily(self.name, self.help, value=self.labels)

    def family(self) -> Family:
        labels = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in self.labels.items())
        return Family(self.name, "info", self.help, [f"{self.name}_info{{{labels}}} 1.0"])


class AppMetrics:
    """Every collector of one app, the observer, the recorder and the exposition."""

    def __init__(self, state: ObsState) -> None:
        settings = state.settings
        self.settings = settings
        self.multiprocess_dir = _multiprocess_dir()
        if settings.metrics_registry == "global":
            self.registry: CollectorRegistry = REGISTRY
        else:
            self.registry = CollectorRegistry(auto_describe=True)
        ns = settings.metrics_namespace or ""
        self.namespace = ns
        created: list[Any] = []

        def build(cls: Any, name: str, doc: str, labels: tuple[str, ...] = (), **kw: Any) -> Any:
            metric = cls(name, doc, labels, namespace=ns, registry=None, **kw)
            setattr(metric, _OWNED_ATTRIBUTE, True)
            created.append(metric)
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
        self.in_flight = build(
            Gauge if self.multiprocess_dir is None else _DeferredGauge,
            "active_connections",
            "Requests being served right now (summed over live workers).",
            multiprocess_mode="livesum",
        )
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
        self.health_status = build(
            Gauge,
            "health_check_status",
            "Last result of each health check: 1 healthy, 0.5 degraded, 0 unhealthy.",
            ("check",),
            multiprocess_mode="livemostrecent",
        )
        info_name = f"{ns}_app" if ns else "app"
        self.app_info = _AppInfo(info_name, state.service, settings.service_version or "unknown")
        self.fast = supports_fast_path(self.requests, self.in_flight, self.duration)
        self._register(created)
        self._collectors: list[Any] = [*created, self.app_info]
        self._walkers = [MetricWalker(m) for m in created] if self.fast else []
        self._reader = MultiprocessReader(self.multiprocess_dir) if self.multiprocess_dir else None
        self._render_lock = threading.RLock()  # one render at a time: the reader keeps state
        self._cache: dict[tuple[bool, bool], tuple[float, bytes]] = {}
        self._known_samples = self._sample_names(created)

        self.recorder = MetricsRecorder(self)
        internal = state.internal_paths
        metrics_path = {settings.metrics_path} if settings.metrics_endpoint else set()
        excluded = metrics_path if settings.metrics_count_internal else internal
        self.http = HttpMetrics(self, excluded)
        self.error_counter = ErrorCounter(self.recorder, excluded)

    def _register(self, created: list[Any]) -> None:
        collectors = [*created, self.app_info]
        if self.registry is REGISTRY:
            with _global_lock:
                if _global_collectors:
                    _log.info("replacing an earlier app's metrics on the global registry")
                for old in _global_collectors:
                    with contextlib.suppress(KeyError):
                        REGISTRY.unregister(old)
                _global_collectors.clear()
                self._register_all(collectors)
                _global_collectors.extend(collectors)
            return
        self._register_all(collectors)
        if self.multiprocess_dir is None:
            # Process metrics describe the one process; in multiprocess mode they'd mislead.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def _register_all(self, collectors: list[Any]) -> None:
        done: list[Any] = []
        try:
            for collector in collectors:
                self.registry.register(collector)
                done.append(collector)
        except ValueError as exc:
            for collector in done:
                self.registry.unregister(collector)
            raise RuntimeError(
                f"cannot register the extension's metrics: {exc}. Another collector on "
                "that registry uses the same name; set GATEWAY_OBS_METRICS_NAMESPACE or "
                "GATEWAY_OBS_METRICS_REGISTRY=app."
            ) from exc

    @staticmethod
    def _sample_names(metrics: list[Any]) -> set[str]:
        names: set[str] = set()
        for metric in metrics:
            name = metric._name
            if metric._type == "counter":
                names.add(name + "_total")
            elif metric._type == "histogram":
                names.update((name + "_bucket", name + "_count", name + "_sum"))
            else:
                names.add(name)
        return names

    # -- exposition ----------------------------------------------------------------

    def families(self) -> list[Family]:
        """Our families with their current values (merged over workers in multiprocess)."""
        if self._reader is not None:
            # A process that is scraped serves requests: its in-flight file may exist now.
            self.in_flight._value.materialise()
            families = self._reader.families()
        else:
            families = [walker.family() for walker in self._walkers]
        families.append(self.app_info.family())
        return families

    def _others(self) -> list[Any]:
        """Collectors on the registry that are not the extension's, rendered by
        prometheus_client. Ours are left out whichever app made them: on the global
        registry an earlier app's scrape must not repeat a later app's families."""
        registry = self.registry
        try:
            with registry._lock:
                collectors = list(registry._collector_to_names)
        except AttributeError:  # pragma: no cover - a prometheus_client without it
            return [registry]
        others = [c for c in collectors if not getattr(c, _OWNED_ATTRIBUTE, False)]
        if self._reader is not None:
            default = (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR)
            others = [
                c
                for c in others
                if not isinstance(c, MetricWrapperBase) and all(c is not d for d in default)
            ]
        return others

    def render(self, openmetrics: bool) -> bytes:
        """The exposition in the text format or OpenMetrics."""
        with self._render_lock:
            return self._render(openmetrics)

    def _render(self, openmetrics: bool) -> bytes:
        if self.fast or self._reader is not None:
            try:
                return render(self.families(), self._others(), openmetrics=openmetrics)
            except AttributeError:  # pragma: no cover - a changed prometheus_client
                _log.warning("fast metrics rendering failed; using prometheus_client's")
                self.fast = False
                if self._reader is not None:
                    raise
        return render((), [*self._collectors, *self._others()], openmetrics=openmetrics)

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

    # -- the endpoint --------------------------------------------------------------

    def blueprint(self) -> Blueprint:
        """The blueprint that serves the exposition at ``GATEWAY_OBS_METRICS_PATH``."""
        blueprint = Blueprint("gateway_obs_metrics", __name__)
        blueprint.add_url_rule(
            self.settings.metrics_path,
            endpoint="metrics",
            view_func=MetricsEndpoint(self),
            methods=["GET"],
        )
        return blueprint


class MetricsEndpoint:
    """The ``/metrics`` view: protection, content negotiation, gzip."""

    def __init__(self, metrics: AppMetrics) -> None:
        settings = metrics.settings
        self.metrics = metrics
        self._token = settings.metrics_token.encode("utf-8") if settings.metrics_token else None
        self._networks = [ipaddress.ip_network(n) for n in settings.metrics_allowed_networks]
        self._type_base = settings.error_type_base

    def __call__(self) -> Response:
        if self._networks and not self._address_allowed(request.remote_addr):
            _log.info("metrics scrape refused: address not allowed")
            return self._refuse(errors.ForbiddenError("This address may not read the metrics."), {})
        if self._token is not None and not self._token_ok(request.headers.get("Authorization")):
            _log.info("metrics scrape refused: missing or wrong token")
            return self._refuse(
                errors.UnauthorizedError("A valid bearer token is required to read the metrics."),
                {"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        openmetrics = wants_openmetrics(request.headers.get("Accept"))
        compress = request.accept_encodings["gzip"] > 0
        body = self.metrics.exposition(openmetrics, compress)
        response = Response(
            body, content_type=CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT
        )
        if compress:
            response.headers["Content-Encoding"] = "gzip"
        response.headers["Vary"] = "Accept, Accept-Encoding"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _address_allowed(self, remote: str | None) -> bool:
        if not remote:
            return False
        try:
            address = ipaddress.ip_address(remote.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def _token_ok(self, header: str | None) -> bool:
        if not header or self._token is None:
            return False
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8"), self._token)

    def _refuse(self, error: errors.AppError, headers: dict[str, str]) -> Response:
        # Rendered here rather than raised: a refused scrape is neither an app error
        # to count nor one to send to Sentry.
        info = errors.describe(error)
        body = errors.problem_body(info, self._type_base)
        return errors.problem_response(body, info.status, headers)


# --- multiprocess ---------------------------------------------------------------------


class _DeferredValue:
    """A multiprocess gauge value whose file is written on first use, not at creation.

    prometheus_client writes an unlabelled metric's file as the metric is created. In
    a process that loads the app without serving it (``flask obs health``, ``flask
    shell``, a script) that file would outlive the process, as no ``child_exit`` is
    ever called for it.
    """

    __slots__ = ("_factory", "_lock", "_value")

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._value: Any = None
        self._lock = threading.Lock()

    def materialise(self) -> Any:
        """The real value, created (with its file) if it is not yet."""
        value = self._value
        if value is None:
            with self._lock:
                value = self._value
                if value is None:
                    value = self._value = self._factory()
        return value

    def inc(self, amount: float) -> None:
        self.materialise().inc(amount)

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.materialise().set(value, timestamp)

    def get(self) -> float:
        value = self._value
        return 0.0 if value is None else float(value.get())

    def set_exemplar(self, exemplar: Any) -> None:
        """Multiprocess values keep no exemplars."""

    def get_exemplar(self) -> None:
        return None


class _DeferredGauge(Gauge):
    """An unlabelled :class:`~prometheus_client.Gauge` whose multiprocess file is
    written when it is first changed (or the process is first scraped)."""

    def _metric_init(self) -> None:
        params = (
            self._type,
            self._name,
            self._name,
            self._labelnames,
            self._labelvalues,
            self._documentation,
        )
        mode = self._multiprocess_mode
        self._value = _DeferredValue(lambda: values.ValueClass(*params, multiprocess_mode=mode))


_exit_hook_lock = threading.Lock()
_exit_hook_installed = False


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
    global _exit_hook_installed
    with _exit_hook_lock:
        if not _exit_hook_installed:
            _exit_hook_installed = True
            atexit.register(forget_process, path)


def multiprocess_dir_setting() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR``, if set and not empty."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _multiprocess_dir() -> str | None:
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


# --- dependencies ---------------------------------------------------------------------


class DependencyTracker:
    """Times calls to a dependency in ``dependency_latency_seconds{dependency,operation}``.

    Use as a context manager (one per ``with``) or as a decorator (sync or async);
    an exception leaving the block counts in ``errors_total{type=<class>,source="dependency"}``
    and propagates unchanged. The app is looked up when the call happens, so the
    decorator may be applied at import time.
    """

    __slots__ = ("_error_type", "_resolve", "_start", "dependency", "operation")

    def __init__(
        self, resolve: Callable[[], Recorder | None], dependency: str, operation: str
    ) -> None:
        self._resolve = resolve
        self.dependency = dependency
        self.operation = operation
        self._start = 0.0
        self._error_type: str | None = None

    def mark_failed(self, error_type: str = "DependencyError") -> None:
        """Count this call as failed though nothing was raised (e.g. an upstream 5xx)."""
        self._error_type = error_type

    def __enter__(self) -> DependencyTracker:
        self._error_type = None
        self._start = _clock()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        seconds = _clock() - self._start
        error_type = self._error_type
        if exc_type is not None and issubclass(exc_type, Exception):
            error_type = exc_type.__name__
        self._report(seconds, error_type)

    def _report(self, seconds: float, error_type: str | None) -> None:
        try:
            recorder = self._resolve()
        except Exception:
            recorder = None
        if recorder is None:
            return
        if isinstance(recorder, MetricsRecorder):
            recorder.observe_dependency(self.dependency, self.operation, seconds, error_type)
        else:
            recorder.dependency(self.dependency, self.operation, seconds, error_type is not None)

    def __call__(self, func: _F) -> _F:
        if inspect.iscoroutinefunction(func):
            return cast(_F, self._wrap_async(func))

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = _clock()
            error_type = None
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                error_type = type(exc).__name__
                raise
            finally:
                self._report(_clock() - start, error_type)

        return cast(_F, timed)

    def _wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(func)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = _clock()
            error_type = None
            try:
                return await func(*args, **kwargs)
            except Exception as exc:
                error_type = type(exc).__name__
                raise
            finally:
                self._report(_clock() - start, error_type)

        return timed


def _recorder_of(obs: Extension | None) -> Recorder | None:
    if obs is not None:
        try:
            return obs.state().recorder
        except RuntimeError:
            return None
    if has_app_context():
        state = current_app.extensions.get(EXTENSION_KEY)
        recorder = getattr(state, "recorder", None)
        return recorder if isinstance(recorder, Recorder) else None
    return None


def track_dependency(
    dependency: str, operation: str = "call", *, obs: Extension | None = None
) -> DependencyTracker:
    """A :class:`DependencyTracker` for the app of ``obs`` (or the current app).

    :param dependency: a fixed name such as ``"payments"`` or ``"redis"``.
    :param operation: a bounded name such as ``"GET /charges/{id}"``; build it from
        an outgoing URL with :func:`normalize_path`, never from the raw URL.
    """
    return DependencyTracker(functools.partial(_recorder_of, obs), dependency, operation)


def check_directory(path: str) -> str | None:
    """Create ``path`` if needed and prove it writable; the problem, or ``None``."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", suffix=".tmp"):
            pass
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


# --- wiring -----------------------------------------------------------------------------


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
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise RuntimeError("flask-gateway-obs is not set up on this app (call init_app)")
    recorder = getattr(state, "recorder", None)
    if not isinstance(recorder, MetricsRecorder):
        raise RuntimeError("metrics are disabled on this app (GATEWAY_OBS_METRICS_ENABLED)")
    return recorder.metrics
