"""The Grafana dashboard, rendered from the JSON shipped with the package.

``dashboard.json`` is built by :mod:`flask_gateway_obs.ops.build_dashboard` with
Grafana's SDK; at run time nothing but the standard library is needed. The shipped
file selects ``job=~"$job"`` through template variables (data source, service, job,
instance); :func:`render_dashboard` prefixes the metric names with the namespace,
and can pin one scrape job or one data source.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

from .names import metric, prefix_metric_names

__all__ = [
    "DASHBOARD_FILE",
    "DASHBOARD_UID",
    "dashboard_json",
    "panel_queries",
    "render_dashboard",
    "shipped_dashboard",
]

DASHBOARD_FILE = "dashboard.json"
DASHBOARD_UID = "flask-gateway-obs"
DATASOURCE_VARIABLE = "datasource"
#: How every query of the shipped file selects the job; ``--job`` replaces it.
JOB_MATCHER = 'job=~"$job"'

_NAMESPACE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_GRAFANA_UID = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")
#: The strings of the JSON model that hold PromQL or name metrics.
_QUERY_KEYS = ("expr", "query", "definition", "description")


def shipped_dashboard() -> dict[str, Any]:
    """The dashboard as shipped (a fresh copy each call)."""
    text = resources.files(__package__).joinpath(DASHBOARD_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def render_dashboard(
    *,
    namespace: str | None = None,
    job: str | None = None,
    datasource_uid: str | None = None,
) -> dict[str, Any]:
    """The dashboard for one deployment.

    :param namespace: ``GATEWAY_OBS_METRICS_NAMESPACE``: every metric name is prefixed.
    :param job: pins the scrape job: queries select ``job="<job>"`` and the job variable
        goes away.
    :param datasource_uid: pins the Prometheus data source by its Grafana uid; the data
        source variable goes away.
    :raises ValueError: a namespace, job or uid that cannot be used as one.
    """
    if namespace is not None and not _NAMESPACE.match(namespace):
        raise ValueError(f"namespace {namespace!r} is not a metric name prefix")
    if job is not None and (not job or "$" in job or not job.isprintable()):
        raise ValueError(f"job {job!r}: a non-empty printable name without '$' is needed")
    if datasource_uid is not None and not _GRAFANA_UID.match(datasource_uid):
        raise ValueError(
            f"datasource uid {datasource_uid!r}: Grafana uids are 1 to 40 letters, digits, - or _"
        )
    board = copy.deepcopy(shipped_dashboard())
    pinned_job = f"job={json.dumps(job)}" if job is not None else None

    def rewrite(text: str) -> str:
        text = prefix_metric_names(text, namespace)
        return text.replace(JOB_MATCHER, pinned_job) if pinned_job else text

    for node in _dicts(board):
        for key in _QUERY_KEYS:
            if isinstance(node.get(key), str):
                node[key] = rewrite(node[key])
    variables: list[dict[str, Any]] = board["templating"]["list"]
    if job is not None:
        variables[:] = [v for v in variables if v.get("name") != "job"]
        for variable in variables:
            if variable.get("name") == "service":
                variable["query"] = (
                    f"label_values({metric(namespace, 'app_info')}{{{pinned_job}}}, service)"
                )
    if datasource_uid is not None:
        variables[:] = [v for v in variables if v.get("name") != DATASOURCE_VARIABLE]
        variable_ref = "${" + DATASOURCE_VARIABLE + "}"
        for node in _dicts(board):
            source = node.get("datasource")
            if isinstance(source, dict) and source.get("uid") == variable_ref:
                source["uid"] = datasource_uid
    qualifiers = [q for q in (namespace, job) if q]
    if qualifiers:
        board["uid"] = _uid(qualifiers)
        board["title"] += " - " + " / ".join(qualifiers)
    return board


def dashboard_json(**options: Any) -> str:
    """:func:`render_dashboard` as the JSON text to import into Grafana."""
    return json.dumps(render_dashboard(**options), indent=2, sort_keys=True) + "\n"


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query of every panel, in dashboard order."""
    found = []
    for panel in board.get("panels", []):
        for target in panel.get("targets") or []:
            found.append((panel["title"], target["expr"]))
    return found


def _uid(qualifiers: list[str]) -> str:
    """A Grafana uid (at most 40 characters) telling this deployment's dashboard apart."""
    slug = re.sub(r"[^a-zA-Z0-9_-]+", "-", "-".join(qualifiers)).strip("-")
    uid = f"{DASHBOARD_UID}-{slug}"
    if len(uid) <= 40:
        return uid
    digest = hashlib.sha256("\0".join(qualifiers).encode()).hexdigest()[:8]
    return f"{uid[:31]}-{digest}"


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _dicts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _dicts(item)
