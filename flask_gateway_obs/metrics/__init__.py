"""Prometheus metrics: collectors on a per-app registry, the request observer, ``/metrics``.

Per request the extension's WSGI step calls :class:`~.observer.HttpMetrics` (an
observer): one dict lookup finds the cached metric children of the request's
``(method, route, status)``. Breakers, retries, rate limits and health checks report
through :class:`~.recorder.MetricsRecorder`, set as ``state.recorder``.

Labels are bounded by construction: ``route`` is the URL rule template or
``<unmatched>``, ``method`` a standard method or ``OTHER``, and every label fed
by a recorder call is capped in how many distinct values it takes.

Modules: :mod:`.collectors` (the app's metrics, ``init_app``, ``app_metrics``),
:mod:`.observer` (per request, exemplars), :mod:`.recorder`, :mod:`.endpoint`,
:mod:`.exposition`, :mod:`.multiprocess`, :mod:`.dependencies`. Names are loaded
when first used: dependency tracking works, and imports no prometheus_client, with
metrics off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_getattr
from ..labels import OTHER_METHOD, UNMATCHED_ROUTE, normalize_path

if TYPE_CHECKING:
    from .collectors import AppMetrics, app_metrics, init_app
    from .dependencies import DependencyTracker, track_dependency
    from .multiprocess import check_directory, forget_process
    from .observer import HttpMetrics
    from .recorder import MetricsRecorder

__all__ = [
    "OTHER_METHOD",
    "UNMATCHED_ROUTE",
    "AppMetrics",
    "DependencyTracker",
    "HttpMetrics",
    "MetricsRecorder",
    "app_metrics",
    "check_directory",
    "forget_process",
    "init_app",
    "normalize_path",
    "track_dependency",
]

#: Public names and the module of this package that defines each.
_LAZY = {
    "AppMetrics": "collectors",
    "app_metrics": "collectors",
    "init_app": "collectors",
    "DependencyTracker": "dependencies",
    "track_dependency": "dependencies",
    "check_directory": "multiprocess",
    "forget_process": "multiprocess",
    "HttpMetrics": "observer",
    "MetricsRecorder": "recorder",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
