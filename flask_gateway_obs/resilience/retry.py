"""Retry policies: an adapter over tenacity with finite attempts, jittered backoff and a deadline.

tenacity decides (through our ``retry``, ``wait``, ``stop`` and ``before_sleep``
callbacks) whether and how long to wait; this module adds what a gateway needs:

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
failure, so a call that succeeds first time costs little more than the bare call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import functools
import inspect
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import Token
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import tenacity
from tenacity import DoAttempt, DoSleep, RetryCallState

from ..config import RETRY_OPTIONS, Settings, parse_options
from ..errors import CircuitOpenError
from ..logs import LOGGER_NAME
from . import breaker as _breaker
from .breaker import DEADLINES, status_of

if TYPE_CHECKING:
    from ..core.contracts import Recorder

__all__ = [
    "OUTCOMES",
    "TRANSIENT_STATUSES",
    "RetryPolicy",
    "RetryRegistry",
    "RetrySettings",
    "is_transient",
    "retry",
    "retry_after_of",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Values of the ``outcome`` label of ``retry_attempts_total``: ``retry`` per retry
#: scheduled; one final ``success``, ``failure`` (not retryable) or ``exhausted``
#: (retryable, but no attempt or time left) per call.
OUTCOMES = ("success", "retry", "failure", "exhausted")
TRANSIENT_STATUSES = frozenset({502, 503, 504})

_log = logging.getLogger(LOGGER_NAME + ".retry")


class _HasRecorder(Protocol):
    @property
    def recorder(self) -> Recorder: ...


# --- which errors are transient -----------------------------------------------------------------

#: (module, attribute path) of optional libraries' connection errors, used only when
#: the library is already imported (an error of its type implies it is). asyncio's and
#: concurrent.futures' TimeoutError are the builtin one from Python 3.11 on, classes of
#: their own before.
_OPTIONAL_TRANSIENT = (
    ("asyncio", "TimeoutError"),
    ("concurrent.futures", "TimeoutError"),
    ("requests", "exceptions.ConnectionError"),
    ("requests", "exceptions.Timeout"),
    ("redis", "exceptions.ConnectionError"),
    ("redis", "exceptions.TimeoutError"),
    ("psycopg2", "OperationalError"),
    ("psycopg2", "InterfaceError"),
    ("httpx", "TransportError"),
)


def _optional_transient_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for module_name, path in _OPTIONAL_TRANSIENT:
        target: Any = sys.modules.get(module_name)
        for part in path.split("."):
            target = getattr(target, part, None)
        if isinstance(target, type) and issubclass(target, BaseException):
            found.append(target)
    return tuple(found)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is worth retrying by default.

    Yes: ``ConnectionError``, ``TimeoutError`` (``socket.timeout``, and asyncio's and
    concurrent.futures' on Python 3.10), a 502/503/504 (``AppError``, werkzeug, or a
    carried ``response``), and the connection errors of requests, redis, psycopg2 and
    httpx. Never: ``CircuitOpenError``, 4xx, anything else.
    """
    if isinstance(error, CircuitOpenError):
        return False
    status = status_of(error)
    if status is not None:
        return status in TRANSIENT_STATUSES
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return isinstance(error, _optional_transient_types())


