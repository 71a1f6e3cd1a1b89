"""The benchmark harness's goals: each judged on the run's own figures, in both measures.

The figures here are made up (no timing is measured or asserted): what is pinned is how
a verdict follows from them, and that a goal the run could not measure says why.
"""

from __future__ import annotations

import pytest

from benchmarks import goals
from benchmarks.inproc import InprocResult, InprocRun, RoundTrips
from benchmarks.instructions import Count
from benchmarks.roundtrip import redis_unavailable
from benchmarks.server import MODES, LoadResult, ServerResult
from benchmarks.variants import BY_NAME, unavailable_reason
from tests.conftest import free_port


def _result(name: str, per_round: dict[int, float]) -> InprocResult:
    return InprocResult(BY_NAME[name], "ok", per_round=per_round)


def _row(rows: list[goals.Row], variant: str) -> goals.Row:
    return next(row for row in rows if f"({variant})" in row.goal)


def _run(**variants: dict[int, float]) -> InprocRun:
    return InprocRun([_result(name.replace("_", "-"), rounds) for name, rounds in variants.items()])


def _load(rps: float) -> LoadResult:
    return LoadResult(int(rps), 1.0, 0, 0, 500.0, 900.0)


def test_core_goal_is_judged_in_time_and_instructions_separately() -> None:
    """Core at 1.2 x bare meets the 1.25 time goal; 1.2 x instructions misses 1.18."""
    run = _run(bare={0: 50.0, 1: 40.0}, ours_core={0: 60.0, 1: 48.0})
    counts = {"bare": Count("bare", 400_000.0), "ours-core": Count("ours-core", 480_000.0)}
    row = _row(goals.judge(run, counts, None), "ours-core")
    assert row.time is not None and row.instructions is not None
    assert row.time.value == pytest.approx(1.2)
    assert row.time.verdict() == "met"
    assert row.instructions.value == pytest.approx(1.2)
    assert row.instructions.verdict() == "**missed**"


def test_goal_over_core_divides_the_ratios_to_bare_round_by_round() -> None:
    """Unsampled tracing is judged against core within each round, so drift cancels."""
    run = _run(
        bare={0: 50.0, 1: 100.0},  # the machine twice as slow in round 1
        ours_core={0: 60.0, 1: 120.0},
        ours_tracing_unsampled={0: 61.0, 1: 122.0},
    )
    counts = {
        "ours-core": Count("ours-core", 480_000.0),
        "ours-tracing-unsampled": Count("ours-tracing-unsampled", 500_000.0),
    }
    row = _row(goals.judge(run, counts, None), "ours-tracing-unsampled")
    assert row.time is not None and row.instructions is not None
    assert row.time.value == pytest.approx(61.0 / 60.0)
    assert row.time.met is True
    assert row.instructions.value == pytest.approx(500 / 480)
    assert row.instructions.met is False  # +4.2 % over core's instructions


def test_each_log_schema_is_judged_against_the_default_schema() -> None:
    """ECS and OpenTelemetry lines each get a verdict against the default access line."""
    run = _run(
        bare={0: 40.0},
        ours_log={0: 50.0},
        ours_log_ecs={0: 52.0},
        ours_log_otel={0: 54.0},
    )
    rows = goals.judge(run, None, None)
    ecs, otel = _row(rows, "ours-log-ecs"), _row(rows, "ours-log-otel")
    assert ecs.time is not None and otel.time is not None
    assert ecs.time.met is True
    assert otel.time.met is False  # 8 % above the default schema


def test_redis_goal_adds_the_round_trip_timed_in_the_same_round() -> None:
    """The Redis variant is compared with bare + the round trip of the same round."""
    run = _run(bare={0: 40.0, 1: 80.0}, ours_ratelimit_redis={0: 110.0, 1: 200.0})
    run.round_trips = RoundTrips(per_round={0: 50.0, 1: 60.0}, medians={0: 45.0, 1: 55.0})
    row = _row(goals.judge(run, None, None), "ours-ratelimit-redis")
    assert row.instructions is None  # a time goal only
    assert row.time is not None
    assert row.time.value == pytest.approx((110 / 90 + 200 / 140) / 2)
    assert row.time.met is False  # 1.43 x in round 1 pulls the median over 1.3
    assert "round trip" in row.time.detail


