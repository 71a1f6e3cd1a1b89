"""The memory check and its readings: a cgroup's usage against its limit (fake cgroup trees
under tmp_path, v1 and v2), the process's resident memory elsewhere, thresholds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flask_gateway_obs.health import DEGRADED, HEALTHY, UNHEALTHY
from flask_gateway_obs.health.checks import MemoryCheck
from flask_gateway_obs.health.memory import (
    MemoryLimit,
    MemoryUsage,
    cgroup_memory_limit,
    cgroup_memory_usage,
    memory_limit,
    memory_usage,
    resident_memory,
    system_memory,
)

GIB = 1024**3
MIB = 1024**2


def _memory(used: int | None, limit: int | None, scope: str = "cgroup") -> MemoryCheck:
    reading = (
        None if used is None or limit is None else MemoryUsage(used, limit, "cgroup v2", scope)
    )
    return MemoryCheck(80.0, 90.0, read=lambda: reading)


@pytest.mark.parametrize(
    ("used", "expected"),
    [
        (0, HEALTHY),
        (79 * GIB // 100, HEALTHY),
        (80 * GIB // 100, DEGRADED),
        (90 * GIB // 100, UNHEALTHY),
        (2 * GIB, UNHEALTHY),
    ],
)
def test_memory_check_thresholds(used: int, expected: str) -> None:
    """Below 80% healthy, from 80% degraded, from 90% unhealthy (of a 1 GiB limit)."""
    result = _memory(used, GIB)()
    assert result.status == expected
    assert result.details["limit_bytes"] == GIB
    assert result.details["limit_source"] == "cgroup v2"
    assert result.details["used_bytes"] == used
    assert result.details["scope"] == "cgroup"


def test_memory_check_reason_gives_the_share_and_what_was_measured() -> None:
    """A degraded memory check says how full it is, and of what."""
    assert _memory(85 * GIB // 100, GIB)().reason == "cgroup memory at 85.0% of the limit"
    assert (
        _memory(85 * GIB // 100, GIB, "process")().reason == "resident memory at 85.0% of the limit"
    )


def test_memory_check_without_readings_is_healthy_and_says_so() -> None:
    """Where memory cannot be measured the check does not fail the app."""
    assert _memory(None, GIB)().details == {"measured": False}
    assert _memory(100, 0)().details == {"measured": False}


def test_memory_check_rejects_inverted_thresholds() -> None:
    """degraded above unhealthy is a programming error."""
    with pytest.raises(ValueError, match="degraded_percent"):
        MemoryCheck(95.0, 90.0)


def test_memory_check_with_real_readings() -> None:
    """On this machine usage and a limit are readable and far apart."""
    result = MemoryCheck()()
    assert result.status == HEALTHY
    assert 0 < result.details["used_bytes"] < result.details["limit_bytes"]


# --- a cgroup's usage --------------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str], self_cgroup: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(self_cgroup)
    return root, proc


def test_workers_that_fill_their_container_turn_the_check_unhealthy(tmp_path: Path) -> None:
    """Five workers at 18 % each: this process alone is far below the limit, but the
    container's cgroup is at 92 % of it, and that is what the check reports."""
    files = {
        "memory.max": str(GIB),
        "memory.current": str(940 * MIB),
        "memory.stat": "anon 900000000\nfile 40000000\nactive_file 30000000\ninactive_file 0\n",
    }
    root, proc = _tree(tmp_path, files, "0::/\n")
    assert (resident_memory() or 0) < 0.9 * GIB  # this process is not the problem
    result = MemoryCheck(80.0, 90.0, cgroup_root=root, self_cgroup=proc)()
    assert result.status == UNHEALTHY
    assert result.details["scope"] == "cgroup"
    assert result.details["used_bytes"] == 940 * MIB
    assert result.details["limit_bytes"] == GIB
    assert result.details["used_percent"] == pytest.approx(91.8, abs=0.1)


def test_cgroup_v2_reclaimable_file_cache_does_not_count(tmp_path: Path) -> None:
    """memory.current minus inactive_file: page cache the kernel reclaims is not pressure."""
    files = {
        "memory.max": str(GIB),
        "memory.current": str(950 * MIB),
        "memory.stat": f"anon 1\nactive_file 7\ninactive_file {450 * MIB}\nfile_mapped 3\n",
    }
    root, proc = _tree(tmp_path, files, "0::/\n")
    assert cgroup_memory_usage(root, proc) == MemoryUsage(500 * MIB, GIB, "cgroup v2", "cgroup")
    assert MemoryCheck(cgroup_root=root, self_cgroup=proc)().status == HEALTHY


