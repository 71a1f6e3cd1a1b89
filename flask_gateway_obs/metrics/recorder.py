"""The recorder: how breakers, retries, rate limits and health checks reach the metrics.

:class:`MetricsRecorder` is the real :class:`~flask_gateway_obs.core.contracts.Recorder`,
set as ``state.recorder`` when metrics are on. Every label it is fed is bounded: at
most :data:`LABEL_SET_LIMIT` label sets per metric (further ones fold into ``other``)
and values cut at :data:`LABEL_VALUE_MAX` characters. It goes through the metrics'
public API (``labels()``, ``inc()``, ``observe()``, ``set()``): none of it is per request.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..core.contracts import Recorder

__all__ = [
    "HEALTH_VALUES",
    "LABEL_SET_LIMIT",
    "LABEL_VALUE_MAX",
    "BoundedChildren",
    "MetricsRecorder",
]

#: Distinct label sets a recorder-fed metric takes before folding new ones into ``other``.
LABEL_SET_LIMIT = 500
#: Longest label value a recorder call may set; longer ones are cut.
LABEL_VALUE_MAX = 128
HEALTH_VALUES = {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}

_log = logging.getLogger("flask_gateway_obs.metrics")


class BoundedChildren:
    """Children of one labelled metric cached by label values, at most ``limit`` of them.

    :param name: the metric's name, for the one warning when the limit is reached.
    """

    __slots__ = ("_cache", "_limit", "_lock", "_metric", "_name", "_overflow", "_warned")

    def __init__(self, metric: Any, name: str, limit: int = LABEL_SET_LIMIT) -> None:
        self._metric = metric
        self._name = name
        self._limit = limit
        self._cache: dict[tuple[str, ...], Any] = {}
        self._overflow: Any = None
        self._warned = False
        self._lock = threading.Lock()

    def get(self, *labelvalues: str) -> Any:
        """The child for these label values (``other`` for every one past the limit)."""
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
                    self._name,
                    self._limit,
                )
            return self._overflow


def _label_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= LABEL_VALUE_MAX else text[:LABEL_VALUE_MAX]


class MetricsRecorder(Recorder):
    """The real recorder: each call updates a metric of ``metrics``.

    Every method contains its own failures: instrumentation never breaks a caller.

    :param metrics: an :class:`~flask_gateway_obs.metrics.AppMetrics`.
    :param label_limit: label sets per metric before new ones fold into ``other``.
    """

    def __init__(self, metrics: Any, label_limit: int = LABEL_SET_LIMIT) -> None:
        self.metrics = metrics

        def bounded(metric: Any) -> BoundedChildren:
            return BoundedChildren(metric, metrics.spec_of(metric).name, label_limit)

        self._errors = bounded(metrics.errors)
        self._dependencies = bounded(metrics.dependency_latency)
        self._breakers = bounded(metrics.breaker_state)
        self._breaker_calls = bounded(metrics.breaker_calls)
        self._breaker_rates = bounded(metrics.breaker_failure_rate)
        self._bulkheads = bounded(metrics.bulkhead_in_use)
        self._bulkhead_rejections = bounded(metrics.bulkhead_rejected)
        self._retries = bounded(metrics.retry_attempts)
        self._rate_limited = bounded(metrics.rate_limit_exceeded)
        self._health = bounded(metrics.health_status)
        self._spans_dropped = bounded(metrics.spans_dropped)

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

    def breaker_call(self, breaker: str, outcome: str) -> None:
        """Count ``circuit_breaker_calls_total{breaker,outcome}``."""
        try:
            self._breaker_calls.get(breaker, outcome).inc()
        except Exception:
            _log.debug("metrics: breaker_call() failed", exc_info=True)

    def breaker_failure_rate(self, breaker: str, rate: float) -> None:
        """Set ``circuit_breaker_failure_rate{breaker}`` (0 to 1)."""
        try:
            self._breaker_rates.get(breaker).set(rate)
        except Exception:
            _log.debug("metrics: breaker_failure_rate() failed", exc_info=True)

    def bulkhead_in_use(self, bulkhead: str, calls: int) -> None:
        """Set ``bulkhead_in_use{bulkhead}``."""
        try:
            self._bulkheads.get(bulkhead).set(calls)
        except Exception:
            _log.debug("metrics: bulkhead_in_use() failed", exc_info=True)

    def bulkhead_rejected(self, bulkhead: str) -> None:
        """Count ``bulkhead_rejected_total{bulkhead}``."""
        try:
            self._bulkhead_rejections.get(bulkhead).inc()
        except Exception:
            _log.debug("metrics: bulkhead_rejected() failed", exc_info=True)

    def retry_attempt(self, operation: str, outcome: str) -> None:
        """Count ``retry_attempts_total{operation,outcome}``."""
        try:
            self._retries.get(operation, outcome).inc()
        except Exception:
            _log.debug("metrics: retry_attempt() failed", exc_info=True)

    def spans_dropped(self, count: int, reason: str) -> None:
        """Count ``tracing_spans_dropped_total{reason}``."""
        try:
            self._spans_dropped.get(reason).inc(count)
        except Exception:
            _log.debug("metrics: spans_dropped() failed", exc_info=True)

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
