"""Smoke tests of the benchmark harness: it runs for real on a tiny count and writes its report.

No timing is asserted here: figures belong to ``benchmarks/RESULTS.md``. Peers that
are not installed (they live in ``benchmarks/requirements.txt``, not in the test
extras) must show up as unavailable, never fail the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.inproc import InprocResult, summarize
from benchmarks.report import json_lines_table
from benchmarks.variants import BY_NAME, config_for, unavailable_reason
from tests.conftest import free_port, unavailable

ROOT = Path(__file__).resolve().parent.parent


def _run_harness(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> Path:
    output = tmp_path / "RESULTS.md"
    command = [
        sys.executable, "-m", "benchmarks.run", "--quick",
        "--output", str(output), "--workdir", str(tmp_path), *args,
    ]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return output


@pytest.fixture(scope="module")
def inproc_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One tiny in-process run: bare, our log-only variant, a peer and our fullest variant."""
    tmp_path = tmp_path_factory.mktemp("bench")
    output = _run_harness(
        tmp_path,
        "--sections=inproc",
        "--variants=bare,ours-log,ours-all,peer-jsonlog",
        "--rounds=2",
        "--slice=20",
        "--profile=5",
    )
    raw = json.loads((tmp_path / "RESULTS.json").read_text())
    return output.read_text(), raw


def test_inproc_report_has_figures_for_bare_and_ours(
    inproc_report: tuple[str, dict[str, Any]],
) -> None:
    """Bare Flask and our base variant each get a row of numbers and a call count."""
    report, raw = inproc_report
    assert "## 1. In-process overhead" in report
    assert re.search(r"^\| bare Flask \| \d+\.\d \| 0 \| 1\.00 \| \d+ \|", report, re.M)
    assert re.search(
        r"^\| \*\*ours: request ID \+ access log \+ errors\*\* \| \d+\.\d \|", report, re.M
    )
    for name in ("bare", "ours-log"):
        assert raw["inproc"][name]["status"] == "ok"
        assert len(raw["inproc"][name]["per_round_us"]) == 2
        assert raw["inproc"][name]["calls"] > 0


def test_access_log_variants_write_one_line_per_request(
    inproc_report: tuple[str, dict[str, Any]],
) -> None:
    """The log-only variant really logs (one JSON line per request), bare writes nothing."""
    _, raw = inproc_report
    assert raw["inproc"]["bare"]["info"]["log_lines"] == 0
    ours = raw["inproc"]["ours-log"]["info"]
    assert ours["log_lines"] == 1
    assert json.loads(ours["log_sample"])["status"] == 200
    assert "X-Request-ID" in ours["headers"]


def test_missing_peer_is_reported_unavailable_not_failed(
    inproc_report: tuple[str, dict[str, Any]],
) -> None:
    """A peer whose package is absent is a row saying so; present, it is measured."""
    report, raw = inproc_report
    status = raw["inproc"]["peer-jsonlog"]["status"]
    if importlib.util.find_spec("pythonjsonlogger") is None:
        assert status.startswith("unavailable: peer not installed")
        assert "requirements.txt" in report
    else:
        assert status == "ok"
        assert raw["inproc"]["peer-jsonlog"]["info"]["log_lines"] == 1


def test_report_states_machine_command_and_goals(
    inproc_report: tuple[str, dict[str, Any]],
) -> None:
    """The report names the command, the machine and versions, and lists the goals."""
    report, _ = inproc_report
    assert "- command: `python -m benchmarks.run --quick" in report
    assert "- CPU: " in report
    assert "Flask " in report
    assert "## Goals" in report
    assert "load average (1 / 5 / 15 min) before: " in report
    assert "| core (ours-core): ≤ 1.25 x bare in time, ≤ 1.18 x in instructions |" in report
    # ours-all ran: its time is judged; the instructions section did not run: it says so.
    assert re.search(
        r"^\| everything on \(ours-all\)[^|]*\| \d+\.\d\d \([^|]*\) \| (met|\*\*missed\*\*) "
        r"\| - \| not measured: instructions section not run \|",
        report,
        re.M,
    )