def test_cgroup_v2_usage_is_read_where_the_limit_is(tmp_path: Path) -> None:
    """The service's own cgroup has no limit; its parent slice has one: the slice's usage
    (every service in it) is compared with the slice's limit."""
    files = {
        "memory.max": "max",
        "app.slice/memory.max": str(GIB),
        "app.slice/memory.current": str(800 * MIB),
        "app.slice/memory.stat": "inactive_file 0\n",
        "app.slice/gateway.service/memory.max": "max",
        "app.slice/gateway.service/memory.current": str(100 * MIB),
    }
    root, proc = _tree(tmp_path, files, "0::/app.slice/gateway.service\n")
    assert cgroup_memory_usage(root, proc) == MemoryUsage(800 * MIB, GIB, "cgroup v2", "cgroup")


def test_cgroup_level_nearest_its_limit_is_reported(tmp_path: Path) -> None:
    """Two limited levels: the one whose usage is the larger share of its limit counts."""
    files = {
        "app.slice/memory.max": str(4 * GIB),
        "app.slice/memory.current": str(GIB),
        "app.slice/gateway.service/memory.max": str(GIB),
        "app.slice/gateway.service/memory.current": str(900 * MIB),
    }
    root, proc = _tree(tmp_path, files, "0::/app.slice/gateway.service\n")
    assert cgroup_memory_usage(root, proc) == MemoryUsage(900 * MIB, GIB, "cgroup v2", "cgroup")


def test_cgroup_v1_usage_without_total_inactive_file(tmp_path: Path) -> None:
    """cgroup v1: memory.usage_in_bytes minus total_inactive_file, at the limited level."""
    files = {
        "memory/memory.limit_in_bytes": "9223372036854771712",
        "memory/docker/abc/memory.limit_in_bytes": str(GIB),
        "memory/docker/abc/memory.usage_in_bytes": str(1000 * MIB),
        "memory/docker/abc/memory.stat": (
            f"cache 1\ninactive_file {10 * MIB}\ntotal_inactive_file {100 * MIB}\n"
        ),
    }
    root, proc = _tree(tmp_path, files, "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n")
    assert cgroup_memory_usage(root, proc) == MemoryUsage(900 * MIB, GIB, "cgroup v1", "cgroup")
    assert MemoryCheck(80.0, 90.0, cgroup_root=root, self_cgroup=proc)().status == DEGRADED


def test_cgroup_v1_inside_a_container_reads_the_mount_root(tmp_path: Path) -> None:
    """The path of /proc/self/cgroup does not exist under the container's own mount: the
    mount's root files are the container's."""
    files = {
        "memory/memory.limit_in_bytes": str(GIB),
        "memory/memory.usage_in_bytes": str(512 * MIB),
        "memory/memory.stat": "total_inactive_file 0\n",
    }
    root, proc = _tree(tmp_path, files, "4:memory:/docker/0123abcd\n")
    assert cgroup_memory_usage(root, proc) == MemoryUsage(512 * MIB, GIB, "cgroup v1", "cgroup")


def test_no_cgroup_limit_compares_the_process_with_the_machine(tmp_path: Path) -> None:
    """Without any limit the process's resident memory is compared with MemTotal."""
    root, proc = _tree(tmp_path, {"memory.max": "max", "memory.current": "12345"}, "0::/\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4194304 kB\n")
    statm = tmp_path / "statm"
    statm.write_text("1000 250 10 1 0 100 0\n")
    rss = 250 * os.sysconf("SC_PAGE_SIZE")
    assert cgroup_memory_usage(root, proc) is None
    assert memory_usage(root, proc, meminfo, statm) == MemoryUsage(
        rss, 4 * GIB, "system", "process"
    )


def test_a_limit_without_a_readable_usage_falls_back_to_the_process(tmp_path: Path) -> None:
    """A limit whose usage file cannot be read: the process against that limit."""
    root, proc = _tree(tmp_path, {"memory.max": str(GIB), "memory.current": "lots"}, "0::/\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8388608 kB\n")
    statm = tmp_path / "statm"
    statm.write_text("1000 250 10 1 0 100 0\n")
    rss = 250 * os.sysconf("SC_PAGE_SIZE")
    assert memory_usage(root, proc, meminfo, statm) == MemoryUsage(rss, GIB, "cgroup v2", "process")


def test_a_cgroup_limit_above_the_machine_is_capped_at_its_memory(tmp_path: Path) -> None:
    """A limit larger than the machine cannot be reached: the machine's total counts."""
    files = {"memory.max": str(64 * GIB), "memory.current": str(3 * GIB)}
    root, proc = _tree(tmp_path, files, "0::/\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4194304 kB\n")
    assert memory_usage(root, proc, meminfo) == MemoryUsage(3 * GIB, 4 * GIB, "system", "cgroup")


