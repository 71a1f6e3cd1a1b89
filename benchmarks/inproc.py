"""Section 1 of the harness: in-process overhead, long-lived processes per variant.

Each variant runs in :mod:`benchmarks.worker` processes and is driven through its WSGI
callable. The variants take turns in short slices over many rounds (a fresh random order
each round), with a bare Flask slice before the first and after each, so every slice is
paired with bare slices a fraction of a second away and machine noise hits both alike.
Two processes running the same code differ by several per cent (where the allocator and
the loader happened to put things), so with ``processes`` above one each variant has that
many, and round *r* drives every variant's process ``r % processes``: the medians over
rounds then span several processes' luck instead of inheriting one's.
When a variant with a rate limit on Redis runs, a batch of Redis round trips
(:class:`benchmarks.roundtrip.RoundTrip`) is timed right after its slice, so the
yardstick *bare request + one round trip* comes from the same moments. Then every
variant's Python function calls per request are counted under cProfile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.roundtrip import RoundTrip
from benchmarks.variants import BY_NAME, Variant, closed_port_dsn, unavailable_reason

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# --- the processes of a variant ----------------------------------------------------------


class WorkerProcess:
    """A :mod:`benchmarks.worker` process for one variant, spoken to in JSON lines."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, index: int = 0) -> None:
        self.name = name
        suffix = f"-{index + 1}" if index else ""
        self.stderr_path = workdir / f"worker-{name}{suffix}.log"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", name],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._buffer = b""

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def receive(self, timeout: float = 300.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited: {self.stderr_tail()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        self.send(command)
        return self.receive(timeout)

    def stderr_tail(self) -> str:
        self._stderr.flush()
        lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])[-400:] or "no output"

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.ask({"op": "quit"}, timeout=10)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


@dataclasses.dataclass
class InprocResult:
    """The figures of one variant in the in-process section."""

    variant: Variant
    status: str = ""  # "ok", or why it did not run
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    per_round: dict[int, float] = dataclasses.field(default_factory=dict)  # µs per request
    #: Per round, bare's µs per request in the slices right before and after this one.
    paired_bare: dict[int, float] = dataclasses.field(default_factory=dict)
    calls: float | None = None
    #: Per round, the process that ran this variant's slice.
    pids: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        value = values[0] if values else float("nan")
        return value, value
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


@dataclasses.dataclass
class Summary:
    median_us: float
    diff_us: float
    diff_q1: float
    diff_q3: float
    ratio: float
    rounds: int


def summarize(result: InprocResult, bare: InprocResult) -> Summary:
    """Median µs, paired difference to bare (median and quartiles), median ratio to bare."""
    reference = {**bare.per_round, **result.paired_bare}
    paired = [r for r in result.per_round if r in reference]
    diffs = [result.per_round[r] - reference[r] for r in paired]
    ratios = [result.per_round[r] / reference[r] for r in paired]
    q1, q3 = _quartiles(diffs)
    return Summary(
        _median(list(result.per_round.values())),
        _median(diffs),
        q1,
        q3,
        _median(ratios),
        len(paired),
    )


@dataclasses.dataclass
class RoundTrips:
    """Redis round trips timed in the section's rounds, right after the Redis variant's slice."""

    per_round: dict[int, float] = dataclasses.field(default_factory=dict)  # mean µs
    medians: dict[int, float] = dataclasses.field(default_factory=dict)  # single calls' median
    calls: int = 0
    error: str | None = None


@dataclasses.dataclass
class InprocRun:
    """What section 1 measured: a result per variant, and the round trips when timed."""

    results: list[InprocResult]
    round_trips: RoundTrips | None = None

    def get(self, name: str) -> InprocResult | None:
        """The result of ``name`` if it ran to the end, else ``None``."""
        return next((r for r in self.results if r.variant.name == name and r.ok), None)


def _relative(result: InprocResult, bare: InprocResult) -> dict[int, float]:
    """Per round, ``result``'s µs over the bare slices paired with it."""
    reference = {**bare.per_round, **result.paired_bare}
    return {r: v / reference[r] for r, v in result.per_round.items() if r in reference}


def ratio_to_bare(run: InprocRun, name: str) -> float | None:
    """Median over rounds of ``name``'s µs / the paired bare µs."""
    bare, found = run.get("bare"), run.get(name)
    if bare is None or found is None:
        return None
    return summarize(found, bare).ratio


def ratio_between(run: InprocRun, name: str, base: str) -> float | None:
    """Median over rounds of ``name``'s ratio to bare / ``base``'s ratio to bare (same round).

    Both are paired with their own bare slices, so drift between their slices cancels.
    """
    bare, found, under = run.get("bare"), run.get(name), run.get(base)
    if bare is None or found is None or under is None:
        return None
    over, below = _relative(found, bare), _relative(under, bare)
    ratios = [over[r] / below[r] for r in over if r in below]
    return _median(ratios) if ratios else None


def added_over(run: InprocRun, name: str, base: str) -> float | None:
    """Median over rounds of the µs ``name`` adds over ``base`` (both paired with bare)."""
    bare, found, under = run.get("bare"), run.get(name), run.get(base)
    if bare is None or found is None or under is None:
        return None

    def diffs(result: InprocResult) -> dict[int, float]:
        reference = {**bare.per_round, **result.paired_bare}
        return {r: v - reference[r] for r, v in result.per_round.items() if r in reference}

    over, below = diffs(found), diffs(under)
    added = [over[r] - below[r] for r in over if r in below]
    return _median(added) if added else None


