"""Health checks: the registry, a concurrent runner with timeouts and a cache, the endpoints.

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
import hmac
import inspect
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Blueprint, Flask, Response, request

from .logs import LOGGER_NAME, emit, mask_url_credentials

if TYPE_CHECKING:
    from .core.state import ObsState

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "LIVE",
    "READY",
    "UNHEALTHY",
    "CheckOutcome",
    "CheckResult",
    "HealthCheck",
    "HealthReport",
    "HealthRunner",
    "HealthSetup",
    "UnknownGroupError",
    "init_app",
    "mask_details",
    "mask_secrets",
    "runner_of",
]

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
_STATUSES = (HEALTHY, DEGRADED, UNHEALTHY)

#: Group of the checks that gate traffic (``/health/ready``): the dependencies.
READY = "ready"
#: Group of the checks of the process alone (``/health/live``); empty unless you add some.
LIVE = "live"

TIMEOUT_REASON = "timeout"
_MAX_ERROR_TEXT = 500
_MAX_DETAIL_DEPTH = 8
#: Seconds a pool thread waits for work before it ends (a new probe starts it again).
POOL_IDLE_SECONDS = 10.0
_KV_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]+)")

_log = logging.getLogger(LOGGER_NAME + ".health")

CheckFunc = TypeVar("CheckFunc", bound=Callable[[], Any])


def mask_secrets(text: str) -> str:
    """Mask passwords in URLs (``redis://:***@host``) and in libpq ``password=...`` pairs."""
    text = mask_url_credentials(text)
    if "assword" in text or "ASSWORD" in text:
        text = _KV_PASSWORD.sub(r"\g<1>***", text)
    return text


def mask_details(value: Any, _depth: int = 0) -> Any:
    """``value`` with :func:`mask_secrets` applied to every string in it, however nested.

    Mappings become dicts and lists, tuples and sets become lists; numbers, booleans
    and ``None`` stay; any other object becomes its masked ``str()`` (what the JSON
    body would print). Deeper than 8 levels the rest is cut to ``"..."``.
    """
    if isinstance(value, str):
        return mask_secrets(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if _depth >= _MAX_DETAIL_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        return {_mask_key(k): mask_details(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [mask_details(item, _depth + 1) for item in value]
    return mask_secrets(str(value))


def _mask_key(key: Any) -> Any:
    if key is None or isinstance(key, (bool, int, float)):
        return key
    return mask_secrets(key if isinstance(key, str) else str(key))


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """What a check may return to say more than healthy / unhealthy.

    A check function returns ``None`` or ``True`` (healthy), ``False`` (unhealthy), a
    ``CheckResult``, or raises (unhealthy). ``reason`` and ``details`` appear in bodies
    only when details are shown.

    .. code-block:: python

        @obs.health_check("queue", critical=False)
        def queue_depth():
            depth = queue.depth()
            if depth > 1000:
                return CheckResult.degraded("queue backlog", depth=depth)
    """

    status: str = HEALTHY
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}; got {self.status!r}")

    @classmethod
    def healthy(cls, **details: Any) -> CheckResult:
        """A healthy result, with optional details."""
        return cls(HEALTHY, None, details)

    @classmethod
    def degraded(cls, reason: str, **details: Any) -> CheckResult:
        """Working, but not as it should: the whole report turns degraded (still 200)."""
        return cls(DEGRADED, reason, details)

    @classmethod
    def unhealthy(cls, reason: str, **details: Any) -> CheckResult:
        """Not working: the report turns unhealthy if the check is critical, else degraded."""
        return cls(UNHEALTHY, reason, details)


@dataclass(frozen=True)
class HealthCheck:
    """A registered check.

    :param name: unique per app; the ``check`` label of ``health_check_status``.
    :param func: called with no arguments on a pool thread (may be ``async def``).
    :param critical: whether its failure makes the whole report unhealthy (else degraded).
    :param timeout: seconds; ``None`` means ``GATEWAY_OBS_HEALTH_TIMEOUT``.
    :param groups: groups it belongs to besides "all" (``ready``, ``live`` or your own).
    :param target: what it talks to, shown with the details (secrets masked by the caller).
    """

    name: str
    func: Callable[[], Any]
    critical: bool = True
    timeout: float | None = None
    groups: frozenset[str] = frozenset({READY})
    target: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("a health check needs a non-empty name")
        if not callable(self.func):
            raise TypeError(f"health check {self.name!r} is not callable")
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not 0 < self.timeout < float("inf")
        ):
            raise ValueError(f"health check {self.name!r}: timeout must be seconds > 0")
        if any(not isinstance(g, str) or not g for g in self.groups):
            raise ValueError(f"health check {self.name!r}: groups must be non-empty strings")


@dataclass(frozen=True)
class CheckOutcome:
    """One check's result in a report."""

    name: str
    status: str
    response_time_ms: float
    critical: bool = True
    reason: str | None = None
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        """Status and response time; with ``details`` also reason, error and details."""
        body: dict[str, Any] = {"status": self.status, "response_time_ms": self.response_time_ms}
        if details:
            body["critical"] = self.critical
            if self.reason is not None:
                body["reason"] = self.reason
            if self.error is not None:
                body["error"] = self.error
            if self.details:
                body["details"] = dict(self.details)
        return body


@dataclass(frozen=True)
class HealthReport:
    """The result of one probe: ``status`` and ``checks`` (name -> :class:`CheckOutcome`)."""

    status: str
    checks: Mapping[str, CheckOutcome]
    timestamp: str
    uptime_seconds: float
    version: str | None
    group: str | None = None

    @property
    def ok(self) -> bool:
        """``True`` unless the report is unhealthy."""
        return self.status != UNHEALTHY

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        """The JSON body; ``details`` adds reasons, errors, hosts and figures."""
        return {
            "status": self.status,
            "checks": {name: o.to_dict(details) for name, o in self.checks.items()},
            "timestamp": self.timestamp,
            "uptime_seconds": self.uptime_seconds,
            "version": self.version,
        }


def aggregate(outcomes: Iterable[CheckOutcome]) -> str:
    """Critical unhealthy -> unhealthy; non-critical unhealthy or any degraded -> degraded."""
    status = HEALTHY
    for outcome in outcomes:
        if outcome.status == UNHEALTHY:
            if outcome.critical:
                return UNHEALTHY
            status = DEGRADED
        elif outcome.status == DEGRADED:
            status = DEGRADED
    return status


class UnknownGroupError(ValueError):
    """A probe asked for a group that no check belongs to."""


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
            if existing is not None and not replace and not _same_definition(existing, check):
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

    def _report(self, outcomes: dict[str, CheckOutcome], group: str | None) -> HealthReport:
        return HealthReport(
            status=aggregate(outcomes.values()),
            checks=outcomes,
            timestamp=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            uptime_seconds=round(time.monotonic() - self._started, 3),
            version=self.version,
            group=group,
        )


def _same_definition(a: HealthCheck, b: HealthCheck) -> bool:
    # An app factory that runs again defines the same function again: not a clash.
    if a.func is b.func:
        return True
    key_a = (getattr(a.func, "__module__", None), getattr(a.func, "__qualname__", None))
    key_b = (getattr(b.func, "__module__", None), getattr(b.func, "__qualname__", None))
    return None not in key_a and key_a == key_b


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
    except Exception as exc:
        status, reason = UNHEALTHY, type(exc).__name__
        error = mask_secrets(str(exc))[:_MAX_ERROR_TEXT] or None
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


# --- registrations made on the GatewayObs object -----------------------------------------


class HealthSetup:
    """Checks and clients given to a ``GatewayObs`` object, before or after ``init_app``.

    What is given before ``init_app`` applies to every app set up afterwards. What is
    given later applies to the current app inside an app context, and otherwise to
    every app the object has set up and will set up.
    """

    def __init__(self) -> None:
        self.checks: dict[str, HealthCheck] = {}
        self.redis_client: Any = None
        self.postgres: Any = None

    def add_check(self, check: HealthCheck, states: list[ObsState]) -> None:
        targets = _targets(states)
        if targets is None:
            existing = self.checks.get(check.name)
            if existing is not None and not _same_definition(existing, check):
                raise ValueError(
                    f"a health check named {check.name!r} is already registered; "
                    "give this one another name"
                )
            self.checks[check.name] = check
            targets = states
        for state in targets:
            runner_of(state).register(check)

    def set_redis_client(self, client: Any, states: list[ObsState]) -> None:
        targets = _targets(states)
        if targets is None:
            self.redis_client = client
            targets = states
        for state in targets:
            _install_redis(state, runner_of(state), client)

    def set_postgres(self, pool_or_dsn: Any, states: list[ObsState]) -> None:
        if isinstance(pool_or_dsn, str) and not pool_or_dsn.strip():
            raise ValueError("set_postgres_pool() got an empty DSN")
        targets = _targets(states)
        if targets is None:
            self.postgres = pool_or_dsn
            targets = states
        for state in targets:
            _install_postgres(state, runner_of(state), pool_or_dsn)


def _targets(states: list[ObsState]) -> list[ObsState] | None:
    """The one app of the current app context if it is one of ``states``; else ``None``."""
    from flask import current_app, has_app_context

    from .core.state import EXTENSION_KEY

    if has_app_context():
        found = current_app.extensions.get(EXTENSION_KEY)
        if found is not None and any(found is s for s in states):
            return [found]
    return None


def _install_redis(state: ObsState, runner: HealthRunner, client: Any) -> None:
    from .checks import RedisCheck

    settings = state.settings
    if not settings.health_check_redis:
        return
    if client is not None:
        check = RedisCheck(client=client, timeout=settings.health_timeout)
    elif settings.redis_url is not None:
        check = RedisCheck(url=settings.redis_url, timeout=settings.health_timeout)
    else:
        runner.unregister("redis")
        return
    runner.register(HealthCheck("redis", check, target=check.target), replace=True)


def _install_postgres(state: ObsState, runner: HealthRunner, pool_or_dsn: Any) -> None:
    from .checks import PostgresCheck

    settings = state.settings
    if not settings.health_check_postgres:
        return
    if isinstance(pool_or_dsn, str):
        check = PostgresCheck(dsn=pool_or_dsn, timeout=settings.health_timeout)
    elif pool_or_dsn is not None:
        check = PostgresCheck(pool=pool_or_dsn, timeout=settings.health_timeout)
    elif settings.database_url is not None:
        check = PostgresCheck(dsn=settings.database_url, timeout=settings.health_timeout)
    else:
        runner.unregister("postgres")
        return
    runner.register(HealthCheck("postgres", check, target=check.target), replace=True)


# --- endpoints -------------------------------------------------------------------------------


class HealthEndpoint:
    """The view of one health endpoint: runs the group's checks and renders the body."""

    def __init__(self, state: ObsState, group: str | None) -> None:
        settings = state.settings
        self.state = state
        self.group = group
        self.policy = settings.health_show_details
        self.token = (settings.health_token or "").encode("utf-8")
        self.token_header = settings.health_token_header
        self.status_codes = {
            HEALTHY: settings.health_http_status_healthy,
            DEGRADED: settings.health_http_status_degraded,
            UNHEALTHY: settings.health_http_status_unhealthy,
        }

    def __call__(self) -> Response:
        report = runner_of(self.state).run(self.group)
        body = report.to_dict(details=self.show_details())
        return Response(
            json.dumps(body, default=str),
            status=self.status_codes[report.status],
            mimetype="application/json",
            headers={"Cache-Control": "no-store"},
        )

    def show_details(self) -> bool:
        """Whether this request may see details, by the configured policy."""
        if self.policy == "never":
            return False
        if self.policy == "always":
            return True
        offered = request.headers.get("Authorization", "")
        if offered[:7].lower() == "bearer ":
            offered = offered[7:].strip()
        else:
            offered = request.headers.get(self.token_header, "")
        if not offered or not self.token:
            return False
        return hmac.compare_digest(offered.encode("utf-8", "replace"), self.token)


def init_app(app: Flask, state: ObsState, setup: HealthSetup) -> None:
    """Create the app's runner with the built-in and registered checks; serve the endpoints."""
    from .checks import DiskCheck, MemoryCheck

    settings = state.settings
    runner = HealthRunner(state)
    state.health = runner
    _install_redis(state, runner, setup.redis_client)
    _install_postgres(state, runner, setup.postgres)
    if settings.health_check_memory:
        memory = MemoryCheck(
            settings.health_memory_degraded_percent, settings.health_memory_unhealthy_percent
        )
        runner.register(HealthCheck("memory", memory, groups=frozenset()))
    if settings.health_check_disk:
        disk = DiskCheck(
            settings.health_disk_path,
            settings.health_disk_degraded_percent,
            settings.health_disk_unhealthy_percent,
        )
        runner.register(HealthCheck("disk", disk, groups=frozenset()))
    for check in setup.checks.values():
        runner.register(check)
    if settings.health_enabled:
        blueprint = Blueprint("gateway_obs_health", __name__)
        routes = (
            (settings.health_path, "health", None),
            (settings.health_live_path, "live", LIVE),
            (settings.health_ready_path, "ready", READY),
        )
        for path, endpoint, group in routes:
            blueprint.add_url_rule(path, endpoint, HealthEndpoint(state, group), methods=["GET"])
            state.add_internal_path(path)
        app.register_blueprint(blueprint)
