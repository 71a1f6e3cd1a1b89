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
``circuit_breaker_state`` (and, for rate windows, ``circuit_breaker_failure_rate``, which
each call of the closed breaker also sets); every call that reached the dependency is
timed into ``dependency_latency_seconds``.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pybreaker

from ..errors import CircuitOpenError
from ..logs import LOGGER_NAME
from .calls import CallForms
from .classify import Exclusion, client_error, contained
from .deadlines import Clock, expect_timeouts
from .settings import BreakerSettings
from .storage import LocalStorage
from .timeouts import TimeoutRunner
from .windows import RECOVER, REOPEN, RateWindows

if TYPE_CHECKING:
    from ..core.contracts import Recorder

__all__ = ["STATE_CODES", "CircuitBreaker", "Exclusion"]

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


class CircuitBreaker(CallForms):
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
        self._trials = 0  # half-open trial calls (consecutive: at a time; rates: in all)
        self._trial_successes = 0
        self._rates = RateWindows(settings) if settings.rate_window else None
        self._reported_rate = -1.0
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
        """Failures counted now: consecutive ones, or those in the window (rate windows)."""
        if self._rates is not None:
            with self._lock:
                return self._rates.failures(self._timer())
        return int(self._cb.fail_counter)

    @property
    def failure_rate(self) -> float | None:
        """The share (0 to 1) of failed calls in the window; ``None`` for consecutive."""
        if self._rates is None:
            return None
        with self._lock:
            return self._rates.failure_rate(self._timer())

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
                    self._rejected()
                    raise CircuitOpenError(self.name, retry_after=wait)
                self._cb.half_open()
                state = self._cb.state
            trial = state.name == HALF_OPEN
            if trial:
                # Consecutive: trial calls at a time; rate windows: trial calls in all.
                if self._trials >= self.settings.half_open_max_calls:
                    self._rejected()
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

    def _count(self, outcome: str) -> None:
        try:  # noqa: SIM105 - cheaper than contextlib.suppress on every call
            self._owner.recorder.breaker_call(self.name, outcome)
        except Exception:  # instrumentation never breaks a call
            pass

    def _rejected(self) -> None:
        """Count a refused call and mark the current (client) span: this breaker refused it."""
        self._count("rejected")
        tracer = getattr(self._owner, "tracer", None)
        if tracer is not None:
            try:  # noqa: SIM105
                tracer.rejected(self.name)
            except Exception:  # instrumentation never breaks a call
                pass

    def _exit(
        self,
        token: _Token,
        error: BaseException | None,
        verdict: bool = True,
        reached: bool = True,
    ) -> bool:
        """Record the outcome of an admitted call; ``True`` if its failure opened the breaker.

        ``verdict=False``: the outcome says nothing about the dependency (the caller's
        own deadline cut the wait short), so it is not counted. ``reached=False``: the
        dependency was not called, so nothing is timed.
        """
        admitted, trial, started = token
        now = self._timer()
        seconds = now - started
        if error is not None and not isinstance(error, Exception):
            if trial:  # interrupted (KeyboardInterrupt, SystemExit): no verdict
                if self._rates is not None:
                    self._settle_rates(self._rates, admitted, trial, None, False, now, seconds)
                else:
                    self._settle(admitted, trial, None, False)
            return False
        failed = error is not None and bool(self._cb.is_system_error(error))
        tripped = False
        rates = self._rates
        if rates is not None:
            tripped = self._settle_rates(
                rates, admitted, trial, error if failed else None, verdict, now, seconds
            )
        elif trial or failed or not verdict:
            tripped = self._settle(admitted, trial, error if failed else None, verdict)
        else:
            # A success of a call admitted while closed: whatever happened meanwhile,
            # resetting the consecutive count is right, so no lock and no staleness check.
            self._storage.reset_counter()
            for listener in self._listeners:
                listener.success(self._cb)
        try:
            if verdict:
                self._owner.recorder.breaker_call(self.name, "failure" if failed else "success")
            if reached:
                self._owner.recorder.dependency(self.name, "call", seconds, failed)
        except Exception:  # instrumentation never breaks a call
            pass
        return tripped

    def _heard(self, failure: BaseException | None) -> None:
        for listener in self._listeners:
            if failure is None:
                listener.success(self._cb)
            else:
                listener.failure(self._cb, failure)

    def _settle(
        self,
        admitted: pybreaker.CircuitBreakerState,
        trial: bool,
        failure: BaseException | None,
        verdict: bool,
    ) -> bool:
        """Consecutive failures: count a failure or a trial's outcome; ``True`` if the
        breaker opened."""
        with self._lock:
            # An outcome from before a transition is stale: the state that admitted it is gone.
            if self._cb.state is not admitted:
                return False
            if trial:
                self._trials -= 1
            if not verdict:
                return False
            cb = self._cb
            self._heard(failure)
            if failure is not None:
                self._storage.increment_counter()
                if trial or cb.fail_counter >= self.settings.fail_max:
                    cb.open()
                    return True
                return False
            self._storage.reset_counter()
            self._trial_successes += 1
            if self._trial_successes >= self.settings.success_threshold:
                cb.close()
            return False

    def _settle_rates(
        self,
        rates: RateWindows,
        admitted: pybreaker.CircuitBreakerState,
        trial: bool,
        failure: BaseException | None,
        verdict: bool,
        now: float,
        seconds: float,
    ) -> bool:
        """Rate windows: count the outcome in the window of the state that admitted it."""
        failed = failure is not None
        limit = rates.slow_call_seconds
        slow = limit is not None and seconds > limit
        with self._lock:
            if self._seen is not admitted:  # stale (per-process windows: no storage read)
                return False
            if not verdict:
                if trial:
                    self._trials -= 1  # the trial said nothing: its permit goes back
                return False
            if self._listeners:
                self._heard(failure)
            if trial:
                decision = rates.record_trial(failed, slow)
                if decision == REOPEN:
                    self._cb.open()
                    return failed
                if decision == RECOVER:
                    self._cb.close()
                return False
            opens = rates.record(failed, slow, now)
            if rates.rate != self._reported_rate:  # checked inline: this runs on every call
                self._report_rate(rates.rate)
            if opens:
                self._cb.open()
                return failed
            return False

    def _opened(self, error: BaseException) -> CircuitOpenError:
        opened = CircuitOpenError(self.name, retry_after=self.settings.reset_timeout)
        opened.__cause__ = error
        return opened

    def is_failure(self, error: BaseException) -> bool:
        """Whether ``error`` counts against the dependency (and so calls the fallback)."""
        if isinstance(error, CircuitOpenError):
            return True
        return isinstance(error, Exception) and bool(self._cb.is_system_error(error))

    # --- listener side ----------------------------------------------------------------------------

    def _report_rate(self, rate: float) -> None:
        """Set ``circuit_breaker_failure_rate`` if ``rate`` is news (under ``self._lock``)."""
        if rate == self._reported_rate:
            return
        self._reported_rate = rate
        try:  # noqa: SIM105
            self._owner.recorder.breaker_failure_rate(self.name, rate)
        except Exception:  # instrumentation never breaks a call
            pass

    def _report_state(self, state: str) -> None:
        try:  # noqa: SIM105
            self._owner.recorder.breaker_state(self.name, STATE_CODES.get(state, 0))
        except Exception:  # instrumentation never breaks a call
            pass

    def _transitioned(self, old: str | None, new_state: pybreaker.CircuitBreakerState) -> None:
        self._seen = new_state
        new = new_state.name
        if new == HALF_OPEN:
            self._trials = self._trial_successes = 0
            if self._rates is not None:
                self._rates.half_opened()
        elif new == CLOSED and self._rates is not None:
            self._rates.closed()
        if self._rates is not None:
            # The gauge follows the window at every transition too, not only at the next
            # closed-state call: a close empties it, and a time: window forgets old seconds.
            with self._lock:
                self._report_rate(self._rates.failure_rate(self._timer()))
        try:
            fields = {
                "breaker": self.name,
                "from_state": old,
                "to_state": new,
                "failure_count": self.failure_count,
            }
            level = logging.WARNING if new == OPEN else logging.INFO
            _log.log(level, "circuit breaker %s: %s -> %s", self.name, old, new, extra=fields)
        except Exception:  # instrumentation never breaks a call
            pass
        self._report_state(new)
        tracer = getattr(self._owner, "tracer", None)  # a span event when tracing is on
        if tracer is not None:
            try:  # noqa: SIM105
                tracer.event(
                    "circuit_breaker.state_change",
                    {
                        "circuit_breaker.name": self.name,
                        "circuit_breaker.from_state": old or "",
                        "circuit_breaker.to_state": new,
                    },
                )
            except Exception:  # instrumentation never breaks a call
                pass


def _no_call() -> None:
    """What user listeners' ``before_call`` sees as the function (it runs later)."""