@pytest.mark.parametrize("current", ["", "lots", "-5"])
def test_garbage_usage_is_not_trusted(tmp_path: Path, current: str) -> None:
    """An unreadable or negative usage is no cgroup reading (negative counts as 0 used)."""
    root, proc = _tree(tmp_path, {"memory.max": str(GIB), "memory.current": current}, "0::/\n")
    reading = cgroup_memory_usage(root, proc)
    assert reading is None or reading.used_bytes == 0


# --- a cgroup's limit ------------------------------------------------------------------------


def test_cgroup_v2_limit_of_a_container(tmp_path: Path) -> None:
    """cgroup v2 inside a container: memory.max at the mount's root."""
    root, proc = _tree(tmp_path, {"memory.max": "536870912\n"}, "0::/\n")
    assert cgroup_memory_limit(root, proc) == MemoryLimit(536870912, "cgroup v2")


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    """``max`` is no limit."""
    root, proc = _tree(tmp_path, {"memory.max": "max\n"}, "0::/\n")
    assert cgroup_memory_limit(root, proc) is None


def test_cgroup_v2_smallest_limit_of_the_ancestors_applies(tmp_path: Path) -> None:
    """The process's own cgroup is unlimited but its parent slice has a limit."""
    files = {
        "memory.max": "max",
        "app.slice/memory.max": "1073741824",
        "app.slice/gateway.service/memory.max": "max",
    }
    root, proc = _tree(tmp_path, files, "0::/app.slice/gateway.service\n")
    assert cgroup_memory_limit(root, proc) == MemoryLimit(1073741824, "cgroup v2")


def test_cgroup_v1_limit(tmp_path: Path) -> None:
    """cgroup v1: memory/memory.limit_in_bytes, own path first."""
    files = {
        "memory/memory.limit_in_bytes": "9223372036854771712",
        "memory/docker/abc/memory.limit_in_bytes": "268435456",
    }
    self_cgroup = "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n"
    root, proc = _tree(tmp_path, files, self_cgroup)
    assert cgroup_memory_limit(root, proc) == MemoryLimit(268435456, "cgroup v1")


def test_cgroup_v1_huge_value_means_no_limit(tmp_path: Path) -> None:
    """v1 writes "unlimited" as a page-rounded 2**63."""
    files = {"memory/memory.limit_in_bytes": "9223372036854771712"}
    root, proc = _tree(tmp_path, files, "4:memory:/\n")
    assert cgroup_memory_limit(root, proc) is None


def test_cgroup_hybrid_layout_reads_the_v1_memory_controller(tmp_path: Path) -> None:
    """Hybrid hosts have a ``0::/`` line but the memory controller on v1."""
    files = {
        "unified/cgroup.procs": "",
        "memory/memory.limit_in_bytes": "134217728",
    }
    root, proc = _tree(tmp_path, files, "4:memory:/\n0::/\n")
    assert cgroup_memory_limit(root, proc) == MemoryLimit(134217728, "cgroup v1")


@pytest.mark.parametrize("content", ["", "lots", "-1", "0"])
def test_cgroup_garbage_is_no_limit(tmp_path: Path, content: str) -> None:
    """Unreadable values are ignored, not trusted."""
    root, proc = _tree(tmp_path, {"memory.max": content}, "0::/\n")
    assert cgroup_memory_limit(root, proc) is None


def test_cgroup_missing_files_is_no_limit(tmp_path: Path) -> None:
    """No cgroup filesystem at all (macOS, a sandbox) is no limit."""
    assert cgroup_memory_limit(tmp_path / "none", tmp_path / "none-either") is None


def test_system_memory_from_meminfo(tmp_path: Path) -> None:
    """MemTotal is read in kB."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        2048000 kB\nMemFree:          100 kB\n")
    assert system_memory(meminfo) == 2048000 * 1024


def test_resident_memory_from_statm(tmp_path: Path) -> None:
    """statm's second field is resident pages."""
    import os

    statm = tmp_path / "statm"
    statm.write_text("1000 250 10 1 0 100 0\n")
    assert resident_memory(statm) == 250 * os.sysconf("SC_PAGE_SIZE")


def test_memory_limit_on_this_machine() -> None:
    """The real limit is positive and no larger than the machine."""
    limit = memory_limit()
    total = system_memory()
    assert limit is not None and total is not None
    assert 0 < limit.limit_bytes <= total