@dataclasses.dataclass
class OverRoundTrip:
    """A Redis variant against *bare request + one round trip*, medians over rounds."""

    ratio: float
    variant_us: float
    bare_us: float
    round_trip_us: float
    rounds: int


def over_round_trip(run: InprocRun, name: str) -> OverRoundTrip | None:
    """``name``'s µs / (paired bare µs + the round trip timed right after it), per round."""
    bare, found, trips = run.get("bare"), run.get(name), run.round_trips
    if bare is None or found is None or trips is None or not trips.per_round:
        return None
    reference = {**bare.per_round, **found.paired_bare}
    paired = [r for r in found.per_round if r in reference and r in trips.per_round]
    if not paired:
        return None
    return OverRoundTrip(
        _median([found.per_round[r] / (reference[r] + trips.per_round[r]) for r in paired]),
        _median([found.per_round[r] for r in paired]),
        _median([reference[r] for r in paired]),
        _median([trips.per_round[r] for r in paired]),
        len(paired),
    )


def run_inproc(
    names: Sequence[str],
    *,
    slice_size: int,
    rounds: int,
    profile: int,
    seed: int,
    workdir: Path,
    processes: int = 1,
    progress: Callable[[str], None] = print,
) -> InprocRun:
    """Section 1: every variant in ``processes`` processes, interleaved slices, then cProfile."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    env = {**os.environ, "BENCH_SENTRY_DSN": closed_port_dsn(), "PYTHONHASHSEED": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    results = {name: InprocResult(BY_NAME[name]) for name in names}
    workers: dict[str, list[WorkerProcess]] = {}
    trips: RoundTrips | None = None
    trip: RoundTrip | None = None
    try:
        for name in names:
            reason = unavailable_reason(BY_NAME[name])
            if reason is not None:
                results[name].status = f"unavailable: {reason}"
            else:
                workers[name] = [
                    WorkerProcess(name, env, workdir, index) for index in range(processes)
                ]
        for name, group in list(workers.items()):
            for worker in group:
                try:
                    answer = worker.receive(timeout=120 + 10 * len(workers))
                except Exception as exc:
                    answer = {"error": str(exc)}
                if answer.get("ready"):
                    results[name].status = "ok"
                    results[name].info = answer
                    if answer.get("status", "")[:3] != "200":
                        results[name].status = f"failed: answered {answer.get('status')}"
                elif "unavailable" in answer:
                    results[name].status = f"unavailable: {answer['unavailable']}"
                else:
                    error = answer.get("error")
                    results[name].status = f"failed: {error} (see {worker.stderr_path})"
                if not results[name].ok:
                    break
            if not results[name].ok:
                for worker in workers.pop(name):
                    worker.close()
        on_redis = {name for name in workers if "redis" in BY_NAME[name].services}
        if on_redis:
            trips = RoundTrips(calls=slice_size)
            try:
                trip = RoundTrip()
            except Exception as exc:
                trips.error = f"{type(exc).__name__}: {exc}"
        rng = random.Random(seed)

        def timed_slice(name: str, round_no: int) -> float | None:
            """µs per request of one slice of ``name``; ``None`` if its worker failed."""
            if name not in workers:
                return None
            try:
                worker = workers[name][round_no % processes]
                ns = worker.ask({"op": "run", "n": slice_size})["ns"]
                results[name].pids[round_no] = worker.proc.pid
            except Exception as exc:
                results[name].status = f"failed in round {round_no + 1}: {exc}"
                for worker in workers.pop(name):
                    worker.close()
                return None
            return float(ns) / slice_size / 1000.0

        for round_no in range(rounds):
            # bare, A, bare, B, ..., bare: each variant is paired with the bare slices
            # right before and after it, a fraction of a second apart.
            order = [name for name in workers if name != "bare"]
            rng.shuffle(order)
            previous = timed_slice("bare", round_no)
            bare_slices = [previous] if previous is not None else []
            for name in order:
                value = timed_slice(name, round_no)
                # One batch a round, after the first variant on Redis (there is one today).
                measured = trips is not None and round_no in trips.per_round
                if name in on_redis and trip is not None and trips is not None and not measured:
                    try:
                        mean, median = trip.batch(slice_size)
                    except Exception as exc:
                        trips.error = f"round {round_no + 1}: {type(exc).__name__}: {exc}"
                        trip.close()
                        trip = None
                    else:
                        trips.per_round[round_no] = mean
                        trips.medians[round_no] = median
                following = timed_slice("bare", round_no)
                if following is not None:
                    bare_slices.append(following)
                if value is None:
                    continue
                results[name].per_round[round_no] = value
                neighbours = [b for b in (previous, following) if b is not None]
                if neighbours:
                    results[name].paired_bare[round_no] = sum(neighbours) / len(neighbours)
                previous = following
            if bare_slices and "bare" in results:
                results["bare"].per_round[round_no] = statistics.median(bare_slices)
            if round_no % 5 == 4 or round_no == rounds - 1:
                progress(f"in-process round {round_no + 1}/{rounds}")
        for name, group in workers.items():
            try:
                results[name].calls = group[0].ask({"op": "profile", "n": profile})["calls"]
            except Exception as exc:
                progress(f"profile of {name} failed: {exc}")
    finally:
        for group in workers.values():
            for worker in group:
                worker.close()
        if trip is not None:
            with contextlib.suppress(Exception):
                trip.close()
    return InprocRun([results[name] for name in names], trips)


# --- the other engineers' sections --------------------------------------------------------
