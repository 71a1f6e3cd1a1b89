"""How the extension's metrics sit on a registry, and what else the registry holds.

Each metric is registered wrapped in an :class:`OwnedCollector`: ``generate_latest(
registry)`` sees it as usual, while ``/metrics``, which renders the extension's own
metrics its faster way, collects the registry's other collectors alone with
:func:`other_families`. On ``prometheus_client.REGISTRY`` (an opt-in) a later app's
metrics replace an earlier app's, through a process-wide list that
:func:`flask_gateway_obs.testing.reset` empties.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Metric
from prometheus_client.core import InfoMetricFamily

from ..core import process
from .exposition import Family, escape_label_value, without_created

__all__ = ["AppInfo", "OwnedCollector", "family_name", "other_families", "register"]

_log = logging.getLogger("flask_gateway_obs.metrics")
#: True while the extension renders its own exposition (see :class:`OwnedCollector`).
_own_render: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "flask_gateway_obs_own_render", default=False
)


def family_name(namespace: str, name: str, type_: str) -> str:
    """The family name prometheus_client gives a metric (a counter's without ``_total``)."""
    full = f"{namespace}_{name}" if namespace else name
    if type_ == "counter" and full.endswith("_total"):
        full = full[: -len("_total")]
    return full


class OwnedCollector:
    """One of the extension's metrics as it sits on a registry.

    Collected like the metric itself (without ``_created`` samples), except while
    the extension renders its own exposition, which reads its metrics directly: then
    it yields nothing, and the registry's ``collect()`` yields its other collectors
    alone, whichever app's they are.
    """

    def __init__(self, source: Any) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return list(self.source.describe())

    def collect(self) -> list[Metric]:
        if _own_render.get():
            return []
        return [without_created(metric) for metric in self.source.collect()]


def other_families(registry: CollectorRegistry) -> list[Metric]:
    """What ``registry.collect()`` yields but for the extension's own collectors."""
    token = _own_render.set(True)
    try:
        return list(registry.collect())
    finally:
        _own_render.reset(token)


class AppInfo:
    """``app_info{service,version} 1``: constant, so every worker reports it alike."""

    def __init__(self, name: str, service: str, version: str) -> None:
        self.name = name
        self.labels = {"service": service, "version": version}
        self.help = "Service name and version of the app (always 1)."

    def describe(self) -> list[Metric]:
        return self.collect()

    def collect(self) -> list[Metric]:
        return [InfoMetricFamily(self.name, self.help, value=self.labels)]

    def family(self) -> Family:
        """The family as the fast path prints it."""
        labels = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in self.labels.items())
        return Family(self.name, "info", self.help, [f"{self.name}_info{{{labels}}} 1.0"])


class _GlobalCollectors:
    """The extension's collectors on ``prometheus_client.REGISTRY``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.collectors: list[Any] = []

    def clear(self) -> None:
        with self.lock:
            for collector in self.collectors:
                with contextlib.suppress(KeyError):
                    REGISTRY.unregister(collector)
            self.collectors.clear()


def register(registry: CollectorRegistry, sources: list[Any]) -> None:
    """Put ``sources`` on ``registry``, each as an :class:`OwnedCollector`.

    :raises RuntimeError: when another collector there has one of their names (none
        of them is left registered then).
    """
    collectors = [OwnedCollector(source) for source in sources]
    if registry is not REGISTRY:
        _register_all(registry, collectors)
        return
    shared = process.registry("metrics.global_collectors", _GlobalCollectors)
    process.on_reset("metrics.global_collectors", shared.clear)
    with shared.lock:
        if shared.collectors:
            _log.info("replacing an earlier app's metrics on the global registry")
        for old in shared.collectors:
            with contextlib.suppress(KeyError):
                REGISTRY.unregister(old)
        shared.collectors.clear()
        _register_all(registry, collectors)
        shared.collectors.extend(collectors)


def _register_all(registry: CollectorRegistry, collectors: list[Any]) -> None:
    done: list[Any] = []
    try:
        for collector in collectors:
            registry.register(collector)
            done.append(collector)
    except ValueError as exc:
        for collector in done:
            registry.unregister(collector)
        raise RuntimeError(
            f"cannot register the extension's metrics: {exc}. Another collector on "
            "that registry uses the same name; set GATEWAY_OBS_METRICS_NAMESPACE or "
            "GATEWAY_OBS_METRICS_REGISTRY=app."
        ) from exc
