"""The per-request cost goals, judged on what one harness run measured.

Each goal is judged in both measures where it has both: the paired timing ratio of the
in-process section (:mod:`benchmarks.inproc`) and the instructions-per-request ratio of
the callgrind section (:mod:`benchmarks.instructions`), both against bare Flask in the
same run. The throughput goal comes from the gunicorn section (:mod:`benchmarks.server`),
with a gunicorn worker's instruction counts (:mod:`benchmarks.server_instructions`) beside it.
A goal whose figure this run did not produce says why instead of a verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from benchmarks.inproc import (
    InprocRun,
    added_over,
    over_round_trip,
    ratio_between,
    ratio_to_bare,
    summarize,
)
from benchmarks.instructions import Count
from benchmarks.server import MODES, ServerResult

__all__ = ["Judged", "Row", "judge", "summary", "table"]

#: (variant, label, x bare in time, x bare in instructions)
VS_BARE = (
    ("ours-core", "core", 1.25, 1.18),
    ("ours-all", "everything on", 1.5, 1.30),
)
#: (variant, label, base variant, x the base in time and instructions)
VS_OTHER = (
    ("ours-tracing-unsampled", "tracing on, unsampled", "ours-core", 1.03),
    ("ours-log-ecs", "access log, ECS schema", "ours-log", 1.05),
    ("ours-log-otel", "access log, OpenTelemetry schema", "ours-log", 1.05),
)
#: The variant with a rate limit on Redis, and its limit over bare + one round trip.
REDIS = ("ours-ratelimit-redis", 1.3)
#: Under gunicorn: the variant and the share of bare Flask's throughput it must keep.
SERVER = ("ours-all", 0.90)


@dataclasses.dataclass(frozen=True)
class Judged:
    """One measure of one goal: the figure judged, how it was got, or why there is none."""

    value: float | None
    limit: float
    detail: str = ""
    at_least: bool = False
    missing: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def figure(self, digits: int = 2) -> str:
        if self.value is None:
            return "-"
        text = f"{self.value * 100:.0f} %" if self.at_least else f"{self.value:.{digits}f}"
        return f"{text} ({self.detail})" if self.detail else text

    def verdict(self) -> str:
        met = self.met
        if met is None:
            return f"not measured: {self.missing}" if self.missing else "not measured"
        return "met" if met else "**missed**"


@dataclasses.dataclass(frozen=True)
class Row:
    """A goal and its verdicts; ``None`` for a measure the goal does not have."""

    goal: str
    time: Judged | None
    instructions: Judged | None
    instructions_note: str = ""


def _inproc_missing(run: InprocRun | None, *names: str) -> str:
    if run is None:
        return "in-process section not run"
    for name in names:
        found = next((r for r in run.results if r.variant.name == name), None)
        if found is None:
            return f"{name} not in this run's variants"
        if not found.ok:
            return f"{name} {found.status}"
    return "no paired rounds"


#: Why a variant has no instruction count when the section ran without it.
NOT_COUNTED = "not in this run's instruction variants"


def _count_of(
    counts: Mapping[str, Count] | None, name: str, not_counted: str
) -> tuple[float | None, str]:
    if counts is None:
        return None, "instructions section not run"
    count = counts.get(name)
    if count is None:
        return None, f"{name} {not_counted}"
    if count.per_request is None:
        return None, f"{name}: {count.error}"
    return count.per_request, ""


def _instructions(
    counts: Mapping[str, Count] | None, name: str, base: str, limit: float, not_counted: str
) -> Judged:
    over, why = _count_of(counts, name, not_counted)
    under, why_base = _count_of(counts, base, not_counted)
    if over is None or under is None:
        return Judged(None, limit, missing=why or why_base)
    detail = f"{over / 1000:,.1f}k vs {base}'s {under / 1000:,.1f}k"
    return Judged(over / under, limit, detail)


def _time_vs_bare(run: InprocRun | None, name: str, limit: float) -> Judged:
    ratio = ratio_to_bare(run, name) if run is not None else None
    if run is None or ratio is None:
        return Judged(None, limit, missing=_inproc_missing(run, "bare", name))
    bare, found = run.get("bare"), run.get(name)
    assert bare is not None and found is not None
    s = summarize(found, bare)
    return Judged(ratio, limit, f"{s.diff_us:+.1f} µs on bare's {s.median_us - s.diff_us:.1f}")


def _time_vs_other(run: InprocRun | None, name: str, base: str, limit: float) -> Judged:
    ratio = ratio_between(run, name, base) if run is not None else None
    if run is None or ratio is None:
        return Judged(None, limit, missing=_inproc_missing(run, "bare", base, name))
    added = added_over(run, name, base)
    return Judged(ratio, limit, f"{added:+.1f} µs vs {base}" if added is not None else "")


def _redis(run: InprocRun | None) -> Judged:
    name, limit = REDIS
    found = over_round_trip(run, name) if run is not None else None
    if found is None:
        missing = _inproc_missing(run, "bare", name)
        trips = run.round_trips if run is not None else None
        if trips is not None and trips.error:
            missing = f"round trip: {trips.error}"
        return Judged(None, limit, missing=missing)
    detail = (
        f"{found.variant_us:.1f} µs vs {found.bare_us:.1f} + {found.round_trip_us:.1f} µs "
        "round trip"
    )
    return Judged(found.ratio, limit, detail)


def _server(servers: Sequence[ServerResult] | None, mode_name: str) -> Judged:
    name, limit = SERVER
    if servers is None:
        return Judged(None, limit, at_least=True, missing="gunicorn section not run")
    in_mode = [r for r in servers if r.mode.name == mode_name]
    if not in_mode:
        return Judged(None, limit, at_least=True, missing="mode not in this run")
    bare = next((r for r in in_mode if r.variant == "bare"), None)
    ours = next((r for r in in_mode if r.variant == name), None)
    for result, who in ((bare, "bare"), (ours, name)):
        if result is None:
            return Judged(None, limit, at_least=True, missing=f"{who} not run in this mode")
        if not result.runs:
            return Judged(None, limit, at_least=True, missing=f"{who}: {result.error}")
    assert ours is not None and bare is not None
    share = ours.share
    if share is None:
        return Judged(None, limit, at_least=True, missing="no paired runs")
    pairs = sum(1 for b in ours.paired_bare if b)
    detail = f"{ours.rps:,.0f} vs {bare.rps:,.0f} requests/s, median of {pairs} pairs"
    return Judged(share, limit, detail, at_least=True)


def _worker_note(worker_counts: Mapping[str, Count] | None) -> str:
    """The throughput goals' instructions cell: a throughput goal, with what one gunicorn
    worker's instruction counts (§2b) say of it when they were taken."""
    note = "a throughput goal"
    if worker_counts is None:
        return note
    name = SERVER[0]
    ours, _ = _count_of(worker_counts, name, NOT_COUNTED)
    bare, _ = _count_of(worker_counts, "bare", NOT_COUNTED)
    if ours is None or not bare:
        return note
    ratio = ours / bare
    return (
        f"{note}; in a gunicorn worker (§2b) {name} is {ratio:.3f} x bare in instructions, "
        f"a CPU-bound ceiling of {100 / ratio:.0f} %"
    )


