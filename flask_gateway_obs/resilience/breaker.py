"""Named circuit breakers: an adapter over pybreaker that runs calls in parallel.

pybreaker keeps the state machine (closed, open, half-open), the counters, the
storage (memory or Redis) and the listeners. Its ``CircuitBreaker.call`` holds
one lock for the whole wrapped call, so calls through one breaker run one at a
time. Here the lock is held only to decide whether a call may go through and to
record its outcome; the function itself runs outside it:

1. under the lock: read the state (syncing with the storage), turn open into
   half-open once ``reset_timeout`` has passed, and admit at most
   ``half_open_max_calls`` trial calls while half-open;
2. without the lock: call the function (in a worker thread when ``timeout`` is set,
   for at most what is left of an enclosing retry's deadline);
3. under the lock: hand the outcome to the same pybreaker state object that
   admitted the call (``_handle_success`` / ``_handle_error``), which counts it and
   makes the transitions. An outcome that arrives after the state has changed
   meanwhile is stale and left out of the counts.

Every transition reaches a pybreaker listener that logs it and sets
``circuit_breaker_state``; every call that reached the dependency is timed into
``dependency_latency_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import pybreaker
from werkzeug.exceptions import HTTPException

from ..config import BREAKER_OPTIONS, Settings, parse_options
from ..errors import AppError, CircuitOpenError, ServiceUnavailableError
from ..logs import LOGGER_NAME

if TYPE_CHECKING:
    from ..core.contracts import Recorder, RequestObserver  # noqa: F401

__all__ = [
    "STATE_CODES",
    "BreakerRegistry",
    "BreakerSettings",
    "CallTimeoutError",
    "CircuitBreaker",
    "HungCallsError",
    "breaker",
    "client_error",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: ``circuit_breaker_state`` values.
STATE_CODES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_OPEN: 1, pybreaker.STATE_HALF_OPEN: 2}
#: Retry-After of a call refused because every half-open trial slot is taken.
_TRIALS_BUSY_RETRY_AFTER = 1.0
#: Calls of one breaker that timed out but still run in their worker thread (Python cannot
#: stop them); with this many, new calls are refused with :class:`HungCallsError`.
MAX_HUNG_CALLS = 16
#: Seconds an idle worker thread of a breaker with ``timeout`` waits for a call, then exits.
WORKER_IDLE_SECONDS = 60.0

_log = logging.getLogger(LOGGER_NAME + ".breaker")

Exclusion = type[BaseException] | Callable[[BaseException], bool]
Clock = Callable[[], float]

#: The deadlines of the retries around the current call: ``(clock, moment)`` pairs, the
#: moment on that retry policy's clock. A breaker with ``timeout`` waits no longer than
#: the nearest of them (set by :mod:`.retry` for the duration of a call).
DEADLINES: ContextVar[tuple[tuple[Clock, float], ...]] = ContextVar(
    "gateway_obs_retry_deadlines", default=()
)
#: Whether a breaker with a ``timeout`` exists or is configured in this process: only
#: then do retries publish their deadline in :data:`DEADLINES` (it costs a fraction of a
#: microsecond per call, for nothing when no breaker can use it). Never turns off.
timed_breakers = False


def expect_timeouts() -> None:
    """Note that a breaker with a ``timeout`` exists or will be created (on first use)."""
    global timed_breakers
    timed_breakers = True


class _HasRecorder(Protocol):
    @property
    def recorder(self) -> Recorder: ...


class CallTimeoutError(AppError, TimeoutError):
    """504: a call through a breaker took longer than its ``timeout``.

    The caller stops waiting; the function itself keeps running in its worker
    thread until it returns on its own (Python cannot stop a thread).

    ``by_deadline`` is true when the wait was cut shorter than the breaker's own
    ``timeout`` to fit the deadline of a retry around it; such a timeout is the
    caller's, and does not count against the dependency.
    """

    status_code = 504
    default_code = "upstream_timeout"

    def __init__(self, breaker: str, timeout: float, *, by_deadline: bool = False) -> None:
        why = " (what was left of the retry deadline)" if by_deadline else ""
        super().__init__(
            f"The upstream '{breaker}' did not answer within {max(0.0, timeout):.3g} s{why}."
        )
        self.breaker = breaker
        self.timeout = timeout
        self.by_deadline = by_deadline


class HungCallsError(ServiceUnavailableError):
    """503: not started, because ``MAX_HUNG_CALLS`` earlier calls through this breaker
    timed out and still have not returned.

    Each such call holds a thread; refusing more bounds the threads a hung dependency
    can take. The refusal counts as a failure of the dependency (it is holding those
    calls), so the breaker opens rather than piling up threads.
    """

    default_code = "upstream_hung"

    def __init__(self, breaker: str, hung: int) -> None:
        super().__init__(
            f"The upstream '{breaker}' has {hung} calls still running past their timeout; "
            "not starting another."
        )
        self.breaker = breaker
        self.hung = hung


# --- classifying errors ------------------------------------------------------------------


def status_of(error: BaseException) -> int | None:
    """The HTTP status an error stands for: an ``AppError``'s, an ``HTTPException``'s,
    or that of the ``response`` it carries (``requests``, ``httpx``); else ``None``."""
    if isinstance(error, AppError):
        return error.status_code
    if isinstance(error, HTTPException):
        return error.code
    try:
        status = getattr(getattr(error, "response", None), "status_code", None)
    except Exception:  # a property of a foreign exception that raises: no status
        return None
    return status if isinstance(status, int) else None


def client_error(error: BaseException) -> bool:
    """Default exclusion: a 4xx answer is the caller's fault, not the dependency's.

    Operational ``AppError``s with a 4xx status, werkzeug's 4xx exceptions and errors
    carrying a 4xx response never count as failures (pybreaker counts them as
    successes: the dependency answered).
    """
    if isinstance(error, AppError) and not error.is_operational:
        return False
    status = status_of(error)
    return status is not None and 400 <= status < 500


# --- settings ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BreakerSettings:
    """The resolved settings of one named breaker."""

    fail_max: int = 5
    reset_timeout: float = 30.0
    success_threshold: int = 1
    half_open_max_calls: int = 1
    timeout: float | None = None
    storage: str = "memory"

    @classmethod
    def resolve(
        cls, settings: Settings, name: str, options: Mapping[str, Any] | None = None
    ) -> BreakerSettings:
        """Defaults from ``GATEWAY_OBS_BREAKER_*``, then ``GATEWAY_OBS_BREAKERS[name]``,
        then ``options`` (validated here; :class:`ConfigError` names every bad one)."""
        values: dict[str, Any] = {
            "fail_max": settings.breaker_fail_max,
            "reset_timeout": settings.breaker_reset_timeout,
            "success_threshold": settings.breaker_success_threshold,
            "half_open_max_calls": settings.breaker_half_open_max_calls,
            "timeout": settings.breaker_timeout,
            "storage": settings.breaker_storage,
        }
        values.update((settings.breakers or {}).get(name, {}))
        if options:
            values.update(parse_options(f"breaker {name!r}", options, BREAKER_OPTIONS))
        return cls(**values)


# --- pybreaker with an injectable clock ----------------------------------------------------


class _PyBreaker(pybreaker.CircuitBreaker):
    """pybreaker's breaker whose ``opened_at`` comes from an injectable clock."""

    def __init__(self, clock: Clock, **kwargs: Any) -> None:
        self._clock = clock
        super().__init__(**kwargs)

    def open(self) -> bool:
        with self._lock:
            self._state_storage.opened_at = datetime.fromtimestamp(self._clock(), timezone.utc)
            self.state = self._state_storage.state = pybreaker.STATE_OPEN
            return self._throw_new_error_on_trip


