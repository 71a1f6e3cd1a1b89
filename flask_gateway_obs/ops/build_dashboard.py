"""Builds ``dashboard.json`` with Grafana's own SDK (``grafana-foundation-sdk``).

A build step, not run time: the SDK is a development dependency, the JSON it builds
ships as package data, and ``flask obs dashboard`` renders from that file. After a
change here, regenerate it with::

    python -m flask_gateway_obs.ops.build_dashboard

(``--check`` exits 1 when the shipped file is stale; the test suite does the same.)

Queries use the metric names without a namespace and select ``job=~"$job"`` and
``instance=~"$instance"``; :mod:`flask_gateway_obs.ops.dashboard` prefixes the names
and pins the job or the data source when asked.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

from .dashboard import DASHBOARD_FILE, DASHBOARD_UID, DATASOURCE_VARIABLE, JOB_MATCHER

__all__ = ["PANELS", "build", "main"]

SELECTOR = f'{JOB_MATCHER}, instance=~"$instance"'
RATE = "[$__rate_interval]"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${" + DATASOURCE_VARIABLE + "}")


def s(name: str, *matchers: str) -> str:
    """``name{job=~"$job", instance=~"$instance", matchers...}``."""
    return name + "{" + ", ".join([SELECTOR, *matchers]) + "}"


def rate(name: str, by: str, *matchers: str) -> str:
    return f"sum by ({by}) (rate({s(name, *matchers)}{RATE}))"


def quantile(q: float, name: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({s(name)}{RATE})))"


@dataclass(frozen=True)
class Spec:
    """One panel: title, what it shows, and its queries as ``(expr, legend)``."""

    title: str
    description: str
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    width: int = 12
    states: dict[str, tuple[str, str]] = field(default_factory=dict)  # value -> (text, color)


SERVER_ERRORS = s("http_requests_total", 'status=~"5.."')
BREAKER_STATES = {"0": ("closed", "green"), "1": ("open", "red"), "2": ("half-open", "yellow")}
#: Per breaker, the worst state of any instance: open (1) over half-open (2) over closed (0).
#: The codes do not sort by severity, so ``max`` would show half-open; each ``or`` adds only
#: the breakers that the terms before it left out, and the values stay the state codes.
WORST_BREAKER_STATE = " or ".join(
    f"max by (breaker) ({s('circuit_breaker_state')}{match})" for match in (" == 1", " == 2", "")
)
HEALTH_STATES = {
    "1": ("healthy", "green"),
    "0.5": ("degraded", "yellow"),
    "0": ("unhealthy", "red"),
}
UP_STATES = {"1": ("up", "green"), "0": ("down", "red")}

#: The dashboard: rows, each with its panels. README's "Dashboard and alerts" describes them.
PANELS: tuple[tuple[str, tuple[Spec, ...]], ...] = (
    (
        "Traffic",
        (
            Spec(
                "Request rate by route",
                "Requests per second by URL rule template (`http_requests_total`).",
                ((rate("http_requests_total", "route"), "{{route}}"),),
                "reqps",
            ),
            Spec(
                "Request rate by status",
                "Requests per second by response status code (`http_requests_total`).",
                ((rate("http_requests_total", "status"), "{{status}}"),),
                "reqps",
            ),
        ),
    ),
    (
        "Errors",
        (
            Spec(
                "5xx ratio",
                "Share of requests answered with a 5xx: what the availability objective "
                "(`GATEWAY_OBS_SLO_AVAILABILITY`) and `GatewayObsErrorBudgetBurn` measure.",
                (
                    (
                        f"(sum(rate({SERVER_ERRORS}{RATE})) or vector(0))\n/\n"
                        f"sum(rate({s('http_requests_total')}{RATE}))",
                        "5xx",
                    ),
                ),
                "percentunit",
            ),
            Spec(
                "Errors by type and source",
                "Errors per second (`errors_total`) by exception class and source: `http` "
                "(handled by the app), `dependency` (a failed call), `ratelimit` (storage).",
                ((rate("errors_total", "type, source"), "{{source}}: {{type}}"),),
                "ops",
            ),
        ),
    ),
    (
        "Latency",
        tuple(
            Spec(
                f"Latency p{int(q * 100)} by route",
                f"{int(q * 100)}th percentile of request duration per route, from the "
                "`http_request_duration_seconds` histogram (as precise as its buckets).",
                ((quantile(q, "http_request_duration_seconds_bucket", "route"), "{{route}}"),),
                "s",
                8,
            )
            for q in (0.5, 0.95, 0.99)
        ),
    ),
    (
        "Saturation",
        (
            Spec(
                "In-flight requests",
                "Requests being served right now, per instance (`active_connections`, "
                "summed over the workers of each instance).",
                ((f"sum by (instance) ({s('active_connections')})", "{{instance}}"),),
            ),
            Spec(
                "Bulkhead slots in use",
                "Concurrent calls inside each bulkhead (`bulkhead_in_use`); at its "
                "`max_concurrent`, further calls wait, then are rejected.",
                ((f"sum by (bulkhead) ({s('bulkhead_in_use')})", "{{bulkhead}}"),),
            ),
        ),
    ),
    (
        "Dependencies",
        (
            Spec(
                "Dependency latency p95",
                "95th percentile of calls to dependencies (`dependency_latency_seconds`): "
                "tracked calls, breakers and health checks.",
                (
                    (
                        quantile(
                            0.95, "dependency_latency_seconds_bucket", "dependency, operation"
                        ),
                        "{{dependency}} {{operation}}",
                    ),
                ),
                "s",
                8,
            ),
            Spec(
                "Dependency calls",
                "Calls per second to each dependency (`dependency_latency_seconds_count`).",
                (
                    (
                        rate("dependency_latency_seconds_count", "dependency, operation"),
                        "{{dependency}} {{operation}}",
                    ),
                ),
                "ops",
                8,
            ),
            Spec(
                "Dependency errors by type",
                'Failed dependency calls per second (`errors_total{source="dependency"}`), '
                "by exception class; what `GatewayObsDependencyErrors` watches.",
                ((rate("errors_total", "type", 'source="dependency"'), "{{type}}"),),
                "ops",
                8,
            ),
        ),
    ),
    (
        "Resilience",
        (
            Spec(
                "Circuit breaker state",
                "Each breaker over time (`circuit_breaker_state`): closed, open (calls fail "
                "fast with 503) or half-open (probing). The worst instance is shown: open over "
                "half-open over closed.",
                ((WORST_BREAKER_STATE, "{{breaker}}"),),
                states=BREAKER_STATES,
            ),
            Spec(
                "Breaker calls by outcome",
                "Calls per second through each breaker (`circuit_breaker_calls_total`): "
                "success, failure, or rejected while open.",
                (
                    (
                        rate("circuit_breaker_calls_total", "breaker, outcome"),
                        "{{breaker}} {{outcome}}",
                    ),
                ),
                "ops",
            ),
            Spec(
                "Breaker failure rate",
                "Failure rate of each breaker's window (`circuit_breaker_failure_rate`), "
                "which opens it at `GATEWAY_OBS_BREAKER_FAILURE_RATE`.",
                ((f"max by (breaker) ({s('circuit_breaker_failure_rate')})", "{{breaker}}"),),
                "percent",
                8,
            ),
            Spec(
                "Retries by outcome",
                "Retry events per second (`retry_attempts_total`): `retry` per retry "
                "scheduled, then one success, failure or exhausted per call.",
                (
                    (
                        rate("retry_attempts_total", "operation, outcome"),
                        "{{operation}} {{outcome}}",
                    ),
                ),
                "ops",
                8,
            ),
            Spec(
                "Rate-limited requests (429) by route",
                "Requests per second refused by a rate limit (`rate_limit_exceeded_total`).",
                ((rate("rate_limit_exceeded_total", "route"), "{{route}}"),),
                "reqps",
                8,
            ),
            Spec(
                "Bulkhead rejections",
                "Calls per second rejected by a full bulkhead (`bulkhead_rejected_total`); "
                "what `GatewayObsBulkheadRejecting` watches.",
                ((rate("bulkhead_rejected_total", "bulkhead"), "{{bulkhead}}"),),
                "ops",
            ),
        ),
    ),
    (
        "Health",
        (
            Spec(
                "Health checks",
                "Last result of each health check, the worst instance shown "
                "(`health_check_status`): healthy, degraded or unhealthy.",
                ((f"min by (check) ({s('health_check_status')})", "{{check}}"),),
                states=HEALTH_STATES,
            ),
            Spec(
                "Scrape targets",
                "Whether Prometheus reaches each instance (`up`); what "
                "`GatewayObsTargetDown` watches.",
                ((f"max by (instance) ({s('up')})", "{{instance}}"),),
                states=UP_STATES,
                width=6,
            ),
            Spec(
                "Spans dropped",
                "Spans dropped per second because the export queue was full "
                "(`tracing_spans_dropped_total`; tracing on only).",
                ((f"sum(rate({s('tracing_spans_dropped_total')}{RATE}))", "dropped"),),
                "ops",
                6,
            ),
        ),
    ),
)


def _panel(spec: Spec, panel_id: int) -> Any:
    builder: Any
    if spec.states:
        builder = (
            statetimeline.Panel()
            .mappings(
                [
                    ValueMap(
                        {
                            value: ValueMappingResult(text=text, color=color, index=index)
                            for index, (value, (text, color)) in enumerate(spec.states.items())
                        }
                    )
                ]
            )
            .merge_values(True)
        )
    else:
        builder = timeseries.Panel().fill_opacity(10).min(0)
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .height(8)
        .span(spec.width)
    )
    for index, (expr, legend) in enumerate(spec.queries):
        builder = builder.with_target(
            prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + index))
        )
    return builder


def _variable(name: str, label: str, query: str, *, many: bool) -> dashboard.QueryVariable:
    variable: dashboard.QueryVariable = (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(many)
        .include_all(many)
    )
    return variable


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a plain dict)."""
    board = (
        dashboard.Dashboard("Flask gateway (flask-gateway-obs)")
        .uid(DASHBOARD_UID)
        .description(
            "Traffic, errors, latency, saturation, dependencies, resilience and health "
            "of gateways built on flask-gateway-obs (generated by `flask obs dashboard`)."
        )
        .tags(["flask-gateway-obs", "prometheus"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .with_variable(
            dashboard.DatasourceVariable(DATASOURCE_VARIABLE)
            .label("Data source")
            .type("prometheus")
        )
        .with_variable(
            _variable("service", "Service", "label_values(app_info, service)", many=False)
        )
        .with_variable(
            _variable("job", "Job", 'label_values(app_info{service="$service"}, job)', many=True)
        )
        .with_variable(
            _variable(
                "instance",
                "Instance",
                f"label_values(app_info{{{JOB_MATCHER}}}, instance)",
                many=True,
            )
        )
    )
    panel_id = 0
    for title, specs in PANELS:
        panel_id += 1
        board = board.with_row(dashboard.Row(title).id(panel_id))
        for spec in specs:
            panel_id += 1
            board = board.with_panel(_panel(spec, panel_id))
    encoded = JSONEncoder(sort_keys=True).encode(board.build())
    result: dict[str, Any] = json.loads(encoded)
    return result


def dump(data: dict[str, Any]) -> str:
    """The file's text: sorted keys, two-space indent, a final newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    path = Path(__file__).with_name(DASHBOARD_FILE)
    text = dump(build())
    if args.check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is stale: run python -m {__spec__.name}", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