def judge(
    run: InprocRun | None,
    counts: Mapping[str, Count] | None,
    servers: Sequence[ServerResult] | None,
    not_counted: str = NOT_COUNTED,
    worker_counts: Mapping[str, Count] | None = None,
) -> list[Row]:
    """Every goal next to what this run measured (``not_counted``: why a variant the
    instructions section left out has no count; ``worker_counts``: instructions per
    request in a gunicorn worker, shown beside the throughput goals)."""
    rows = [
        Row(
            f"{label} ({name}): ≤ {time:g} x bare in time, ≤ {instr:.2f} x in instructions",
            _time_vs_bare(run, name, time),
            _instructions(counts, name, "bare", instr, not_counted),
        )
        for name, label, time, instr in VS_BARE
    ]
    for name, label, base, limit in VS_OTHER:
        other = "the default schema" if base == "ours-log" else "core"
        rows.append(
            Row(
                f"{label} ({name}): ≤ {other} ({base}) + {round((limit - 1) * 100)} %, "
                "in time and instructions",
                _time_vs_other(run, name, base, limit),
                _instructions(counts, name, base, limit, not_counted),
            )
        )
    rows.append(
        Row(
            f"core + rate limit on Redis ({REDIS[0]}): ≤ {REDIS[1]:g} x (bare + one Redis "
            "round trip), in time",
            _redis(run),
            None,
            "a time goal: the round trip is Redis's and the kernel's work",
        )
    )
    for mode in MODES:
        if not mode.goal:
            continue
        rows.append(
            Row(
                f"gunicorn, {mode.label}: everything on ({SERVER[0]}) ≥ "
                f"{SERVER[1] * 100:.0f} % of bare Flask's throughput",
                _server(servers, mode.name),
                None,
                _worker_note(worker_counts),
            )
        )
    return rows


def table(rows: Sequence[Row]) -> list[str]:
    """The goals as a Markdown table."""
    lines = [
        "| goal | time (paired) | verdict | instructions | verdict |",
        "|---|---:|---|---:|---|",
    ]
    for row in rows:
        cells = [row.goal]
        for judged, digits in ((row.time, 2), (row.instructions, 3)):
            if judged is None:
                cells += [row.instructions_note or "-", ""]
            else:
                cells += [judged.figure(digits), judged.verdict()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(rows: Sequence[Row]) -> str:
    """One line: how many verdicts were met, missed and not measured."""
    verdicts = [j.met for row in rows for j in (row.time, row.instructions) if j is not None]
    met = sum(1 for v in verdicts if v is True)
    missed = sum(1 for v in verdicts if v is False)
    unmeasured = sum(1 for v in verdicts if v is None)
    return f"{met} met, {missed} missed, {unmeasured} not measured (of {len(verdicts)} verdicts)"
