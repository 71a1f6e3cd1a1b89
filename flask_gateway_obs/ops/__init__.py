"""Operations kit: a Grafana dashboard and Prometheus rules for the extension's metrics.

``flask obs dashboard`` and ``flask obs rules`` print them for an app's settings; both
follow ``GATEWAY_OBS_METRICS_NAMESPACE``. Nothing here runs per request, and nothing
beyond the standard library (and prometheus_client) is imported.
"""

from .dashboard import dashboard_json, panel_queries, render_dashboard
from .rules import ALERT_NAMES, RulesOptions, render_rules, rule_groups

__all__ = [
    "ALERT_NAMES",
    "RulesOptions",
    "dashboard_json",
    "panel_queries",
    "render_dashboard",
    "render_rules",
    "rule_groups",
]
