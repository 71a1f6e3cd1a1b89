"""One named circuit breaker: pybreaker's state, calls that run in parallel.

pybreaker keeps the state (closed, open, half-open) in its storage, makes the
transitions (``open()``, ``half_open()``, ``close()``) and tells its listeners of each
one. Its ``CircuitBreaker.call`` holds one lock for the whole wrapped call, so calls
through one breaker would run one at a time; here a call is admitted and its outcome
recorded through pybreaker's public state API, and the function runs outside any lock:

1. admission: a closed breaker admits at once; an open one refuses until
   ``reset_timeout`` has passed, then half-opens; a half-open one admits at most
   ``half_open_max_calls`` trial calls at a time (these steps hold a short lock);
2. the call, without the lock (in a worker thread when ``timeout`` is set, for at most
   what is left of an enclosing retry's deadline);
3. the outcome: a failure counts in the storage's failure counter (shared through
   Redis) and opens the breaker at ``fail_max``; trial successes close it at
   ``success_threshold``, a trial failure opens it again. An outcome that arrives
   after the state changed meanwhile is stale and left out.

Every transition reaches a pybreaker listener that logs it and sets
``circuit_breaker_state``; every call that reached the dependency is timed into
``dependency_latency_seconds``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import pybreaker

from ..errors import CircuitOpenError
from ..logs import LOGGER_NAME
from .classify import Exclusion, client_error, contained
from .deadlines import DEADLINES, Clock, deadline_left, expect_timeouts
from .settings import BreakerSettings
from .storage import LocalStorage
from .timeouts import CallTimeoutError, TimeoutRunner

if TYPE_CHECKING:
    from ..core.contracts import Recorder

__all__ = ["STATE_CODES", "CircuitBreaker", "Exclusion", "decorate"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
#: ``circuit_breaker_state`` values.
STATE_CODES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}
#: Retry-After of a call refused because every half-open trial slot is taken.
_TRIALS_BUSY_RETRY_AFTER = 1.0

_log = logging.getLogger(LOGGER_NAME + ".breaker")

#: What admission hands to the outcome: the pybreaker state object that admitted the
#: call, whether the call is a half-open trial, and when it started.
_Token = tuple[pybreaker.CircuitBreakerState, bool, float]


class _HasRecorder(Protocol):
    @property
    def recorder(self) -> Recorder: ...


class _TransitionListener(pybreaker.CircuitBreakerListener):
    """Hands every transition to the breaker (log, gauge, trial bookkeeping)."""

    def __init__(self, owner: CircuitBreaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._owner._transitioned(old_state.name if old_state else None, new_state)


class CircuitBreaker:
    """One named circuit breaker of one app; calls through it run in parallel.

    Use it as a decorator (``@cb``, ``@cb(fallback=f)``), as ``cb.call(fn, *a, **kw)``
    or as a context manager (``with cb: ...``). While it is open, calls raise
    :class:`~flask_gateway_obs.CircuitOpenError` at once without touching the
    dependency; the call that opens it raises one too, chained to its own error.

    Create breakers with ``obs.circuit_breaker(name)`` or ``@breaker(name)``, not directly.

    :param name: the ``breaker`` label and log field.
    :param settings: thresholds and timeouts.
    :param storage: a pybreaker storage (default: memory on ``clock``).
    :param owner: whose ``recorder`` gets the metrics (read at each use).
    :param clock: seconds (``time.time``) for reset timeouts and call durations; inject
        one in tests.
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
        # Durations on the injected clock in tests, else on the monotonic high-resolution one.
        self._timer = time.perf_counter if clock is time.time else clock
        self._listeners = tuple(listeners)
        self._storage = storage if storage is not None else LocalStorage(clock)
        # Re-entrant, as pybreaker's own: a listener may read the state it is told about.
        self._lock = threading.RLock()
        self._trials = 0  # half-open trial calls in flight
        self._trial_successes = 0
        self._cb = pybreaker.CircuitBreaker(
            fail_max=settings.fail_max,
            reset_timeout=settings.reset_timeout,
            exclude=[client_error, *(contained(name, e) for e in exclude)],
            listeners=[_TransitionListener(self), *self._listeners],
            state_storage=self._storage,
            name=name,
        )
        #: The state object pybreaker made last (set by the listener at each transition).
        self._seen: pybreaker.CircuitBreakerState = self._cb.state
        self._runner: TimeoutRunner | None = None
        if settings.timeout is not None:
            expect_timeouts()
            self._runner = TimeoutRunner(name)
        self._open_blocks: contextvars.ContextVar[tuple[_Token, ...]] = contextvars.ContextVar(
            f"breaker_{name}_blocks", default=()
        )
        self._report_state(self._seen.name)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state}>"

    # --- inspection and manual control ----------------------------------------------------

    @property
    def underlying(self) -> pybreaker.CircuitBreaker:
        """The ``pybreaker.CircuitBreaker`` that holds the state (its listeners, its storage).

        Call through this object, not through the pybreaker one: its ``call`` runs calls
        one at a time and knows nothing of trials, timeouts or metrics.
        """
        return self._cb

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (as the storage says now)."""
        with self._lock:
            return str(self._cb.state.name)

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted so far."""
        return int(self._cb.fail_counter)

    @property
    def hung_calls(self) -> int:
        """Calls that timed out (``timeout``) and whose functions are still running."""
        return 0 if self._runner is None else self._runner.hung

    @property
    def retry_after(self) -> float | None:
        """Seconds until an open breaker lets a trial call through; ``None`` unless open."""
        with self._lock:
            if self._cb.state.name != OPEN:
                return None
            return max(0.0, self._until_half_open())

    def open(self) -> None:
        """Open now (e.g. for maintenance of the dependency)."""
        with self._lock:
            self._cb.open()

    def half_open(self) -> None:
        """Let trial calls through now."""
        with self._lock:
            self._cb.half_open()

    def close(self) -> None:
        """Close now and forget the failures counted."""
        with self._lock:
            self._cb.close()

    # --- the call protocol -------------------------------------------------------------------

    def _until_half_open(self) -> float:
        opened_at = self._storage.opened_at
        if opened_at is None:
            return 0.0
        return float(opened_at.timestamp() + self.settings.reset_timeout - self._clock())

    def _enter(self) -> _Token:
        """Admit a call or raise :class:`CircuitOpenError`."""
        seen = self._seen
        if seen.name == CLOSED and self._cb.current_state == CLOSED:
            if self._listeners:
                self._before_call()
            return seen, False, self._timer()
        with self._lock:
            state = self._cb.state  # syncs with the storage: listeners hear of changes
            if state.name == OPEN:
                wait = self._until_half_open()
                if wait > 0:
                    raise CircuitOpenError(self.name, retry_after=wait)
                self._cb.half_open()
                state = self._cb.state
            trial = state.name == HALF_OPEN
            if trial:
                if self._trials >= self.settings.half_open_max_calls:
                    raise CircuitOpenError(self.name, retry_after=_TRIALS_BUSY_RETRY_AFTER)
                self._trials += 1
            if self._listeners:
                try:
                    self._before_call()
                except BaseException:
                    if trial:  # the call will not happen: give its trial slot back
                        self._trials -= 1
                    raise
        return state, trial, self._timer()

    def _before_call(self) -> None:
        for listener in self._listeners:
            listener.before_call(self._cb, _no_call)

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
        seconds = self._timer() - started
        if error is not None and not isinstance(error, Exception):
            if trial:  # interrupted (KeyboardInterrupt, SystemExit): no verdict
                with self._lock:
                    self._trials -= 1
            return False
        failed = error is not None and bool(self._cb.is_system_error(error))
        tripped = False
        if trial or failed or not verdict:
            tripped = self._settle(admitted, trial, error if failed else None, verdict)
        else:
            # A success of a call admitted while closed: whatever happened meanwhile,
            # resetting the consecutive count is right, so no lock and no staleness check.
            self._storage.reset_counter()
            for listener in self._listeners:
                listener.success(self._cb)
        if reached:
            try:  # noqa: SIM105 - cheaper than contextlib.suppress on every call
                self._owner.recorder.dependency(self.name, "call", seconds, failed)
            except Exception:  # instrumentation never breaks a call
                pass
        return tripped

    def _settle(
        self,
        admitted: pybreaker.CircuitBreakerState,
        trial: bool,
        failure: BaseException | None,
        verdict: bool,
    ) -> bool:
        """Count a failure or a trial's outcome; ``True`` if the breaker opened."""
        with self._lock:
            if trial:
                self._trials -= 1
            # An outcome from before a transition is stale: the state that admitted it is gone.
            if not verdict or self._cb.state is not admitted:
                return False
            cb = self._cb
            if failure is not None:
                self._storage.increment_counter()
                for listener in self._listeners:
                    listener.failure(cb, failure)
                if trial or cb.fail_counter >= self.settings.fail_max:
                    cb.open()
                    return True
                return False
            self._storage.reset_counter()
            for listener in self._listeners:
                listener.success(cb)
            self._trial_successes += 1
            if self._trial_successes >= self.settings.success_threshold:
                cb.close()
            return False

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
            left = deadline_left(deadlines)
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
        return decorate(functools.partial(_constant, self), fn, fallback)

    # --- listener side ----------------------------------------------------------------------------

    def _report_state(self, state: str) -> None:
        try:  # noqa: SIM105
            self._owner.recorder.breaker_state(self.name, STATE_CODES.get(state, 0))
        except Exception:  # instrumentation never breaks a call
            pass

    def _transitioned(self, old: str | None, new_state: pybreaker.CircuitBreakerState) -> None:
        self._seen = new_state
        new = new_state.name
        if new == HALF_OPEN:
            self._trial_successes = 0
        try:
            fields = {
                "breaker": self.name,
                "from_state": old,
                "to_state": new,
                "failure_count": int(self._cb.fail_counter),
            }
            level = logging.WARNING if new == OPEN else logging.INFO
            _log.log(level, "circuit breaker %s: %s -> %s", self.name, old, new, extra=fields)
        except Exception:  # instrumentation never breaks a call
            pass
        self._report_state(new)


def _no_call() -> None:
    """What user listeners' ``before_call`` sees as the function (it runs later)."""


def _constant(value: T) -> T:
    return value


def decorate(
    resolve: Callable[[], CircuitBreaker], fn: F, fallback: Callable[..., Any] | None
) -> F:
    """``fn`` called through the breaker ``resolve()`` returns at each call."""
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
