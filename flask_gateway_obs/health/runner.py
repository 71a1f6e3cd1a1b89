"""The concurrent runner of an app's health checks: timeouts, single flight, a cache.

Each app has one :class:`HealthRunner` (``state.health``). A probe asks it for the
checks of a group; every check whose cached result is older than the TTL runs on a
small pool of daemon threads, all at once, each against its own deadline. Runs are
single-flight per check: concurrent probes wait for the run in progress instead of
starting another, and while a run that missed its deadline is still stuck, probes
report that check as timed out at once without starting a new one. So a hung
dependency costs at most one thread per check, however often the probes come.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..logs import LOGGER_NAME, emit
from .model import (
    HEALTHY,
    LIVE,
    MAX_ERROR_TEXT,
    READY,
    TIMEOUT_REASON,
    UNHEALTHY,
    CheckOutcome,
    CheckResult,
    HealthCheck,
    HealthReport,
    UnknownGroupError,
    aggregate,
    mask_details,
    mask_secrets,
)

if TYPE_CHECKING:
    from ..core.state import ObsState

__all__ = ["POOL_IDLE_SECONDS", "HealthRunner", "runner_of"]

#: Seconds a pool thread waits for work before it ends (a new probe starts it again).
POOL_IDLE_SECONDS = 10.0

_log = logging.getLogger(LOGGER_NAME + ".health")


# --- the thread pool -------------------------------------------------------------------------


class _Pool:
    """A bounded pool of daemon threads, started on demand, ending when idle.

    Not ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so one
    hung check would keep a worker process from ever exiting. A thread with no work
    for ``idle_seconds`` ends, so an app that is no longer used (a test's, a factory's
    discarded one) keeps no threads; a busy thread (a hung check) is not idle and
    stays, and the runner starts no second run of its check meanwhile.
    """

    def __init__(self, max_workers: int, idle_seconds: float) -> None:
        self._max = max_workers
        self._idle_seconds = idle_seconds
        self._tasks: collections.deque[Callable[[], None]] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._live = 0
        self._idle = 0
        self._started = 0

    @property
    def size(self) -> int:
        """Threads alive now."""
        return self._live

    def submit(self, task: Callable[[], None]) -> None:
        with self._ready:
            self._tasks.append(task)
            if len(self._tasks) > self._idle and self._live < self._max:
                self._live += 1
                self._started += 1
                thread = threading.Thread(
                    target=self._work, name=f"gateway-obs-health-{self._started}", daemon=True
                )
                thread.start()
            else:
                self._ready.notify()

    def _next(self) -> Callable[[], None] | None:
        """The next task, or ``None`` once idle for ``idle_seconds`` (the thread then ends).

        Decided under the lock: a task queued while this thread counted as idle is
        always seen, so it cannot be left without a thread.
        """
        with self._ready:
            while not self._tasks:
                self._idle += 1
                try:
                    woken = self._ready.wait(self._idle_seconds)
                finally:
                    self._idle -= 1
                if not woken and not self._tasks:
                    self._live -= 1
                    return None
            return self._tasks.popleft()

    def _work(self) -> None:
        while True:
            task = self._next()
            if task is None:
                return
            try:
                task()
            except BaseException:  # a worker thread must outlive any check
                _log.debug("health task failed", exc_info=True)
            del task  # drop the finished run before waiting for the next


# --- the runner --------------------------------------------------------------------------------


class _Flight:
    """One run of one check, shared by every probe that wants its result."""

    __slots__ = ("check", "deadline", "done", "outcome", "started", "timeout")

    def __init__(self, check: HealthCheck, timeout: float) -> None:
        self.check = check
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.done = threading.Event()
        self.outcome: CheckOutcome | None = None


class HealthRunner:
    """Runs an app's checks: concurrently, each within its timeout, cached for a TTL.

    :attr clock: the clock of the cache (a ``time.monotonic``-like callable); tests
        replace it to expire cached results without waiting.
    :attr log_changes: log each change of a check's status (off in the CLI, whose
        stdout carries the report).
    """

    def __init__(self, state: ObsState, *, clock: Callable[[], float] = time.monotonic) -> None:
        settings = state.settings
        self._state = state
        self.clock = clock
        self.log_changes = True
        self.ttl = settings.health_cache_ttl
        self.default_timeout = settings.health_timeout
        self.version = settings.service_version
        self._max_workers = settings.health_max_workers
        self._checks: dict[str, HealthCheck] = {}
        self._selection: dict[str | None, tuple[HealthCheck, ...]] = {}
        self._started = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        # Also runs in a forked child: threads, locks and runs in flight stay with the parent.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, CheckOutcome]] = {}
        self._inflight: dict[str, _Flight] = {}
        self._last_status: dict[str, str] = {}
        self._pool: _Pool | None = None

    # --- registry ---

    @property
    def checks(self) -> dict[str, HealthCheck]:
        """The registered checks by name, in registration order."""
        return dict(self._checks)

    def groups(self) -> set[str]:
        """Every group a probe may ask for."""
        found = {LIVE, READY}
        for check in self._checks.values():
            found.update(check.groups)
        return found

    def register(self, check: HealthCheck, *, replace: bool = False) -> None:
        """Add ``check``; a name already taken is an error unless it is the same function
        (an app factory that runs again) or ``replace`` is true.

        :raises ValueError: for a second check with the same name.
        """
        with self._lock:
            existing = self._checks.get(check.name)
            if existing is not None and not replace and not existing.same_definition(check):
                raise ValueError(
                    f"a health check named {check.name!r} is already registered; "
                    "give this one another name"
                )
            self._checks[check.name] = check
            self._selection.clear()
            self._cache.pop(check.name, None)

    def unregister(self, name: str) -> None:
        """Remove the check called ``name`` (nothing happens if there is none)."""
        with self._lock:
            if self._checks.pop(name, None) is not None:
                self._selection.clear()
                self._cache.pop(name, None)

    def _select(self, group: str | None) -> tuple[HealthCheck, ...]:
        selected = self._selection.get(group)
        if selected is None:
            if group is not None and group not in self.groups():
                known = ", ".join(sorted(self.groups()))
                raise UnknownGroupError(f"unknown health group {group!r}; known groups: {known}")
            selected = tuple(
                c for c in list(self._checks.values()) if group is None or group in c.groups
            )
            self._selection[group] = selected
        return selected

    # --- probes ---

    def run(self, group: str | None = None, *, fresh: bool = False) -> HealthReport:
        """Run (or take from the cache) the checks of ``group`` (``None``: all of them).

        Returns within the largest timeout of those checks plus scheduling noise.
        ``fresh`` ignores cached results (a run already in flight is still joined).

        :raises UnknownGroupError: if no check belongs to ``group``.
        """
        checks = self._select(group)
        if not checks:
            return self._report({}, group)
        if self._pid != os.getpid():
            self._reset()
        outcomes: dict[str, CheckOutcome] = {}
        waits: list[_Flight] = []
        starts: list[_Flight] = []
        use_cache = self.ttl > 0 and not fresh
        now = self.clock()
        with self._lock:
            for check in checks:
                if use_cache:
                    hit = self._cache.get(check.name)
                    if hit is not None and now - hit[0] < self.ttl:
                        outcomes[check.name] = hit[1]
                        continue
                flight = self._inflight.get(check.name)
                if flight is None:
                    flight = _Flight(check, check.timeout or self.default_timeout)
                    self._inflight[check.name] = flight
                    starts.append(flight)
                waits.append(flight)
            if starts and self._pool is None:
                self._pool = _Pool(self._max_workers, POOL_IDLE_SECONDS)
            pool = self._pool
        if pool is not None:
            for flight in starts:
                pool.submit(functools.partial(self._execute, flight))
        for flight in waits:
            outcomes[flight.check.name] = self._await(flight)
        return self._report({c.name: outcomes[c.name] for c in checks}, group)

    @property
    def threads(self) -> int:
        """Threads of the pool alive in this process (for tests and diagnostics)."""
        return self._pool.size if self._pool is not None else 0

    def _execute(self, flight: _Flight) -> None:
        outcome: CheckOutcome | None = None
        try:
            # a run that waited in the queue past its deadline is not worth starting
            if time.monotonic() < flight.deadline:
                outcome = _call(flight.check)
        finally:
            self._land(flight, outcome)

    def _land(self, flight: _Flight, outcome: CheckOutcome | None) -> None:
        name = flight.check.name
        with self._lock:
            if self._inflight.get(name) is flight:
                del self._inflight[name]
            finalised = None
            if flight.outcome is None:
                if outcome is None or time.monotonic() > flight.deadline:
                    outcome = _timed_out(flight)
                finalised = self._finalise(flight, outcome)
        if finalised is not None:
            self._publish(*finalised)  # before waking the probes: they see it recorded
        flight.done.set()

    def _await(self, flight: _Flight) -> CheckOutcome:
        remaining = flight.deadline - time.monotonic()
        if remaining > 0:
            flight.done.wait(remaining)
        with self._lock:
            if flight.outcome is not None:
                return flight.outcome
            # Past its deadline and still running: report it, and keep the flight so
            # that no new run starts until this one comes back.
            finalised = self._finalise(flight, _timed_out(flight))
        self._publish(*finalised)
        return finalised[0]

    def _finalise(self, flight: _Flight, outcome: CheckOutcome) -> tuple[CheckOutcome, str | None]:
        # under self._lock
        flight.outcome = outcome
        self._cache[outcome.name] = (self.clock(), outcome)
        previous = self._last_status.get(outcome.name)
        self._last_status[outcome.name] = outcome.status
        return outcome, previous

    def _publish(self, outcome: CheckOutcome, previous: str | None) -> None:
        """Feed the metrics and log a change of status."""
        recorder = self._state.recorder
        try:
            recorder.health_check(outcome.name, outcome.status)
            # failed=False: health_check_status carries the result; a failing check is
            # not an application error, and errors_total must not grow with each probe.
            recorder.dependency(outcome.name, "health", outcome.response_time_ms / 1000.0, False)
        except Exception:  # instrumentation never breaks a probe
            _log.debug("health metrics failed", exc_info=True)
        if not self.log_changes or outcome.status == previous:
            return
        if previous is None and outcome.status == HEALTHY:
            return
        level = logging.INFO if outcome.status == HEALTHY else logging.WARNING
        with contextlib.suppress(Exception):
            emit(
                _log,
                level,
                f"health check {outcome.name} is {outcome.status}",
                {
                    "check": outcome.name,
                    "status": outcome.status,
                    "previous_status": previous,
                    "reason": outcome.reason,
                    "error": outcome.error,
                    "response_time_ms": outcome.response_time_ms,
                },
            )

    def draining_report(self, group: str | None = None) -> HealthReport:
        """The answer of a draining app: unhealthy, at once, without running a check."""
        return self._report({}, group, draining=True)

    def _report(
        self, outcomes: dict[str, CheckOutcome], group: str | None, *, draining: bool = False
    ) -> HealthReport:
        return HealthReport(
            status=UNHEALTHY if draining else aggregate(outcomes.values()),
            checks=outcomes,
            timestamp=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            uptime_seconds=round(time.monotonic() - self._started, 3),
            version=self.version,
            group=group,
            draining=draining,
        )


def _call(check: HealthCheck) -> CheckOutcome:
    """Run one check on this thread and describe what happened."""
    started = time.perf_counter()
    error: str | None = None
    details: Mapping[str, Any] = {}
    try:
        result = check.func()
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        if result is None or result is True:
            status, reason = HEALTHY, None
        elif result is False:
            status, reason = UNHEALTHY, "check failed"
        elif isinstance(result, CheckResult):
            status, reason, details = result.status, result.reason, result.details
        else:
            status, reason = UNHEALTHY, f"check returned {type(result).__name__}"
    except BaseException as exc:
        # Checks run on pool threads only, where a KeyboardInterrupt or SystemExit can only
        # come from the check itself (signals go to the main thread): like any raise, it
        # makes the check unhealthy, and must not pass for a timeout or end the worker.
        status, reason = UNHEALTHY, type(exc).__name__
        error = _error_text(exc)
    elapsed_ms = round((time.perf_counter() - started) * 1000.0, 3)
    if check.target:
        details = {**check.target, **details}
    # A reason or a detail is often an exception's text or a DSN: mask them as the error.
    return CheckOutcome(
        check.name,
        status,
        elapsed_ms,
        check.critical,
        None if reason is None else mask_secrets(str(reason)),
        error,
        mask_details(details),
    )


def _error_text(exc: BaseException) -> str | None:
    """The masked, bounded text of ``exc``; ``None`` if it has none or its ``__str__`` fails."""
    try:
        text = str(exc)
    except BaseException:  # an exception's own __str__ may raise anything
        return None
    return mask_secrets(text)[:MAX_ERROR_TEXT] or None


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _timed_out(flight: _Flight) -> CheckOutcome:
    return CheckOutcome(
        flight.check.name,
        UNHEALTHY,
        round(flight.timeout * 1000.0, 3),
        flight.check.critical,
        TIMEOUT_REASON,
        f"no result within {flight.timeout:g} s",
        mask_details(flight.check.target),
    )


def runner_of(state: ObsState) -> HealthRunner:
    """The app's :class:`HealthRunner`."""
    runner = state.health
    if not isinstance(runner, HealthRunner):
        raise RuntimeError("health checks are not set up on this app")
    return runner
