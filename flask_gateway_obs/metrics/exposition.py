"""Rendering of the Prometheus text format 0.0.4 and OpenMetrics 1.0.0.

prometheus_client's own renderer builds a ``Sample`` tuple and a label dict for
every line, validates and escapes every label name and value, and formats every
number on every scrape: about 0.25 s for 1,500 histogram label sets and 7,500
counters. On the fast path (see :mod:`flask_gateway_obs._compat.prometheus_client`)
the label part of each line is escaped once per series and kept, and the values
are read straight from the metric objects (single process, :class:`MetricWalker`)
or from the metric files of every worker (multiprocess, see
:class:`~flask_gateway_obs.metrics.multiprocess.MultiprocessReader`), so a scrape
only formats numbers.

Everything else (a user's own metrics, process metrics, and the extension's own on
the public path) is collected through ``collect()`` and rendered by prometheus_client,
without ``_created`` series, so the exposition stays complete.

In OpenMetrics the buckets of ``http_request_duration_seconds`` carry the trace ID
of a sampled request that fell in them (an exemplar); the text format has none.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, cast

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from .._compat import prometheus_client as compat

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "ExemplarRecord",
    "Exemplars",
    "Family",
    "MetricSpec",
    "MetricWalker",
    "escape_label_value",
    "exemplar_text",
    "format_value",
    "label_string",
    "le_string",
    "render",
    "wants_openmetrics",
    "with_exemplars",
    "without_created",
]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_INF = math.inf
#: Families whose ``<name>_created`` samples are left out of the exposition.
_WITH_CREATED = frozenset({"counter", "histogram", "summary"})

#: ``(trace_id, observed value, unix time)`` of one exemplar.
ExemplarRecord = tuple[str, float, float]


def escape_label_value(value: str) -> str:
    """Escape a label value for both formats (backslash, newline, double quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r"\"") if openmetrics else text


def format_value(value: float) -> str:
    """A sample value as both formats (and both parsers) read it."""
    if value == _INF:
        return "+Inf"
    if value == -_INF:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


def le_string(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (and its metric files key it)."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def bound_of(le: str) -> float:
    """The bound of an ``le`` label value (``+Inf`` included)."""
    try:
        return float(le)
    except ValueError:
        return _INF


def label_string(names: Iterable[str], values: Iterable[str]) -> str:
    """``a="1",b="2"`` (without braces), values escaped."""
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=False))


def exemplar_text(record: ExemplarRecord) -> str:
    """`` # {trace_id="..."} value timestamp``: the OpenMetrics exemplar of a line."""
    trace_id, value, stamp = record
    return f' # {{trace_id="{escape_label_value(trace_id)}"}} {format_value(value)} {stamp!r}'


def wants_openmetrics(accept: str | None) -> bool:
    """Whether an ``Accept`` header prefers OpenMetrics 1.0.0 over the text format.

    Like prometheus_client, an ``application/openmetrics-text`` entry counts only
    without a version or with version 1.0.0 or later; ``q=0`` refuses it. Media types
    and parameter names are case-insensitive.
    """
    if not accept or "openmetrics" not in accept.lower():
        return False
    best_om = best_text = 0.0
    for entry in accept.split(","):
        parts = [p.strip() for p in entry.split(";")]
        media = parts[0].lower()
        quality, version = 1.0, ""
        for param in parts[1:]:
            key, _, val = param.partition("=")
            key = key.strip().lower()
            if key == "q":
                try:
                    quality = float(val)
                except ValueError:
                    quality = 0.0
            elif key == "version":
                version = val.strip()
        if media == "application/openmetrics-text":
            if not version or _version_tuple(version) >= (1, 0, 0):
                best_om = max(best_om, quality)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, quality)
    return best_om > 0 and best_om >= best_text


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


class Exemplars(Protocol):
    """Where the exemplars of one histogram family are kept (the request observer)."""

    #: The family's name.
    name: str

    def lookup(self, labels: Mapping[str, str]) -> Sequence[ExemplarRecord | None] | None:
        """The exemplar of each bucket of the series with these labels (``le`` aside)."""
        ...

    def index(self, bound: float) -> int | None:
        """Where the bucket of upper bound ``bound`` sits in what :meth:`lookup` returns."""
        ...


class Family:
    """One metric family ready to print: its sample lines are complete but for ``\\n``."""

    __slots__ = ("help", "lines", "name", "type")

    def __init__(self, name: str, type_: str, help_: str, lines: list[str]) -> None:
        #: OpenMetrics family name (a counter's without ``_total``).
        self.name = name
        self.type = type_
        self.help = help_
        self.lines = lines


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """What the extension made one of its metrics with (the family's name and shape)."""

    #: Family name, namespace included (a counter's without ``_total``).
    name: str
    type: str
    help: str
    labelnames: tuple[str, ...]

    def sample_names(self) -> set[str]:
        """The sample names the family's lines carry."""
        if self.type == "counter":
            return {self.name + "_total"}
        if self.type == "histogram":
            return {self.name + "_bucket", self.name + "_count", self.name + "_sum"}
        return {self.name}


def _header(family: Family, openmetrics: bool) -> str:
    name, type_ = family.name, family.type
    if not openmetrics:
        if type_ == "counter":
            name += "_total"
        elif type_ == "info":
            name += "_info"
            type_ = "gauge"
        elif type_ == "unknown":
            type_ = "untyped"
    help_ = _escape_help(family.help, openmetrics)
    return f"# HELP {name} {help_}\n# TYPE {name} {type_}\n"


