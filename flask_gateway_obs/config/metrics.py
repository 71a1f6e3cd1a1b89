"""Keys of the metrics (``GATEWAY_OBS_METRICS_*``)."""

from __future__ import annotations

import dataclasses

from .parsers import (
    BUCKETS_ACCEPTS,
    PATH_ACCEPTS,
    PREFIX,
    _bool,
    _buckets,
    _choice,
    _metric_name,
    _networks,
    _non_negative_float,
    _optional,
    _path,
    _setting,
    _text,
)


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """Keys of the metrics (``GATEWAY_OBS_METRICS_*``)."""

    # metrics
    metrics_enabled: bool = _setting(
        "METRICS_ENABLED",
        True,
        _bool,
        "a boolean",
        "collect Prometheus metrics; ``False`` turns every metric and the endpoint off",
    )
    metrics_endpoint: bool = _setting(
        "METRICS_ENDPOINT",
        True,
        _bool,
        "a boolean",
        "serve the exposition at ``GATEWAY_OBS_METRICS_PATH``",
    )
    metrics_path: str = _setting(
        "METRICS_PATH",
        "/metrics",
        _path,
        PATH_ACCEPTS,
        "path of the exposition endpoint",
    )
    metrics_registry: str = _setting(
        "METRICS_REGISTRY",
        "app",
        _choice("app", "global"),
        "one of app, global",
        "``app``: a registry of the app's own; ``global``: ``prometheus_client.REGISTRY``",
    )
    metrics_namespace: str | None = _setting(
        "METRICS_NAMESPACE",
        None,
        _optional(_metric_name),
        "a metric name prefix: ASCII letters, digits and underscores, not starting with a digit",
        "prefix of every metric name, joined with ``_``",
    )
    metrics_buckets: tuple[float, ...] = _setting(
        "METRICS_BUCKETS",
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        _buckets,
        BUCKETS_ACCEPTS,
        "upper bounds in seconds of ``http_request_duration_seconds`` (``+Inf`` is added)",
    )
    metrics_dependency_buckets: tuple[float, ...] = _setting(
        "METRICS_DEPENDENCY_BUCKETS",
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        _buckets,
        BUCKETS_ACCEPTS,
        "upper bounds in seconds of ``dependency_latency_seconds`` (``+Inf`` is added)",
    )
    metrics_count_internal: bool = _setting(
        "METRICS_COUNT_INTERNAL",
        False,
        _bool,
        "a boolean",
        "also count requests to the health endpoints; ``/metrics`` itself is never counted",
    )
    metrics_token: str | None = _setting(
        "METRICS_TOKEN",
        None,
        _optional(_text),
        "a non-empty string",
        "when set, ``/metrics`` answers 401 unless ``Authorization: Bearer <token>`` matches",
    )
    metrics_allowed_networks: tuple[str, ...] = _setting(
        "METRICS_ALLOWED_NETWORKS",
        (),
        _networks,
        "a list of IP addresses or CIDRs (or a comma-separated string)",
        "when set, ``/metrics`` answers 403 to a client address outside these networks",
    )
    metrics_cache_seconds: float = _setting(
        "METRICS_CACHE_SECONDS",
        0.0,
        _non_negative_float,
        "a number of seconds from 0 to 86400",
        "reuse a rendered exposition for this long (per worker); 0 renders every scrape",
    )


class MetricsKeys:
    """The ``app.config`` keys of this group."""

    METRICS_ENABLED = PREFIX + "METRICS_ENABLED"
    METRICS_ENDPOINT = PREFIX + "METRICS_ENDPOINT"
    METRICS_PATH = PREFIX + "METRICS_PATH"
    METRICS_REGISTRY = PREFIX + "METRICS_REGISTRY"
    METRICS_NAMESPACE = PREFIX + "METRICS_NAMESPACE"
    METRICS_BUCKETS = PREFIX + "METRICS_BUCKETS"
    METRICS_DEPENDENCY_BUCKETS = PREFIX + "METRICS_DEPENDENCY_BUCKETS"
    METRICS_COUNT_INTERNAL = PREFIX + "METRICS_COUNT_INTERNAL"
    METRICS_TOKEN = PREFIX + "METRICS_TOKEN"
    METRICS_ALLOWED_NETWORKS = PREFIX + "METRICS_ALLOWED_NETWORKS"
    METRICS_CACHE_SECONDS = PREFIX + "METRICS_CACHE_SECONDS"
