"""Retry policies: tenacity's ``Retrying`` with finite attempts, jittered backoff and a deadline.

tenacity runs the loop and decides, through our ``retry``, ``wait``, ``stop`` and
``before_sleep`` callbacks and ``reraise=True``, whether and how long to wait; this
module adds what a gateway needs:

- only transient errors are retried by default; 4xx answers, an open circuit
  breaker and programming errors are raised at once;
- every policy is finite: ``max_attempts`` always, and a ``deadline``: no sleep
  that would cross it, and no attempt unless the previous attempt's duration still
  fits before it (an estimate); a breaker with ``timeout`` inside the retry waits
  no longer than what is left of the deadline;
- a ``Retry-After`` the upstream sent is honoured (never retried sooner);
- after the last attempt the original exception is raised, not ``RetryError``;
- each retry is logged at warning and counted in ``retry_attempts_total``.

The first attempt runs inline; tenacity's loop starts only after a retryable
failure (its first attempt replays that failure), so a call that succeeds first
time costs little more than the bare call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import tenacity

from ..config import Settings
from ..errors import CircuitOpenError
from ..logs import LOGGER_NAME
from .calls import call_label, decorate_retries
from .classify import is_transient, retry_after_of
from .deadlines import DEADLINES, switch
from .settings import RetrySettings

if TYPE_CHECKING:
    from ..core.contracts import Recorder

__all__ = ["OUTCOMES", "RetryPolicy", "RetryRegistry"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Values of the ``outcome`` label of ``retry_attempts_total``: ``retry`` per retry
#: scheduled; one final ``success``, ``failure`` (not retryable) or ``exhausted``
#: (retryable, but no attempt or time left) per call.
OUTCOMES = ("success", "retry", "failure", "exhausted")

_log = logging.getLogger(LOGGER_NAME + ".retry")


class _HasRecorder(Protocol):
    @property
    def recorder(self) -> Recorder: ...


class _Attempts:
    """One retried call as tenacity sees it: its first attempt replays the failure that
    started the retries; each later one calls the function and is timed. It also holds
    what the callbacks need (tenacity hands them ``retry_state.fn``, a bound method).

    The callbacks take ``retry_state`` by that name: tenacity before 8.2 passes it as a
    keyword."""

    __slots__ = (
        "attempts",
        "clock",
        "delay",
        "delay_attempt",
        "first",
        "fn",
        "last_cost",
        "operation",
        "started",
        "stop_reason",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        operation: str,
        started: float,
        first: BaseException,
        clock: Callable[[], float],
    ) -> None:
        self.fn = fn
        self.operation = operation
        self.started = started
        self.first: BaseException | None = first
        self.clock = clock
        #: Seconds the last attempt took: the estimate of the next one's.
        self.last_cost = clock() - started
        self.stop_reason: str | None = None
        self.attempts = 1
        #: The sleep after attempt ``delay_attempt`` (jitter is drawn once per attempt).
        self.delay = 0.0
        self.delay_attempt = 0

    def _replay(self) -> None:
        first = self.first
        if first is not None:
            self.first = None
            raise first

    def attempt(self, *args: Any, **kwargs: Any) -> Any:
        self._replay()
        begun = self.clock()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.last_cost = self.clock() - begun

    async def attempt_async(self, *args: Any, **kwargs: Any) -> Any:
        self._replay()
        begun = self.clock()
        try:
            return await self.fn(*args, **kwargs)
        finally:
            self.last_cost = self.clock() - begun


def _attempts(state: tenacity.RetryCallState) -> _Attempts:
    return cast(_Attempts, state.fn.__self__)  # type: ignore[union-attr]


class RetryPolicy:
    """A finite retry policy; use as ``@policy``, ``@policy(operation=...)`` or ``policy.call(fn)``.

    Create policies with ``obs.retry(name)`` or ``@retry(...)``, not directly.

    :param name: policy name (default ``operation`` label), or ``None``.
    :param settings: attempts, delays, jitter, deadline.
    :param owner: whose ``recorder`` gets the metrics (read at each use).
    :param retry_on: retry exactly these exception types instead of the transient ones.
    :param retry_if: a predicate deciding instead (wins over ``retry_on``).
    :param sleep: ``sleep(seconds)``; inject one in tests (async calls await its result
        if it returns an awaitable, and default to ``asyncio.sleep``).
    :param clock: monotonic seconds for the deadline; inject one in tests.
    :param random: a ``() -> float in [0, 1)`` for the jitter.
    """

    def __init__(
        self,
        name: str | None,
        settings: RetrySettings,
        *,
        owner: _HasRecorder,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        retry_if: Callable[[BaseException], bool] | None = None,
        sleep: Callable[[float], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.settings = settings
        self._owner = owner
        self._retry_on = retry_on
        self._retry_if = retry_if
        self._sleep = sleep
        self._clock = clock
        self._random = random
        self._timeouts = switch()
        callbacks: dict[str, Any] = {
            "stop": self._stop,
            "wait": self._wait,
            "retry": self._retry,
            "before_sleep": self._before_sleep,
            "reraise": True,
        }
        self._retrying = tenacity.Retrying(sleep=sleep or time.sleep, **callbacks)
        self._async_retrying = tenacity.AsyncRetrying(sleep=self._sleep_async, **callbacks)

    def __repr__(self) -> str:
        return f"<RetryPolicy {self.name!r} {self.settings}>"

    async def _sleep_async(self, seconds: float) -> None:
        if self._sleep is None:
            await asyncio.sleep(seconds)
            return
        slept = self._sleep(seconds)
        if inspect.isawaitable(slept):
            await slept

    # --- tenacity callbacks ------------------------------------------------------------------

    def is_retryable(self, error: BaseException) -> bool:
        """Whether this policy retries ``error`` (never a ``CircuitOpenError``)."""
        if isinstance(error, CircuitOpenError) or not isinstance(error, Exception):
            return False
        if self._retry_if is not None:
            try:
                return bool(self._retry_if(error))
            except Exception:  # a broken predicate must not replace the caller's error
                _log.debug("retry_if predicate failed; not retrying", exc_info=True)
                return False
        if self._retry_on is not None:
            return isinstance(error, self._retry_on)
        return is_transient(error)

    def _retry(self, retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        return self.is_retryable(cast(BaseException, outcome.exception()))

    def _delay(self, retry_state: tenacity.RetryCallState) -> float:
        """The sleep after this attempt, drawn once (tenacity asks ``stop`` before ``wait``
        up to 8.2, after from 8.3 on; both see the same value)."""
        call = _attempts(retry_state)
        if call.delay_attempt == retry_state.attempt_number:
            return call.delay
        settings = self.settings
        backoff = settings.backoff(retry_state.attempt_number)
        if settings.jitter == "full":
            delay = self._random() * backoff
        elif settings.jitter == "equal":
            delay = backoff / 2 + self._random() * backoff / 2
        else:
            delay = backoff
        if settings.respect_retry_after and retry_state.outcome is not None:
            asked = retry_after_of(cast(BaseException, retry_state.outcome.exception()))
            if asked is not None and asked > delay:
                delay = asked
        call.delay, call.delay_attempt = delay, retry_state.attempt_number
        return delay

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        return self._delay(retry_state)

    def _stop(self, retry_state: tenacity.RetryCallState) -> bool:
        call = _attempts(retry_state)
        call.attempts = retry_state.attempt_number
        settings = self.settings
        if retry_state.attempt_number >= settings.max_attempts:
            call.stop_reason = "attempts"
            return True
        sleep = self._delay(retry_state)
        if sleep > settings.max_delay:
            call.stop_reason = "retry_after"  # the upstream asks for a longer wait than allowed
        elif (
            settings.deadline is not None
            and self._clock() - call.started + sleep + call.last_cost > settings.deadline
        ):
            # The sleep, then an attempt as long as the last one, would end past it.
            call.stop_reason = "deadline"
        else:
            return False
        return True

    def _before_sleep(self, retry_state: tenacity.RetryCallState) -> None:
        call = _attempts(retry_state)
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        with contextlib.suppress(Exception):  # instrumentation never breaks a call
            _log.warning(
                "retrying %s after %s (attempt %d of %d) in %.3f s",
                call.operation,
                type(error).__name__,
                retry_state.attempt_number,
                self.settings.max_attempts,
                call.delay,
                extra={
                    "operation": call.operation,
                    "attempt": retry_state.attempt_number,
                    "max_attempts": self.settings.max_attempts,
                    "delay_s": round(call.delay, 4),
                    "error_type": type(error).__name__,
                },
            )
        self._count(call.operation, "retry")
        tracer = getattr(self._owner, "tracer", None)  # a span event when tracing is on
        if tracer is not None:
            with contextlib.suppress(Exception):
                tracer.event(
                    "retry.attempt",
                    {
                        "retry.operation": call.operation,
                        "retry.attempt": retry_state.attempt_number,
                        "retry.max_attempts": self.settings.max_attempts,
                        "retry.delay_s": round(call.delay, 4),
                        "error.type": type(error).__name__,
                    },
                )

    def _count(self, operation: str, outcome: str) -> None:
        try:  # noqa: SIM105 - cheaper than contextlib.suppress on every call
            self._owner.recorder.retry_attempt(operation, outcome)
        except Exception:  # instrumentation never breaks a call
            pass

    def _gave_up(self, call: _Attempts, error: BaseException) -> None:
        if call.stop_reason is None:
            self._count(call.operation, "failure")
            return
        with contextlib.suppress(Exception):
            _log.warning(
                "giving up on %s after %d attempts: %s",
                call.operation,
                call.attempts,
                type(error).__name__,
                extra={
                    "operation": call.operation,
                    "attempts": call.attempts,
                    "reason": call.stop_reason,
                    "error_type": type(error).__name__,
                },
            )
        self._count(call.operation, "exhausted")

    # --- running calls -------------------------------------------------------------------------

    def _first_failed(self, operation: str, error: Exception) -> bool:
        """Whether tenacity should take over after the first attempt failed with ``error``."""
        if not self.is_retryable(error):
            self._count(operation, "failure")
            return False
        if self.settings.max_attempts <= 1:
            self._count(operation, "exhausted")
            return False
        return True

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` with retries; the original error if all fail."""
        return self.run(self.name or call_label(fn), fn, args, kwargs)

    def run(self, operation: str, fn: Callable[..., T], args: Any, kwargs: Mapping[str, Any]) -> T:
        """Call ``fn`` with retries, labelled ``operation`` in logs and metrics."""
        started = self._clock()
        token = None
        deadline = self.settings.deadline
        if deadline is not None and self._timeouts.on:
            # Breakers with a ``timeout`` inside this call wait no longer than what is left.
            token = DEADLINES.set((*DEADLINES.get(), (self._clock, started + deadline)))
        try:
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                if not self._first_failed(operation, error):
                    raise
                call = _Attempts(fn, operation, started, error, self._clock)
                try:
                    result = self._retrying(call.attempt, *args, **kwargs)
                except Exception as final:
                    self._gave_up(call, final)
                    raise
        finally:
            if token is not None:
                DEADLINES.reset(token)
        self._count(operation, "success")
        return result

    async def call_async(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` with retries."""
        return await self.run_async(self.name or call_label(fn), fn, args, kwargs)

    async def run_async(
        self,
        operation: str,
        fn: Callable[..., Awaitable[T]],
        args: Any,
        kwargs: Mapping[str, Any],
    ) -> T:
        """:meth:`run` for coroutine functions; sleeps with ``asyncio.sleep`` by default."""
        started = self._clock()
        token = None
        deadline = self.settings.deadline
        if deadline is not None and self._timeouts.on:
            token = DEADLINES.set((*DEADLINES.get(), (self._clock, started + deadline)))
        try:
            try:
                result = await fn(*args, **kwargs)
            except Exception as error:
                if not self._first_failed(operation, error):
                    raise
                call = _Attempts(fn, operation, started, error, self._clock)
                # A copy per call: tasks of one thread must not share tenacity's loop state.
                retrying = self._async_retrying.copy()
                try:
                    result = await retrying(call.attempt_async, *args, **kwargs)
                except Exception as final:
                    self._gave_up(call, final)
                    raise
        finally:
            if token is not None:
                DEADLINES.reset(token)
        self._count(operation, "success")
        return result

    def __call__(self, fn: F | None = None, /, *, operation: str | None = None) -> Any:
        """Decorate ``fn`` (``@policy`` or ``@policy(operation="charge")``)."""
        if fn is None:
            return functools.partial(self.__call__, operation=operation)
        return decorate_retries(functools.partial(_constant, self), fn, operation or self.name)


def _constant(value: T) -> T:
    return value


#: Options of ``obs.retry(name, ...)`` that are code, not settings.
_HOOKS = frozenset({"retry_on", "retry_if", "sleep", "clock", "random"})


class RetryRegistry:
    """The retry policies of one app: named ones from ``GATEWAY_OBS_RETRY_POLICIES``
    (cached) and ad-hoc ones with options."""

    def __init__(self, settings: Settings, owner: _HasRecorder) -> None:
        self.settings = settings
        self._owner = owner
        self._policies: dict[str | None, RetryPolicy] = {}

    def get(self, name: str | None = None, **options: Any) -> RetryPolicy:
        """The policy ``name`` (defaults when it is not configured), with ``options`` on top.

        :raises ConfigError: for an unknown or invalid option.
        """
        if not options:
            found = self._policies.get(name)
            if found is None:
                found = self._policies[name] = self._create(name, options)
            return found
        return self._create(name, options)

    def _create(self, name: str | None, options: Mapping[str, Any]) -> RetryPolicy:
        hooks = {k: v for k, v in options.items() if k in _HOOKS}
        settings = RetrySettings.resolve(
            self.settings, name, {k: v for k, v in options.items() if k not in _HOOKS}
        )
        return RetryPolicy(name, settings, owner=self._owner, **hooks)