@pytest.mark.slow
def test_server_section_runs_gunicorn_with_the_python_client(tmp_path: Path) -> None:
    """Under gunicorn (sync, 2 workers) with the fallback client: every variant answers."""
    output = _run_harness(
        tmp_path,
        "--sections=server",
        "--server-modes=sync-2",
        "--requests=60",
        "--repeats=1",
        env={"BENCH_LOAD_CLIENT": "python"},
    )
    report = output.read_text()
    assert "the Python client benchmarks/loadgen.py" in report
    rows = re.findall(
        r"^\| (bare Flask|ours: [^|]+) \| (\d+) \| \d+ \.\. \d+ \| (\d+|-) \|", report, re.M
    )
    assert [row[0] for row in rows][:2] == ["bare Flask", "ours: everything on"], report
    assert all(int(rps) > 0 for _, rps, _ in rows)
    assert re.search(
        r"^\| gunicorn, 2 workers, sync: everything on \(ours-all\)[^|]*\| \d+ %", report, re.M
    )
    raw = json.loads((tmp_path / "RESULTS.json").read_text())
    ours = next(r for r in raw["server"] if r["variant"] == "ours-all")
    # Each run of ours is paired with the bare run right before it.
    assert len(ours["paired_bare_rps"]) == len(ours["runs"]) == 1
    assert ours["share_of_bare"] == pytest.approx(
        ours["runs"][0]["requests"] / ours["runs"][0]["elapsed_s"] / ours["paired_bare_rps"][0]
    )


@pytest.mark.slow
def test_every_server_repetition_runs_on_new_gunicorns(tmp_path: Path) -> None:
    """Two repetitions: each variant is served by a different gunicorn in each."""
    _run_harness(
        tmp_path,
        "--sections=server",
        "--server-modes=sync-2",
        "--requests=40",
        "--repeats=2",
        env={"BENCH_LOAD_CLIENT": "python"},
    )
    raw = json.loads((tmp_path / "RESULTS.json").read_text())
    seen: list[set[int]] = []
    for result in raw["server"]:
        if result["error"] is not None:
            continue
        pids = result["server_pids"]
        half = len(pids) // 2  # bare runs before each of the others, in both repetitions
        assert len(pids) == 2 * half and set(pids[:half]) != set(pids[half:]), result
        assert len(set(pids)) == 2, result
        seen.append(set(pids))
    assert len(seen) >= 2
    assert len(set().union(*seen)) == 2 * len(seen)  # no gunicorn serves two variants
    ours = next(r for r in raw["server"] if r["variant"] == "ours-all")
    assert len(ours["paired_bare_rps"]) == len(ours["runs"]) == 2


def test_redis_limit_is_timed_with_a_round_trip_in_the_same_rounds(
    tmp_path: Path, redis_url: str
) -> None:
    """The variant with a limit on Redis gets a round trip per round and a judged goal."""
    output = _run_harness(
        tmp_path,
        "--sections=inproc",
        "--variants=bare,ours-ratelimit-redis",
        "--rounds=2",
        "--slice=20",
        "--profile=5",
        env={"BENCH_REDIS_URL": redis_url},
    )
    report = output.read_text()
    raw = json.loads((tmp_path / "RESULTS.json").read_text())
    assert raw["inproc"]["ours-ratelimit-redis"]["status"] == "ok"
    assert sorted(raw["round_trips"]["per_round"]) == ["0", "1"]
    assert "Redis round trip (" in report
    assert re.search(
        r"^\| core \+ rate limit on Redis \(ours-ratelimit-redis\)[^|]*\| \d+\.\d\d "
        r"\([\d.]+ µs vs [\d.]+ \+ [\d.]+ µs round trip\) \| (met|\*\*missed\*\*) \|",
        report,
        re.M,
    )


def test_redis_down_makes_the_redis_goal_unmeasured_not_failed(tmp_path: Path) -> None:
    """With Redis on a closed port the run still ends; the row and the goal say why."""
    output = _run_harness(
        tmp_path,
        "--sections=inproc",
        "--variants=bare,ours-ratelimit-redis",
        "--rounds=1",
        "--slice=10",
        "--profile=5",
        env={"BENCH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/15"},
    )
    report = output.read_text()
    raw = json.loads((tmp_path / "RESULTS.json").read_text())
    assert raw["inproc"]["ours-ratelimit-redis"]["status"].startswith("unavailable: Redis at")
    assert "round_trips" not in raw
    assert re.search(
        r"^\| core \+ rate limit on Redis[^|]*\| - \| not measured: ours-ratelimit-redis "
        r"unavailable: Redis at redis://127\.0\.0\.1:\d+/15 does not answer",
        report,
        re.M,
    )


