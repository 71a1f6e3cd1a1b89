"""Keys of the service-level objectives (``GATEWAY_OBS_SLO_*``) that ``flask obs rules``
turns into alerts."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from .parsers import PREFIX, CrossRule, _between, _optional, _positive_float, _setting


@dataclasses.dataclass(frozen=True)
class SloSettings:
    """Keys of the service-level objectives (``GATEWAY_OBS_SLO_*``)."""

    # slo
    slo_availability: float = _setting(
        "SLO_AVAILABILITY",
        0.999,
        _between(0.95, 0.99999),
        "a fraction from 0.95 to 0.99999 (below, a 14.4x burn nears 100 % of requests)",
        "share of requests that must not fail with a 5xx; ``GatewayObsErrorBudgetBurn`` "
        "pages at 14.4x and tickets at 6x its error budget",
    )
    slo_latency_seconds: float | None = _setting(
        "SLO_LATENCY_SECONDS",
        None,
        _optional(_positive_float),
        "a number of seconds that is one of GATEWAY_OBS_METRICS_BUCKETS",
        "a request slower than this misses the latency objective (``GatewayObsLatencySLO``); "
        "a bucket bound of ``http_request_duration_seconds``. Unset: 0.5 s",
    )
    slo_latency_target: float = _setting(
        "SLO_LATENCY_TARGET",
        0.99,
        _between(0.5, 0.99999),
        "a fraction from 0.5 to 0.99999",
        "share of requests that must be faster than ``GATEWAY_OBS_SLO_LATENCY_SECONDS``",
    )


class SloKeys:
    """The ``app.config`` keys of this group."""

    SLO_AVAILABILITY = PREFIX + "SLO_AVAILABILITY"
    SLO_LATENCY_SECONDS = PREFIX + "SLO_LATENCY_SECONDS"
    SLO_LATENCY_TARGET = PREFIX + "SLO_LATENCY_TARGET"


#: The latency objective when ``GATEWAY_OBS_SLO_LATENCY_SECONDS`` is unset.
DEFAULT_LATENCY_SECONDS = 0.5


class _Objectives(Protocol):
    @property
    def slo_latency_seconds(self) -> float | None: ...
    @property
    def metrics_buckets(self) -> tuple[float, ...]: ...


def latency_problem(settings: _Objectives) -> tuple[str, Any, str] | None:
    """Why the latency objective cannot be read from the histogram, if it cannot: it must
    be one of its bucket bounds, since the rules read that bucket's counter."""
    seconds = settings.slo_latency_seconds
    if seconds is None:
        seconds = DEFAULT_LATENCY_SECONDS
    if seconds in settings.metrics_buckets:
        return None
    bounds = ", ".join(f"{b:g}" for b in settings.metrics_buckets)
    return (
        SloKeys.SLO_LATENCY_SECONDS,
        settings.slo_latency_seconds,
        f"one of the GATEWAY_OBS_METRICS_BUCKETS bounds ({bounds})",
    )


def _latency_rule(settings: _Objectives) -> list[tuple[str, Any, str]]:
    """A latency objective that is set must be a bucket bound. Unset, its default is only
    required to be one by ``flask obs rules``: buckets without 0.5 stay valid for apps
    that never generate rules."""
    if settings.slo_latency_seconds is None:
        return []
    problem = latency_problem(settings)
    return [problem] if problem else []


#: Rules between keys (skipped by ``load_settings`` when a key they read failed to parse).
CROSS_RULES: tuple[CrossRule, ...] = (_latency_rule,)