def test_redis_goal_without_a_round_trip_is_not_measured_and_says_why() -> None:
    """When the round trip failed, the goal names the failure instead of a verdict."""
    run = _run(bare={0: 40.0}, ours_ratelimit_redis={0: 100.0})
    run.round_trips = RoundTrips(error="ConnectionError: refused")
    row = _row(goals.judge(run, None, None), "ours-ratelimit-redis")
    assert row.time is not None and row.time.met is None
    assert "ConnectionError" in row.time.verdict()


def test_throughput_goal_uses_each_run_paired_with_the_bare_run_before_it() -> None:
    """Ours keeps 92 % and 94 % of the bare run just before it: the median meets 90 %."""
    mode = next(m for m in MODES if m.name == "sync-2")
    bare = ServerResult(mode, "bare", "bare Flask", runs=[_load(1000), _load(2000)])
    ours = ServerResult(
        mode,
        "ours-all",
        "ours: everything on",
        runs=[_load(920), _load(1880)],
        paired_bare=[1000.0, 2000.0],
    )
    row = next(r for r in goals.judge(None, None, [bare, ours]) if mode.label in r.goal)
    assert row.time is not None
    assert row.time.value == pytest.approx(0.93)
    assert row.time.verdict() == "met"


def test_only_goal_modes_are_judged_under_gunicorn() -> None:
    """The gthread mode is shown for information and never gets a verdict."""
    rows = goals.judge(None, None, None)
    judged = [m for m in MODES if any(m.label in row.goal for row in rows)]
    assert judged == [m for m in MODES if m.goal]
    assert any(not m.goal and "not a goal" in m.label for m in MODES)


def test_goal_whose_figures_are_missing_says_why() -> None:
    """No section, an absent variant and a failed count each give their own reason."""
    run = _run(bare={0: 40.0})
    counts = {"bare": Count("bare", 400_000.0), "ours-all": Count("ours-all", error="exit 1")}
    rows = goals.judge(run, counts, None)
    core, everything = _row(rows, "ours-core"), _row(rows, "ours-all")
    assert core.time is not None and core.instructions is not None
    assert "ours-core not in this run" in core.time.verdict()
    assert "ours-core not in this run's instruction variants" in core.instructions.verdict()
    assert everything.instructions is not None
    assert everything.instructions.verdict() == "not measured: ours-all: exit 1"
    server = rows[-1]
    assert server.time is not None and "gunicorn section not run" in server.time.verdict()
    assert goals.summary(rows).startswith("0 met, 0 missed")


def test_goals_table_has_a_row_per_goal_and_both_measures() -> None:
    """The Markdown table: one row per goal, time and instructions side by side."""
    lines = goals.table(goals.judge(None, None, None))
    assert lines[0] == "| goal | time (paired) | verdict | instructions | verdict |"
    assert len(lines) == 2 + len(goals.VS_BARE) + len(goals.VS_OTHER) + 1 + 2


def test_redis_variant_is_unavailable_when_redis_does_not_answer() -> None:
    """A Redis on a closed port, or one that never answers, is named as the reason."""
    reason = redis_unavailable(f"redis://127.0.0.1:{free_port()}/15")
    assert reason is not None and "does not answer" in reason


def test_redis_variant_is_unavailable_when_redis_hangs(black_hole: tuple[str, int]) -> None:
    """A listener that accepts and never answers makes the Redis variant unavailable."""
    host, port = black_hole
    reason = redis_unavailable(f"redis://{host}:{port}/15")
    assert reason is not None and "does not answer" in reason


def test_redis_variant_runs_when_redis_answers(redis_url: str) -> None:
    """With the local Redis up, the variant with a limit on Redis is available."""
    assert redis_unavailable(redis_url) is None
    assert unavailable_reason(BY_NAME["ours-ratelimit-redis"]) is None