class _TransitionListener(pybreaker.CircuitBreakerListener):
    """Logs every transition and sets ``circuit_breaker_state``."""

    def __init__(self, owner: CircuitBreaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._owner._transitioned(old_state.name if old_state else None, new_state.name)


# --- Redis-shared state with a local fallback -----------------------------------------------


class _ErrorFlag(logging.Logger):
    """Stands in for ``CircuitRedisStorage.logger``: pybreaker reports every Redis error
    through ``logger.exception`` and carries on with a default; this notes it instead."""

    def __init__(self) -> None:
        super().__init__(LOGGER_NAME + ".breaker.storage")
        self.last_error: BaseException | None = None

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.last_error = sys.exc_info()[1] or RuntimeError(str(msg))


class StorageHealth:
    """Whether the breakers' Redis is usable; shared by every breaker of one app.

    After an error no breaker touches Redis for ``retry_interval`` seconds (calls
    would otherwise each wait for a socket timeout, under the breaker's lock); the
    warning is logged at most once per ``warn_interval``.
    """

    def __init__(
        self,
        retry_interval: float,
        warn_interval: float = 60.0,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.retry_interval = retry_interval
        self.warn_interval = warn_interval
        self._monotonic = monotonic
        self._down = False
        self._retry_at = 0.0
        self._warned_at: float | None = None

    @property
    def down(self) -> bool:
        """Whether the last attempt to use Redis failed."""
        return self._down

    def usable(self) -> bool:
        """Whether to try Redis now."""
        return not self._down or self._monotonic() >= self._retry_at

    def failed(self, error: BaseException, breaker: str) -> None:
        """Note a Redis error; warn unless a warning went out recently."""
        now = self._monotonic()
        self._down = True
        self._retry_at = now + self.retry_interval
        if self._warned_at is not None and now - self._warned_at < self.warn_interval:
            return
        self._warned_at = now
        _log.warning(
            "breaker state storage unavailable; using local state",
            extra={
                "breaker": breaker,
                "error_type": type(error).__name__,
                "retry_in_s": self.retry_interval,
            },
        )

    def succeeded(self) -> None:
        """Note a working Redis call (logs the recovery once)."""
        if self._down:
            self._down = False
            self._warned_at = None
            _log.info("breaker state storage reachable again; sharing state through Redis")


class SharedStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's ``CircuitRedisStorage`` with a local copy to fall back on.

    Every write goes to both; reads come from Redis and refresh the local copy.
    While Redis is down the breaker works on the local copy (so it still opens and
    closes in this process) and a warning is logged at a capped rate; when Redis
    answers again, Redis is the truth again. A Redis error never reaches the caller.
    """

    def __init__(self, client: Any, namespace: str, health: StorageHealth, breaker: str) -> None:
        super().__init__("redis")
        self._client = client
        self._namespace = namespace
        self._health = health
        self._breaker = breaker
        self._local = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._flag = _ErrorFlag()
        self._remote: pybreaker.CircuitRedisStorage | None = None

    def _redis(self) -> pybreaker.CircuitRedisStorage | None:
        if not self._health.usable():
            return None
        if self._remote is None:
            try:
                # setnx of the initial keys: a new worker never resets a shared state.
                remote = pybreaker.CircuitRedisStorage(
                    pybreaker.STATE_CLOSED, self._client, namespace=self._namespace
                )
            except Exception as exc:
                self._health.failed(exc, self._breaker)
                return None
            remote.logger = self._flag
            self._remote = remote
        self._flag.last_error = None
        return self._remote

    def _settle(self, error: BaseException | None) -> bool:
        """Whether the Redis call just made worked; notes the outcome."""
        error = error or self._flag.last_error
        if error is None:
            self._health.succeeded()
            return True
        self._flag.last_error = None
        self._health.failed(error, self._breaker)
        return False

    def _write(self, action: Callable[[pybreaker.CircuitBreakerStorage], None]) -> None:
        action(self._local)
        remote = self._redis()
        if remote is None:
            return
        try:
            action(remote)
        except Exception as exc:
            self._settle(exc)
        else:
            self._settle(None)

    def _read(self, read: Callable[[pybreaker.CircuitBreakerStorage], Any]) -> Any:
        remote = self._redis()
        if remote is not None:
            try:
                value = read(remote)
            except Exception as exc:
                self._settle(exc)
            else:
                if self._settle(None):
                    return value
        return read(self._local)

    @property
    def state(self) -> str:
        value = cast(str, self._read(lambda s: s.state))
        if value != self._local.state:
            self._local.state = value
        return value

    @state.setter
    def state(self, state: str) -> None:
        def write(storage: pybreaker.CircuitBreakerStorage) -> None:
            storage.state = state

        self._write(write)

    def increment_counter(self) -> None:
        self._write(lambda s: s.increment_counter())

    def reset_counter(self) -> None:
        self._write(lambda s: s.reset_counter())

    def increment_success_counter(self) -> None:
        self._write(lambda s: s.increment_success_counter())

    def reset_success_counter(self) -> None:
        self._write(lambda s: s.reset_success_counter())

    @property
    def counter(self) -> int:
        return cast(int, self._read(lambda s: s.counter))

    @property
    def success_counter(self) -> int:
        return cast(int, self._read(lambda s: s.success_counter))

    @property
    def opened_at(self) -> datetime | None:
        value = cast("datetime | None", self._read(lambda s: s.opened_at))
        if value is not None:
            self._local.opened_at = value
        return value

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        def write(storage: pybreaker.CircuitBreakerStorage) -> None:
            storage.opened_at = now

        self._write(write)


def check_redis_client(client: Any) -> None:
    """Refuse a client that decodes responses: pybreaker's Redis storage reads bytes.

    :raises ValueError: with what to do instead.
    """
    get_kwargs = getattr(client, "get_connection_kwargs", None)
    if callable(get_kwargs):
        kwargs = get_kwargs()
    else:
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if kwargs.get("decode_responses"):
        raise ValueError(
            "the Redis client for circuit-breaker state has decode_responses=True, but "
            "pybreaker's Redis storage reads raw bytes (it calls .decode() on them). Give the "
            "breakers a client of their own without it, e.g. redis.Redis.from_url(url)."
        )


# --- running a call with a timeout ------------------------------------------------------------

# What became of a call handed to a worker thread.
_QUEUED, _RUNNING, _DONE, _CANCELLED, _ABANDONED = range(5)


class _Task:
    """One call for a worker thread, in the caller's context (request ID, app, request)."""

    __slots__ = ("args", "context", "done", "error", "fn", "kwargs", "result", "state")

    def __init__(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.context = contextvars.copy_context()
        self.done = threading.Event()
        self.state = _QUEUED
        self.result: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        """The function's result, or its exception raised here."""
        error = self.error
        if error is None:
            return self.result
        self.error = None
        try:
            raise error
        finally:
            del error


class _TimeoutRunner:
    """Runs calls on daemon threads so that the caller can stop waiting.

    Every call starts at once: a call is handed either to an idle worker, reserved for
    it under the lock (so simultaneous calls never queue behind one idle worker), or to
    a new thread. So the threads busy with calls whose callers still wait are at most
    the callers themselves. Calls whose callers gave up (timed out) but that still run
    are capped at ``MAX_HUNG_CALLS``: past it, new calls are refused with
    :class:`HungCallsError` instead of starting yet another thread. Idle workers exit
    after ``WORKER_IDLE_SECONDS``.

    Daemon threads, not a ``ThreadPoolExecutor``: its threads are joined at exit,
    so one hung call would keep a worker process from ever exiting.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._max_hung = MAX_HUNG_CALLS
        self._idle_seconds = WORKER_IDLE_SECONDS
        self._tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._started = 0
        self._idle = 0  # idle workers not yet promised to a queued task
        self._hung = 0

    @property
    def hung(self) -> int:
        """Calls that timed out and are still running."""
        return self._hung

    def submit(self, breaker: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> _Task:
        """Start ``fn`` in a worker now.

        :raises HungCallsError: while ``MAX_HUNG_CALLS`` timed-out calls still run.
        """
        task = _Task(fn, args, kwargs)
        with self._lock:
            if self._hung >= self._max_hung:
                raise HungCallsError(breaker, self._hung)
            spawn = self._idle == 0
            if spawn:
                self._threads += 1
                self._started += 1
                number = self._started
            else:
                self._idle -= 1
        if spawn:
            try:
                threading.Thread(
                    target=self._work, name=f"breaker-{self._name}-{number}", daemon=True
                ).start()
            except BaseException:
                with self._lock:
                    self._threads -= 1
                raise
        self._tasks.put(task)
        return task

    def wait(self, task: _Task, timeout: float) -> bool:
        """Whether ``task`` finished within ``timeout``; if not, it is given up on."""
        if task.done.wait(timeout):
            return True
        with self._lock:
            if task.state == _QUEUED:
                task.state = _CANCELLED  # its worker skips it
            elif task.state == _RUNNING:
                task.state = _ABANDONED
                self._hung += 1
            else:
                return True  # finished just now
        return False

    def _work(self) -> None:
        tasks, lock = self._tasks, self._lock
        while True:
            try:
                task = tasks.get(timeout=self._idle_seconds)
            except queue.Empty:
                with lock:
                    # Exit only if no queued task is promised to the idle workers.
                    if self._idle > 0:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            with lock:
                run = task.state == _QUEUED
                if run:
                    task.state = _RUNNING
            if run:
                try:
                    task.result = task.context.run(task.fn, *task.args, **task.kwargs)
                except BaseException as exc:
                    task.error = exc
            with lock:
                if task.state == _ABANDONED:
                    self._hung -= 1
                    task.error = task.result = None  # nobody waits for it
                if run:
                    task.state = _DONE
                self._idle += 1
            task.done.set()
            del task


def _deadline_left(deadlines: tuple[tuple[Clock, float], ...]) -> float:
    return min(moment - clock() for clock, moment in deadlines)


# --- the breaker ---------------------------------------------------------------------------------

#: What the admission step hands to the recording step: the pybreaker state object
#: that admitted the call, whether the call is a half-open trial, and when it started.
_Token = tuple[pybreaker.CircuitBreakerState, bool, float]


class CircuitBreaker:
    """One named circuit breaker of one app; calls through it run in parallel.

    Use it as a decorator (``@cb``, ``@cb(fallback=f)``), as ``cb.call(fn, *a, **kw)``
    or as a context manager (``with cb: ...``). While it is open, calls raise
    :class:`~flask_gateway_obs.CircuitOpenError` at once without touching the
    dependency; the call that opens it raises one too, chained to its own error.

    Create breakers with ``obs.circuit_breaker(name)`` or ``@breaker(name)``, not directly.

    :param name: the ``breaker`` label and log field.
    :param settings: thresholds and timeouts.
    :param storage: a pybreaker storage (memory, or Redis through :class:`SharedStorage`).
    :param owner: whose ``recorder`` gets the metrics (read at each use).
    :param clock: wall-clock seconds (``time.time``); inject one in tests.
    :param exclude: further exception types or predicates that never count as failures.
    :param listeners: further pybreaker listeners.
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        storage: pybreaker.CircuitBreakerStorage | None = None,
        owner: _HasRecorder,
        clock: Clock = time.time,
        exclude: Iterable[Exclusion] = (),
        listeners: Sequence[pybreaker.CircuitBreakerListener] = (),
    ) -> None:
        self.name = name
        self.settings = settings
        self._owner = owner
        self._clock = clock
        self._user_listeners = tuple(listeners)
        self._cb = _PyBreaker(
            clock,
            fail_max=settings.fail_max,
            reset_timeout=settings.reset_timeout,
            success_threshold=settings.success_threshold,
            exclude=[client_error, *(_contained(name, e) for e in exclude)],
            listeners=[_TransitionListener(self), *self._user_listeners],
            state_storage=storage or pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED),
            name=name,
            throw_new_error_on_trip=False,
        )
        self._lock = self._cb._lock
        self._trials = 0
        self._runner: _TimeoutRunner | None = None
        if settings.timeout is not None:
            expect_timeouts()
            self._runner = _TimeoutRunner(name)
        self._open_blocks: contextvars.ContextVar[tuple[_Token, ...]] = contextvars.ContextVar(
            f"breaker_{name}_blocks", default=()
        )
        self._report_state(self._cb.current_state)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state}>"

    # --- inspection and manual control ----------------------------------------------------

    @property
    def underlying(self) -> pybreaker.CircuitBreaker:
        """The ``pybreaker.CircuitBreaker`` underneath (its listeners, its storage)."""
        return self._cb

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (as the storage says now)."""
        with self._lock:
            return str(self._cb.state.name)

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted so far."""
        with self._lock:
            return int(self._cb.fail_counter)

    @property
    def hung_calls(self) -> int:
        """Calls that timed out (``timeout``) and whose functions are still running."""
        return 0 if self._runner is None else self._runner.hung

    @property
    def retry_after(self) -> float | None:
        """Seconds until an open breaker lets a trial call through; ``None`` unless open."""
        with self._lock:
            if self._cb.state.name != pybreaker.STATE_OPEN:
                return None
            return max(0.0, self._until_half_open())

    def open(self) -> None:
        """Open now (e.g. for maintenance of the dependency)."""
        self._cb.open()

    def half_open(self) -> None:
        """Let trial calls through now."""
        self._cb.half_open()

    def close(self) -> None:
        """Close now and forget the failures counted."""
        self._cb.close()

    # --- the call protocol -------------------------------------------------------------------

    def _until_half_open(self) -> float:
        opened_at = self._cb._state_storage.opened_at
        if opened_at is None:
            return 0.0
        return float(opened_at.timestamp() + self.settings.reset_timeout - self._clock())

    def _enter(self) -> _Token:
        """Admit a call or raise :class:`CircuitOpenError`."""
        with self._lock:
            state = self._cb.state
            name = state.name
            if name == pybreaker.STATE_OPEN:
                wait = self._until_half_open()
                if wait > 0:
                    self._rejected()
                    raise CircuitOpenError(self.name, retry_after=wait)
                self._cb.half_open()
                state = self._cb._state
                name = state.name
            trial = name == pybreaker.STATE_HALF_OPEN
            if trial:
                if self._trials >= self.settings.half_open_max_calls:
                    self._rejected()
                    raise CircuitOpenError(self.name, retry_after=_TRIALS_BUSY_RETRY_AFTER)
                self._trials += 1
            if self._user_listeners:
                try:
                    for listener in self._user_listeners:
                        listener.before_call(self._cb, _no_call)
                except BaseException:
                    if trial:  # the call will not happen: give its trial slot back
                        self._trials -= 1
                    raise
        return state, trial, time.perf_counter()

    def _exit(
        self,
        token: _Token,
        error: BaseException | None,
        verdict: bool = True,
        reached: bool = True,
    ) -> bool:
        """Record the outcome of an admitted call; ``True`` if it opened the breaker.

        ``verdict=False``: the outcome says nothing about the dependency (the caller's
        own deadline cut the wait short), so it is not counted. ``reached=False``: the
        dependency was not called, so nothing is timed.
        """
        admitted, trial, started = token
        seconds = time.perf_counter() - started
        tripped = False
        failed = error is not None
        with self._lock:
            if trial:
                self._trials -= 1
            if error is not None and not isinstance(error, Exception):
                return False  # interrupted (KeyboardInterrupt, SystemExit): no verdict
            if error is not None:
                failed = self._cb.is_system_error(error)
            # An outcome from before a transition is stale: the state that admitted it is gone.
            if verdict and self._cb.state is admitted:
                if error is None:
                    admitted._handle_success()
                else:
                    try:
                        admitted._handle_error(error, reraise=False)
                    except BaseException as raised:
                        # With throw_new_error_on_trip=False pybreaker re-raises the error
                        # itself exactly when the failure opened the breaker.
                        if raised is not error:
                            raise
                        tripped = True
        if reached:
            try:  # noqa: SIM105 - cheaper than contextlib.suppress on every call
                self._owner.recorder.dependency(self.name, "call", seconds, failed)
            except Exception:  # instrumentation never breaks a call
                pass
        return tripped

    def _opened(self, error: BaseException) -> CircuitOpenError:
        opened = CircuitOpenError(self.name, retry_after=self.settings.reset_timeout)
        opened.__cause__ = error
        return opened

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` through the breaker.

        :raises CircuitOpenError: while open, or when this call's failure opened it.
        :raises CallTimeoutError: when ``timeout`` is set and the call took longer (or
            longer than what is left of the deadline of a retry around it).
        :raises HungCallsError: when ``timeout`` is set and ``MAX_HUNG_CALLS`` calls
            that timed out are still running.
        """
        token = self._enter()
        verdict = reached = True
        try:
            runner = self._runner
            if runner is None:
                result = fn(*args, **kwargs)
            else:
                timeout, by_deadline = self._timeout()
                if timeout <= 0:  # the retry's deadline has passed already
                    verdict = reached = False
                    raise CallTimeoutError(self.name, timeout, by_deadline=True)
                reached = False
                task = runner.submit(self.name, fn, args, kwargs)
                reached = True
                if not runner.wait(task, timeout):
                    verdict = not by_deadline
                    raise CallTimeoutError(self.name, timeout, by_deadline=by_deadline)
                result = task.outcome()
        except BaseException as error:
            if self._exit(token, error, verdict, reached):
                raise self._opened(error) from error
            raise
        self._exit(token, None)
        return result

    def _timeout(self) -> tuple[float, bool]:
        """The wait for this call, and whether a retry's deadline made it shorter."""
        timeout = cast(float, self.settings.timeout)
        deadlines = DEADLINES.get()
        if deadlines:
            left = _deadline_left(deadlines)
            if left < timeout:
                return left, True
        return timeout, False

    async def call_async(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker; a ``timeout`` cancels it."""
        token = self._enter()
        verdict = reached = True
        try:
            if self.settings.timeout is None:
                result = await fn(*args, **kwargs)
            else:
                timeout, by_deadline = self._timeout()
                if timeout <= 0:
                    verdict = reached = False
                    raise CallTimeoutError(self.name, timeout, by_deadline=True)
                task = asyncio.ensure_future(fn(*args, **kwargs))
                try:
                    done, _ = await asyncio.wait({task}, timeout=timeout)
                finally:
                    if not task.done():  # timed out, or the caller was cancelled
                        task.cancel()
                if not done:
                    verdict = not by_deadline
                    raise CallTimeoutError(self.name, timeout, by_deadline=by_deadline)
                result = task.result()
        except BaseException as error:
            if self._exit(token, error, verdict, reached):
                raise self._opened(error) from error
            raise
        self._exit(token, None)
        return result

    def __enter__(self) -> CircuitBreaker:
        token = self._enter()
        self._open_blocks.set((*self._open_blocks.get(), token))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        blocks = self._open_blocks.get()
        self._open_blocks.set(blocks[:-1])
        if self._exit(blocks[-1], exc) and exc is not None:
            raise self._opened(exc) from exc

    def is_failure(self, error: BaseException) -> bool:
        """Whether ``error`` counts against the dependency (and so calls the fallback)."""
        if isinstance(error, CircuitOpenError):
            return True
        return isinstance(error, Exception) and bool(self._cb.is_system_error(error))

    def __call__(
        self, fn: F | None = None, /, *, fallback: Callable[..., Any] | None = None
    ) -> Any:
        """Decorate ``fn`` (``@cb`` or ``@cb(fallback=f)``).

        ``fallback(error, *args, **kwargs)`` is returned instead when the breaker
        is open or the call failed; errors excluded from counting (4xx) still raise.
        """
        if fn is None:
            return functools.partial(self.__call__, fallback=fallback)
        resolve = functools.partial(_constant, self)
        return _decorate(resolve, fn, fallback)

    # --- listener side ----------------------------------------------------------------------------

    def _report_state(self, state: str) -> None:
        with contextlib.suppress(Exception):  # instrumentation never breaks a call
            self._owner.recorder.breaker_state(self.name, STATE_CODES.get(state, 0))

    def _transitioned(self, old: str | None, new: str) -> None:
        try:
            failures = int(self._cb._state_storage.counter)
            fields = {
                "breaker": self.name,
                "from_state": old,
                "to_state": new,
                "failure_count": failures,
            }
            level = logging.WARNING if new == pybreaker.STATE_OPEN else logging.INFO
            _log.log(level, "circuit breaker %s: %s -> %s", self.name, old, new, extra=fields)
        except Exception:  # instrumentation never breaks a call
            pass
        self._report_state(new)
        tracer = getattr(self._owner, "tracer", None)  # a span event when tracing is on
        if tracer is not None:
            with contextlib.suppress(Exception):
                tracer.event(
                    "circuit_breaker.state_change",
                    {
                        "circuit_breaker.name": self.name,
                        "circuit_breaker.from_state": old or "",
                        "circuit_breaker.to_state": new,
                    },
                )

    def _rejected(self) -> None:
        """Mark the current (client) span: this breaker refused the call."""
        tracer = getattr(self._owner, "tracer", None)
        if tracer is not None:
            with contextlib.suppress(Exception):
                tracer.rejected(self.name)


def _no_call() -> None:
    """What user listeners' ``before_call`` sees as the function (it runs later)."""


def _contained(breaker: str, exclusion: Exclusion) -> Exclusion:
    """``exclusion`` as pybreaker should see it: an exception class as a plain class, and
    a predicate that cannot raise (a broken one counts the error, which is re-raised as
    it is, instead of replacing it and leaving the breaker without a verdict)."""
    if isinstance(exclusion, type):
        if type(exclusion) is type:
            return exclusion
        # pybreaker tells classes from predicates by ``type(x) is type``: a class with a
        # metaclass would be called as a predicate (and always "exclude").
        cls = exclusion
        return lambda error: isinstance(error, cls)
    predicate = exclusion
    warned = False

    def safe(error: BaseException) -> bool:
        nonlocal warned
        try:
            return bool(predicate(error))
        except Exception:
            if not warned:
                warned = True
                _log.warning(
                    "exclude predicate of circuit breaker %s raised; counting the error",
                    breaker,
                    exc_info=True,
                    extra={"breaker": breaker, "error_type": type(error).__name__},
                )
            return False

    return safe


def _constant(value: T) -> T:
    return value


def _decorate(
    resolve: Callable[[], CircuitBreaker], fn: F, fallback: Callable[..., Any] | None
) -> F:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            cb = resolve()
            if fallback is None:
                return await cb.call_async(fn, *args, **kwargs)
            try:
                return await cb.call_async(fn, *args, **kwargs)
            except Exception as error:
                if not cb.is_failure(error):
                    raise
                result = fallback(error, *args, **kwargs)
                return await result if inspect.isawaitable(result) else result

        return cast(F, async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cb = resolve()
        if fallback is None:
            return cb.call(fn, *args, **kwargs)
        try:
            return cb.call(fn, *args, **kwargs)
        except Exception as error:
            if not cb.is_failure(error):
                raise
            return fallback(error, *args, **kwargs)

    return cast(F, wrapper)


# --- the per-app registry ---------------------------------------------------------------------

_HOOKS = frozenset({"clock", "exclude", "listeners"})


class BreakerRegistry:
    """The named breakers of one app, created on first use.

    :param settings: the app's settings (defaults and per-name overrides).
    :param namespace: Redis key prefix of this app's shared breaker state.
    :param owner: whose ``recorder`` gets the metrics.
    :param redis_client: client for ``storage = redis`` (checked here).
    :param redis_factory: makes that client when the first breaker with ``storage =
        redis`` is created, if none was given (a Redis URL is set, but the configured
        storage is memory).
    :param default_namespace: whether ``namespace`` is only the default one (no service
        name, no namespace configured): sharing state under it is warned about.
    """

    def __init__(
        self,
        settings: Settings,
        namespace: str,
        owner: _HasRecorder,
        redis_client: Any = None,
        *,
        redis_factory: Callable[[], Any] | None = None,
        default_namespace: bool = False,
    ) -> None:
        self.settings = settings
        self.namespace = namespace
        self._owner = owner
        self._breakers: dict[str, CircuitBreaker] = {}
        self._options: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.health = StorageHealth(settings.breaker_redis_retry_interval)
        self._redis: Any = None
        self._redis_factory = redis_factory
        self._warn_namespace = default_namespace
        if redis_client is not None:
            self.set_redis_client(redis_client)

    def warn_if_default_namespace(self) -> None:
        """Warn (once) that shared state lives under a namespace nobody chose.

        The default ``gateway_obs:<service>`` falls back to the app's import name (often
        ``app``), so two services using one Redis would share their breakers of the same
        name: one opening "payments" would open the other's.
        """
        if not self._warn_namespace:
            return
        self._warn_namespace = False
        _log.warning(
            "circuit breakers share state in Redis under the default namespace %r, taken "
            "from the app's import name: other services using this Redis with breakers of "
            "the same names would share them. Set GATEWAY_OBS_SERVICE_NAME or "
            "GATEWAY_OBS_BREAKER_REDIS_NAMESPACE.",
            self.namespace,
            extra={"namespace": self.namespace},
        )

    def set_redis_client(self, client: Any) -> None:
        """Share the state of breakers created from now on through ``client``.

        :raises ValueError: if ``client`` has ``decode_responses=True``.
        """
        check_redis_client(client)
        self._redis = client
        self._redis_factory = None

    def _redis_client(self) -> Any:
        """The client for shared state, made now from the URL if need be (under the lock)."""
        if self._redis is None and self._redis_factory is not None:
            self.set_redis_client(self._redis_factory())
        return self._redis

    def names(self) -> list[str]:
        """Names of the breakers created so far."""
        return sorted(self._breakers)

    def get(self, name: str, **options: Any) -> CircuitBreaker:
        """The breaker called ``name``, created now if it is new.

        ``options`` (the settings' option names, plus ``clock``, ``exclude`` and
        ``listeners``) apply when the breaker is created; asking again for the same
        name with different options is an error, with none it returns the breaker.

        :raises ConfigError: for an unknown or invalid option.
        :raises ValueError: when the breaker exists with other options, or
            ``storage="redis"`` has no Redis client.
        """
        found = self._breakers.get(name)
        if found is not None and (not options or self._options.get(name) == options):
            return found
        with self._lock:
            found = self._breakers.get(name)
            if found is not None:
                if options and self._options.get(name) != options:
                    raise ValueError(
                        f"circuit breaker {name!r} already exists with options "
                        f"{self._options.get(name) or {}!r}; got {options!r}. Give each "
                        "configuration its own name, or set the options in one place "
                        "(GATEWAY_OBS_BREAKERS)."
                    )
                return found
            created = self._create(name, options)
            self._breakers[name] = created
            self._options[name] = dict(options)
            return created

    def _create(self, name: str, options: Mapping[str, Any]) -> CircuitBreaker:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a circuit breaker needs a non-empty name, got {name!r}")
        hooks = {k: v for k, v in options.items() if k in _HOOKS}
        settings = BreakerSettings.resolve(
            self.settings, name, {k: v for k, v in options.items() if k not in _HOOKS}
        )
        storage: pybreaker.CircuitBreakerStorage | None = None
        if settings.storage == "redis":
            client = self._redis_client()
            if client is None:
                raise ValueError(
                    f"circuit breaker {name!r} uses storage 'redis' but no Redis is set: "
                    "set GATEWAY_OBS_BREAKER_REDIS_URL or GATEWAY_OBS_REDIS_URL, or call "
                    "flask_gateway_obs.resilience.set_breaker_redis_client(app, client)"
                )
            self.warn_if_default_namespace()
            storage = SharedStorage(client, f"{self.namespace}:{name}", self.health, name)
        return CircuitBreaker(
            name,
            settings,
            storage=storage,
            owner=self._owner,
            clock=hooks.get("clock", time.time),
            exclude=tuple(hooks.get("exclude", ())),
            listeners=tuple(hooks.get("listeners", ())),
        )


# --- the import-time decorator ------------------------------------------------------------------


def breaker(
    name: str, *, fallback: Callable[..., Any] | None = None, **options: Any
) -> Callable[[F], F]:
    """Decorate a function so each call goes through the current app's breaker ``name``.

    Usable at import time: the app is looked up at call time
    (``flask.current_app``), and the breaker is created on its first call from
    ``GATEWAY_OBS_BREAKER_*``, ``GATEWAY_OBS_BREAKERS[name]`` and ``options``.
    Outside an app context a process-wide set of breakers with the built-in
    defaults (memory storage, no metrics) is used.

    .. code-block:: python

        @breaker("payments", fallback=lambda error, order_id: {"status": "pending"})
        def charge(order_id): ...

    :param name: the breaker's name (``breaker`` label of the metrics).
    :param fallback: ``fallback(error, *args, **kwargs)`` answers instead when the
        breaker is open or the call failed.
    :param options: ``fail_max``, ``reset_timeout``, ``success_threshold``,
        ``half_open_max_calls``, ``timeout``, ``storage``, ``exclude``, ``clock``, ``listeners``.
    """
    from . import resolver

    if options.get("timeout") is not None:
        expect_timeouts()  # before the first call creates the breaker

    def decorate(fn: F) -> F:
        return _decorate(resolver(lambda r: r.breakers.get(name, **options)), fn, fallback)

    return decorate