def render(
    families: Iterable[Family], others: Iterable[Metric] = (), *, openmetrics: bool = False
) -> bytes:
    """The exposition of ``families`` plus prometheus_client's rendering of ``others``.

    :param others: collected families (``Metric``), rendered without ``_created`` samples.
    """
    parts: list[str] = []
    for family in families:
        if family.lines:
            parts.append(_header(family, openmetrics))
            parts.append("\n".join(family.lines))
            parts.append("\n")
    body = "".join(parts).encode("utf-8")
    rest_families = [without_created(metric) for metric in others]
    if rest_families:
        shim = _Collected(rest_families)
        if openmetrics:
            rest = generate_openmetrics(shim)  # type: ignore[no-untyped-call]
            if rest.endswith(b"# EOF\n"):
                rest = rest[: -len(b"# EOF\n")]
        else:
            rest = generate_latest(cast("CollectorRegistry", shim))  # typed so before 0.24
        body += rest
    if openmetrics:
        body += b"# EOF\n"
    return body


class _Collected:
    """Collected families seen as one collector, for prometheus_client's renderers."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def without_created(metric: Metric) -> Metric:
    """``metric`` without its ``<name>_created`` samples (a copy when it had any)."""
    if metric.type not in _WITH_CREATED:
        return metric
    created = metric.name + "_created"
    if not any(sample.name == created for sample in metric.samples):
        return metric
    trimmed = copy.copy(metric)
    trimmed.samples = [sample for sample in metric.samples if sample.name != created]
    return trimmed


def with_exemplars(metric: Metric, exemplars: Exemplars) -> Metric:
    """A copy of the collected histogram ``metric`` whose buckets carry ``exemplars``."""
    bucket = metric.name + "_bucket"
    samples = []
    for sample in metric.samples:
        if sample.name == bucket and sample.exemplar is None:
            labels = dict(sample.labels)
            index = exemplars.index(bound_of(labels.pop("le", "+Inf")))
            slots = exemplars.lookup(labels)
            record = slots[index] if slots is not None and index is not None else None
            if record is not None:
                trace_id, value, stamp = record
                sample = sample._replace(exemplar=Exemplar({"trace_id": trace_id}, value, stamp))
        samples.append(sample)
    enriched = copy.copy(metric)
    enriched.samples = samples
    return enriched


# --- single process, fast path ----------------------------------------------------------


class MetricWalker:
    """Renders one prometheus_client ``Counter``, ``Gauge`` or ``Histogram`` of ours.

    Reads the values of the metric's children through
    :mod:`flask_gateway_obs._compat.prometheus_client`; the label part of every line is
    built once per child and kept.

    :param exemplars: the exemplars of a histogram, shown in OpenMetrics.
    """

    def __init__(self, spec: MetricSpec, metric: Any, exemplars: Exemplars | None = None) -> None:
        self.spec = spec
        self.metric = metric
        self.exemplars = exemplars
        self._labelled = bool(spec.labelnames)
        self._prefixes: dict[tuple[str, ...], Any] = {}
        self._sample = spec.name + "_total" if spec.type == "counter" else spec.name

    def family(self, openmetrics: bool = False) -> Family:
        """The metric's family with its current values."""
        spec = self.spec
        lines: list[str] = []
        if spec.type == "histogram":
            exemplars = self.exemplars if openmetrics else None
            self._histogram_lines(lines, exemplars)
        else:
            prefixes = self._prefixes
            for labelvalues, value in compat.values_of(self.metric, self._labelled):
                prefix = prefixes.get(labelvalues)
                if prefix is None:
                    prefix = prefixes[labelvalues] = self._line_prefix(labelvalues)
                lines.append(prefix + format_value(value))
        return Family(spec.name, spec.type, spec.help, lines)

    def _line_prefix(self, labelvalues: tuple[str, ...]) -> str:
        if not labelvalues:
            return self._sample + " "
        return f"{self._sample}{{{label_string(self.spec.labelnames, labelvalues)}}} "

    def _histogram_prefixes(self, labelvalues: tuple[str, ...], bounds: list[float]) -> Any:
        labels = label_string(self.spec.labelnames, labelvalues)
        sep = "," if labels else ""
        name = self.spec.name
        buckets = tuple(f'{name}_bucket{{{labels}{sep}le="{le_string(b)}"}} ' for b in bounds)
        braces = f"{{{labels}}}" if labels else ""
        return buckets, f"{name}_count{braces} ", f"{name}_sum{braces} "

    def _histogram_lines(self, lines: list[str], exemplars: Exemplars | None) -> None:
        prefixes = self._prefixes
        append = lines.append
        labelnames = self.spec.labelnames
        for labelvalues, bounds, counts, total_sum in compat.histogram_values(
            self.metric, self._labelled
        ):
            entry = prefixes.get(labelvalues)
            if entry is None:
                entry = prefixes[labelvalues] = self._histogram_prefixes(labelvalues, bounds)
            bucket_prefixes, count_prefix, sum_prefix = entry
            slots = None
            if exemplars is not None:
                slots = exemplars.lookup(dict(zip(labelnames, labelvalues, strict=True)))
            total = 0.0
            # Bucket counts are finite whole numbers: repr() is their exposition.
            for index, (prefix, value) in enumerate(zip(bucket_prefixes, counts, strict=False)):
                total += value
                record = slots[index] if slots is not None and index < len(slots) else None
                if record is None:
                    append(prefix + repr(total))
                else:
                    append(prefix + repr(total) + exemplar_text(record))
            append(count_prefix + repr(total))
            append(sum_prefix + format_value(total_sum))