def test_several_processes_per_variant_take_turns_by_round(tmp_path: Path) -> None:
    """With two processes a variant, rounds alternate between them, for bare too."""
    output = _run_harness(
        tmp_path,
        "--sections=inproc",
        "--variants=bare,ours-core",
        "--processes=2",
        "--rounds=4",
        "--slice=10",
        "--profile=5",
    )
    raw = json.loads((tmp_path / "RESULTS.json").read_text())
    for name in ("bare", "ours-core"):
        pids = raw["inproc"][name]["pid_per_round"]
        assert len(raw["inproc"][name]["per_round_us"]) == 4
        assert pids["0"] == pids["2"] != pids["1"] == pids["3"]
    assert not set(raw["inproc"]["bare"]["pid_per_round"].values()) & set(
        raw["inproc"]["ours-core"]["pid_per_round"].values()
    )
    assert "Each variant runs in 2 long-lived processes" in output.read_text()


def test_fewer_than_one_process_per_variant_is_refused(tmp_path: Path) -> None:
    """``--processes 0`` stops before starting anything, saying what is wrong."""
    command = [
        sys.executable, "-m", "benchmarks.run", "--quick", "--sections=inproc",
        "--processes=0", "--workdir", str(tmp_path), "--output", str(tmp_path / "R.md"),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "--processes must be at least 1, not 0" in result.stderr
    assert not (tmp_path / "R.md").exists()


def test_unknown_config_key_makes_our_variant_unavailable() -> None:
    """A variant needing a key this build lacks is unavailable with the key named."""
    from benchmarks.variants import Variant, _ours

    future = Variant(
        "ours-future",
        "ours: future",
        "ours",
        _ours,
        config=(("GATEWAY_OBS_NOT_YET_A_FEATURE", True),),
    )
    reason = unavailable_reason(future)
    assert reason is not None
    assert "GATEWAY_OBS_NOT_YET_A_FEATURE" in reason


def test_ours_variants_only_switch_known_features_off() -> None:
    """Keys meant to turn a feature off are applied only when this build knows them."""
    config = config_for(BY_NAME["ours-log"])
    assert config["GATEWAY_OBS_LOG_FORMAT"] == "json"
    from flask_gateway_obs.config import all_keys

    known = set(all_keys())
    assert all(key in known for key in config if key.startswith("GATEWAY_OBS_"))


def test_paired_summary_uses_rounds_both_variants_ran() -> None:
    """Differences and ratios pair each round with bare's same round, skipping gaps."""
    bare = InprocResult(BY_NAME["bare"], "ok", per_round={0: 10.0, 1: 20.0, 2: 10.0})
    other = InprocResult(BY_NAME["ours-log"], "ok", per_round={0: 13.0, 2: 12.0})
    summary = summarize(other, bare)
    assert summary.rounds == 2
    assert summary.diff_us == pytest.approx(2.5)
    assert summary.ratio == pytest.approx(1.25)


def test_json_lines_output_becomes_a_table() -> None:
    """A section script's JSON lines render as one Markdown table; other text does not."""
    table = json_lines_table('{"measure": "a", "ms": 1.5}\n{"measure": "b", "bytes": 2048}\n')
    assert table is not None
    assert table.splitlines()[0] == "| measure | ms | bytes |"
    assert "| b |  | 2,048 |" in table
    assert json_lines_table("plain text\n") is None


def test_neighbouring_bare_slices_take_precedence_in_pairing() -> None:
    """A variant is compared with the bare slices around it when the harness recorded them."""
    bare = InprocResult(BY_NAME["bare"], "ok", per_round={0: 10.0, 1: 10.0})
    other = InprocResult(
        BY_NAME["ours-log"], "ok", per_round={0: 15.0, 1: 15.0}, paired_bare={0: 12.0}
    )
    summary = summarize(other, bare)
    assert summary.rounds == 2
    assert summary.diff_us == pytest.approx(4.0)  # median of 3.0 (neighbours) and 5.0


def test_instruction_counts_are_judged_against_the_goals(tmp_path: Path) -> None:
    """The callgrind section counts instructions per request; the core goal gets a verdict."""
    if shutil.which("valgrind") is None:
        unavailable("valgrind is not installed (Debian package valgrind)")
    output = _run_harness(
        tmp_path,
        "--sections=instructions",
        "--variants=bare,ours-core",
        "--instructions-small=10",
        "--instructions-large=40",
        timeout=600,
    )
    report = output.read_text()
    counts = json.loads((tmp_path / "RESULTS.json").read_text())["instructions"]
    assert counts["bare"]["per_request"] > 100_000  # a Flask request is hundreds of thousands
    assert counts["ours-core"]["per_request"] > counts["bare"]["per_request"]
    assert "## 1b. Instructions per request" in report
    assert re.search(r"^\| ours-core \| [\d,]+ \| 1\.\d{3} \| \+[\d,]+ \|$", report, re.M)
    assert re.search(
        r"^\| core \(ours-core\)[^|]*\| - \| not measured: in-process section not run "
        r"\| 1\.\d{3} \([\d.,]+k vs bare's [\d.,]+k\) \| (met|\*\*missed\*\*) \|$",
        report,
        re.M,
    )
    tracing = r"^\| tracing on, unsampled[^\n]*not in this run's instruction variants \|$"
    assert re.search(tracing, report, re.M)


@pytest.mark.slow
def test_a_gunicorn_workers_instructions_per_request_sit_beside_the_throughput_goals(
    tmp_path: Path,
) -> None:
    """§2b counts instructions inside one gunicorn worker under callgrind, bare and ours,
    and the throughput goals show what that ratio leaves of bare's throughput."""
    if shutil.which("valgrind") is None:
        unavailable("valgrind is not installed (Debian package valgrind)")
    output = _run_harness(
        tmp_path,
        "--sections=server-instructions",
        "--worker-small=5",
        "--worker-large=25",
        timeout=600,
    )
    report = output.read_text()
    counts = json.loads((tmp_path / "RESULTS.json").read_text())["server_instructions"]
    bare, ours = counts["bare"]["per_request"], counts["ours-all"]["per_request"]
    # gunicorn's own parsing and socket work come on top of Flask's few hundred thousand.
    assert bare > 500_000
    assert ours > bare
    assert "## 2b. Instructions per request in a gunicorn worker" in report
    row = re.search(
        r"^\| ours-all \| ([\d,]+) \| (1\.\d{3}) \| \+[\d,]+ \| (\d+) % \|$", report, re.M
    )
    assert row is not None, report
    assert int(row.group(1).replace(",", "")) == round(ours)
    # The ceiling comes from the unrounded counts, not from the three-decimal ratio shown.
    assert float(row.group(2)) == pytest.approx(ours / bare, abs=0.0005)
    assert int(row.group(3)) == round(100 * bare / ours)
    note = (
        r"^\| gunicorn, 2 workers, sync: everything on \(ours-all\)[^|]*\| - \| not measured: "
        r"gunicorn section not run \| a throughput goal; in a gunicorn worker \(§2b\) ours-all "
        r"is 1\.\d{3} x bare in instructions, a CPU-bound ceiling of \d+ % \|"
    )
    assert re.search(note, report, re.M), report


def test_worker_counts_without_valgrind_say_so_instead_of_failing(tmp_path: Path) -> None:
    """valgrind missing: each variant's row says why, the throughput goals keep their note."""
    output = _run_harness(
        tmp_path,
        "--sections=server-instructions",
        env={"PATH": str(tmp_path / "empty")},
    )
    report = output.read_text()
    assert "| bare | - (valgrind is not installed) | | | |" in report
    assert "| ours-all | - (valgrind is not installed) | | | |" in report
    assert re.search(r"gunicorn section not run \| a throughput goal \|  \|$", report, re.M)


def test_worker_counts_need_more_requests_in_the_larger_run() -> None:
    from benchmarks import server_instructions

    with pytest.raises(ValueError, match="large must be more"):
        server_instructions.measure(["bare"], 50, 50)


def test_worker_count_table_shows_the_ceiling_and_a_failed_variant() -> None:
    from benchmarks.instructions import Count
    from benchmarks.server_instructions import table

    text = table(
        [Count("bare", 1_000_000.0), Count("ours-all", 1_250_000.0), Count("x", error="boom")],
        10,
        20,
    )
    assert "| bare | 1,000,000 | 1.000 | +0 | 100 % |" in text
    assert "| ours-all | 1,250,000 | 1.250 | +250,000 | 80 % |" in text
    assert "| x | - (boom) | | | |" in text
