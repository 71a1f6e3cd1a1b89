"""The ways to call through a breaker: ``cb.call``, ``await cb.call_async``, ``with cb:``,
``@cb``, and :func:`decorate` for the import-time decorators; and the ``timeout``.

A call with a ``timeout`` runs in a worker thread (a coroutine is cancelled instead)
and waits at most what is left of the deadline of a retry around it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from ..errors import CircuitOpenError
from .deadlines import DEADLINES, deadline_left
from .timeouts import CallTimeoutError, TimeoutRunner

__all__ = ["CallForms", "Retries", "call_label", "decorate", "decorate_retries"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
G = TypeVar("G", bound="CallForms")


class _Settings(Protocol):
    @property
    def timeout(self) -> float | None: ...


class CallForms:
    """The call forms of :class:`~.circuit.CircuitBreaker`, on its ``_enter`` (admit) and
    ``_exit`` (record the outcome; ``True`` when the call's failure opened the breaker)."""

    name: str
    settings: Any
    _runner: TimeoutRunner | None
    _open_blocks: contextvars.ContextVar[tuple[Any, ...]]

    def _enter(self) -> Any:
        raise NotImplementedError

    def _exit(
        self, token: Any, error: BaseException | None, verdict: bool = True, reached: bool = True
    ) -> bool:
        raise NotImplementedError

    def _opened(self, error: BaseException) -> CircuitOpenError:
        raise NotImplementedError

    def is_failure(self, error: BaseException) -> bool:
        raise NotImplementedError

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

    def __enter__(self: G) -> G:
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


def _constant(value: T) -> T:
    return value


def decorate(resolve: Callable[[], CallForms], fn: F, fallback: Callable[..., Any] | None) -> F:
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


class Retries(Protocol):
    """What a retry decorator calls through (a :class:`~.policy.RetryPolicy`)."""

    def run(self, label: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any: ...

    def run_async(
        self, label: str, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> Awaitable[Any]: ...


def call_label(fn: Callable[..., Any]) -> str:
    """The ``operation`` label of a call of ``fn``: its qualified name."""
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "call")


def decorate_retries(resolve: Callable[[], Retries], fn: F, operation: str | None) -> F:
    """``fn`` retried by the policy ``resolve()`` returns at each call (tenacity is loaded
    by the policy, at the first call, not by decorating)."""
    label = operation or call_label(fn)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await resolve().run_async(label, fn, args, kwargs)

        return cast(F, async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return resolve().run(label, fn, args, kwargs)

    return cast(F, wrapper)
