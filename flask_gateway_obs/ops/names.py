"""The metric names the dashboard and the rules read, and how a namespace prefixes them.

One list, so the dashboard's queries, the rules and the renaming under
``GATEWAY_OBS_METRICS_NAMESPACE`` agree on which names are the extension's.
"""

from __future__ import annotations

import functools
import re

__all__ = ["FAMILIES", "metric", "prefix_metric_names", "sample_names"]

#: Every family the extension exposes (or will expose when its concern is on), by type.
FAMILIES: dict[str, str] = {
    "http_requests_total": "counter",
    "http_request_duration_seconds": "histogram",
    "errors_total": "counter",
    "active_connections": "gauge",
    "dependency_latency_seconds": "histogram",
    "circuit_breaker_state": "gauge",
    "circuit_breaker_calls_total": "counter",
    "circuit_breaker_failure_rate": "gauge",
    "retry_attempts_total": "counter",
    "rate_limit_exceeded_total": "counter",
    "bulkhead_in_use": "gauge",
    "bulkhead_rejected_total": "counter",
    "health_check_status": "gauge",
    "tracing_spans_dropped_total": "counter",
    "app_info": "gauge",
}


def sample_names() -> list[str]:
    """The series names PromQL sees for :data:`FAMILIES` (``_bucket``, ``_count``, ``_sum``
    for histograms)."""
    names: list[str] = []
    for family, kind in FAMILIES.items():
        if kind == "histogram":
            names.extend(f"{family}_{suffix}" for suffix in ("bucket", "count", "sum"))
        else:
            names.append(family)
    return names


def metric(namespace: str | None, name: str) -> str:
    """``name`` as exposed under ``namespace`` (joined with ``_``, as prometheus_client does)."""
    return f"{namespace}_{name}" if namespace else name


@functools.lru_cache(maxsize=1)
def _pattern() -> re.Pattern[str]:
    names = sorted(sample_names(), key=len, reverse=True)
    alternatives = "|".join(re.escape(n) for n in names)
    return re.compile(rf"(?<![A-Za-z0-9_:])({alternatives})(?![A-Za-z0-9_:])")


def prefix_metric_names(text: str, namespace: str | None) -> str:
    """Every name of :func:`sample_names` in ``text`` (a PromQL expression or prose) with
    the namespace prefix; other identifiers (``up``, label names) are left alone."""
    if not namespace:
        return text
    return _pattern().sub(lambda m: metric(namespace, m.group(1)), text)