def retry_after_of(error: BaseException, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the upstream asked to wait: ``error.retry_after``, or the ``Retry-After``
    header of ``error.response`` (seconds or an HTTP date); ``None`` if absent or invalid."""
    value: Any = getattr(error, "retry_after", None)
    if value is None:
        headers = getattr(getattr(error, "response", None), "headers", None)
        getter = getattr(headers, "get", None)
        if callable(getter):
            try:
                value = getter("Retry-After")
            except Exception:
                value = None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                moment = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if moment.tzinfo is None:
                return None
            seconds = moment.timestamp() - now()
    else:
        return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


# --- settings -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetrySettings:
    """The resolved settings of one retry policy."""

    max_attempts: int = 3
    base_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 2.0
    jitter: str = "full"
    deadline: float | None = 10.0
    respect_retry_after: bool = True

    @classmethod
    def resolve(
        cls, settings: Settings, name: str | None, options: Mapping[str, Any] | None = None
    ) -> RetrySettings:
        """Defaults from ``GATEWAY_OBS_RETRY_*``, then ``GATEWAY_OBS_RETRY_POLICIES[name]``,
        then ``options`` (validated; :class:`ConfigError` names every bad one)."""
        values: dict[str, Any] = {
            "max_attempts": settings.retry_max_attempts,
            "base_delay": settings.retry_base_delay,
            "multiplier": settings.retry_multiplier,
            "max_delay": settings.retry_max_delay,
            "jitter": settings.retry_jitter,
            "deadline": settings.retry_deadline,
            "respect_retry_after": settings.retry_respect_retry_after,
        }
        if name is not None:
            values.update((settings.retry_policies or {}).get(name, {}))
        if options:
            label = f"retry policy {name!r}" if name else "retry"
            values.update(parse_options(label, options, RETRY_OPTIONS))
        return cls(**values)

    def backoff(self, attempt: int) -> float:
        """The capped exponential delay after failed attempt number ``attempt``, before jitter."""
        try:
            delay = self.base_delay * self.multiplier ** (attempt - 1)
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, delay)


class _Call(RetryCallState):
    """tenacity's per-call state plus what our callbacks need."""

    def __init__(
        self,
        retrying: tenacity.Retrying,
        fn: Callable[..., Any] | None,
        args: Any,
        kwargs: Any,
        operation: str,
        started: float,
    ) -> None:
        super().__init__(retrying, fn, args, kwargs)
        self.operation = operation
        self.started = started
        #: Seconds the last attempt took: the estimate of the next one's.
        self.last_cost = 0.0
        self.stop_reason: str | None = None


# --- the policy ---------------------------------------------------------------------------------


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
        self._retrying = tenacity.Retrying(
            sleep=sleep or time.sleep,
            stop=self._stop,
            wait=self._wait,
            retry=self._retry,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def __repr__(self) -> str:
        return f"<RetryPolicy {self.name!r} {self.settings}>"

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

    def _retry(self, state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return False
        return self.is_retryable(cast(BaseException, outcome.exception()))

    def _wait(self, state: RetryCallState) -> float:
        settings = self.settings
        backoff = settings.backoff(state.attempt_number)
        if settings.jitter == "full":
            delay = self._random() * backoff
        elif settings.jitter == "equal":
            delay = backoff / 2 + self._random() * backoff / 2
        else:
            delay = backoff
        if settings.respect_retry_after and state.outcome is not None:
            asked = retry_after_of(cast(BaseException, state.outcome.exception()))
            if asked is not None and asked > delay:
                delay = asked
        return delay

    def _stop(self, state: RetryCallState) -> bool:
        call = cast(_Call, state)
        settings = self.settings
        if call.attempt_number >= settings.max_attempts:
            call.stop_reason = "attempts"
        elif call.upcoming_sleep > settings.max_delay:
            call.stop_reason = "retry_after"  # the upstream asks for a longer wait than allowed
        elif (
            settings.deadline is not None
            and self._clock() - call.started + call.upcoming_sleep + call.last_cost
            > settings.deadline
        ):
            # The sleep, then an attempt as long as the last one, would end past it.
            call.stop_reason = "deadline"
        else:
            return False
        return True

    def _before_sleep(self, state: RetryCallState) -> None:
        call = cast(_Call, state)
        error = call.outcome.exception() if call.outcome is not None else None
        with contextlib.suppress(Exception):  # instrumentation never breaks a call
            _log.warning(
                "retrying %s after %s (attempt %d of %d) in %.3f s",
                call.operation,
                type(error).__name__,
                call.attempt_number,
                self.settings.max_attempts,
                call.upcoming_sleep,
                extra={
                    "operation": call.operation,
                    "attempt": call.attempt_number,
                    "max_attempts": self.settings.max_attempts,
                    "delay_s": round(call.upcoming_sleep, 4),
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
                        "retry.attempt": call.attempt_number,
                        "retry.max_attempts": self.settings.max_attempts,
                        "retry.delay_s": round(call.upcoming_sleep, 4),
                        "error.type": type(error).__name__,
                    },
                )

    def _count(self, operation: str, outcome: str) -> None:
        try:  # noqa: SIM105 - cheaper than contextlib.suppress on every call
            self._owner.recorder.retry_attempt(operation, outcome)
        except Exception:  # instrumentation never breaks a call
            pass

    def _gave_up(self, call: _Call, error: BaseException) -> None:
        if call.stop_reason is None:
            self._count(call.operation, "failure")
            return
        with contextlib.suppress(Exception):
            _log.warning(
                "giving up on %s after %d attempts: %s",
                call.operation,
                call.attempt_number,
                type(error).__name__,
                extra={
                    "operation": call.operation,
                    "attempts": call.attempt_number,
                    "reason": call.stop_reason,
                    "error_type": type(error).__name__,
                },
            )
        self._count(call.operation, "exhausted")

    # --- running calls -------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` with retries; the original error if all fail."""
        return self.run(self.name or _label(fn), fn, args, kwargs)

    def run(self, operation: str, fn: Callable[..., T], args: Any, kwargs: Mapping[str, Any]) -> T:
        """Call ``fn`` with retries, labelled ``operation`` in logs and metrics."""
        started = self._clock()
        token = None
        deadline = self.settings.deadline
        if deadline is not None and _breaker.timed_breakers:  # as _publish_deadline, inline
            token = DEADLINES.set((*DEADLINES.get(), (self._clock, started + deadline)))
        try:
            result = fn(*args, **kwargs)
        except Exception as error:
            if not self.is_retryable(error):
                self._count(operation, "failure")
                raise
            if self.settings.max_attempts <= 1:
                self._count(operation, "exhausted")
                raise
            return self._retry_after_failure(operation, started, error, fn, args, kwargs)
        finally:
            if token is not None:
                DEADLINES.reset(token)
        self._count(operation, "success")
        return result

    def _publish_deadline(self, started: float) -> Token[Any] | None:
        """Let breakers with a ``timeout`` inside this call see its deadline, so that
        they wait no longer than what is left of it."""
        deadline = self.settings.deadline
        if deadline is None or not _breaker.timed_breakers:
            return None
        return DEADLINES.set((*DEADLINES.get(), (self._clock, started + deadline)))

    def _first_failure(
        self, operation: str, started: float, error: BaseException, fn: Any, args: Any, kwargs: Any
    ) -> _Call:
        retrying = self._retrying
        retrying.begin()
        call = _Call(retrying, fn, args, kwargs, operation, started)
        call.last_cost = self._clock() - started
        call.set_exception((type(error), error, error.__traceback__))
        return call

    def _retry_after_failure(
        self,
        operation: str,
        started: float,
        error: BaseException,
        fn: Callable[..., T],
        args: Any,
        kwargs: Mapping[str, Any],
    ) -> T:
        # tenacity's own loop (Retrying.__call__), entered at the first failure.
        retrying = self._retrying
        call = self._first_failure(operation, started, error, fn, args, kwargs)
        try:
            while True:
                do = retrying.iter(call)
                if isinstance(do, DoAttempt):
                    begun = self._clock()
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException:
                        call.set_exception(sys.exc_info())  # type: ignore[arg-type]
                    else:
                        call.set_result(result)
                    call.last_cost = self._clock() - begun
                elif isinstance(do, DoSleep):
                    call.prepare_for_next_attempt()
                    retrying.sleep(do)
                else:
                    self._count(operation, "success")
                    return cast(T, do)
        except Exception as final:
            self._gave_up(call, final)
            raise

    async def call_async(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` with retries."""
        return await self.run_async(self.name or _label(fn), fn, args, kwargs)

    async def run_async(
        self,
        operation: str,
        fn: Callable[..., Awaitable[T]],
        args: Any,
        kwargs: Mapping[str, Any],
    ) -> T:
        """:meth:`run` for coroutine functions; sleeps with ``asyncio.sleep`` by default."""
        started = self._clock()
        token = self._publish_deadline(started)
        try:
            return await self._run_async(operation, started, fn, args, kwargs)
        finally:
            if token is not None:
                DEADLINES.reset(token)

    async def _run_async(
        self,
        operation: str,
        started: float,
        fn: Callable[..., Awaitable[T]],
        args: Any,
        kwargs: Mapping[str, Any],
    ) -> T:
        try:
            result = await fn(*args, **kwargs)
        except Exception as error:
            if not self.is_retryable(error):
                self._count(operation, "failure")
                raise
            if self.settings.max_attempts <= 1:
                self._count(operation, "exhausted")
                raise
            first_error = error
        else:
            self._count(operation, "success")
            return result
        retrying = self._retrying
        call = self._first_failure(operation, started, first_error, fn, args, kwargs)
        try:
            while True:
                do = retrying.iter(call)
                if isinstance(do, DoAttempt):
                    begun = self._clock()
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException:
                        call.set_exception(sys.exc_info())  # type: ignore[arg-type]
                    else:
                        call.set_result(result)
                    call.last_cost = self._clock() - begun
                elif isinstance(do, DoSleep):
                    call.prepare_for_next_attempt()
                    if self._sleep is None:
                        await asyncio.sleep(do)
                    else:
                        slept = self._sleep(do)
                        if inspect.isawaitable(slept):
                            await slept
                else:
                    self._count(operation, "success")
                    return cast(T, do)
        except Exception as final:
            self._gave_up(call, final)
            raise

    def __call__(self, fn: F | None = None, /, *, operation: str | None = None) -> Any:
        """Decorate ``fn`` (``@policy`` or ``@policy(operation="charge")``)."""
        if fn is None:
            return functools.partial(self.__call__, operation=operation)
        return _decorate(functools.partial(_constant, self), fn, operation or self.name)


def _label(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "call")


def _constant(value: T) -> T:
    return value


def _decorate(resolve: Callable[[], RetryPolicy], fn: F, operation: str | None) -> F:
    label = operation or _label(fn)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await resolve().run_async(label, fn, args, kwargs)

        return cast(F, async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return resolve().run(label, fn, args, kwargs)

    return cast(F, wrapper)


# --- the per-app registry ----------------------------------------------------------------------

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


# --- the import-time decorator ------------------------------------------------------------------


def retry(
    fn: Callable[..., Any] | str | None = None,
    /,
    *,
    name: str | None = None,
    operation: str | None = None,
    **options: Any,
) -> Any:
    """Retry transient failures of a function, with the current app's settings.

    ``@retry``, ``@retry("payments")`` (a named policy) and ``@retry(max_attempts=5)``
    all work at import time: the app is looked up at each call
    (``flask.current_app``). Outside an app context the built-in defaults apply
    (and no metrics are counted).

    .. code-block:: python

        @retry(max_attempts=4, deadline=3)
        def fetch_rates(): ...

    :param name: a policy of ``GATEWAY_OBS_RETRY_POLICIES`` (default: the
        ``GATEWAY_OBS_RETRY_*`` settings).
    :param operation: the ``operation`` label (default: the policy name, else the
        function's qualified name).
    :param options: ``max_attempts``, ``base_delay``, ``multiplier``, ``max_delay``,
        ``jitter``, ``deadline``, ``respect_retry_after``, ``retry_on``, ``retry_if``,
        ``sleep``, ``clock``, ``random``.
    """
    from . import resolver

    if isinstance(fn, str):
        name, fn = fn, None

    def decorate(func: F) -> F:
        policy = resolver(lambda r: r.retries.get(name, **options))
        return _decorate(policy, func, operation or name)

    if fn is not None:
        return decorate(fn)
    return decorate
