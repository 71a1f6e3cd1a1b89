"""Dependency tracking: ``obs.track_dependency(name, operation)``.

Each tracked call is observed in ``dependency_latency_seconds{dependency,operation}``
through ``state.recorder`` and, when tracing is on, runs inside a CLIENT span opened
through ``state.tracer``; both are contracts of :mod:`flask_gateway_obs.core.contracts`,
so this module imports neither prometheus_client nor OpenTelemetry and works with
metrics off.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..core.contracts import Tracer
from ..core.state import current_state
from .recorder import MetricsRecorder

if TYPE_CHECKING:
    from ..core.state import Extension, ObsState

__all__ = ["DependencyTracker", "track_dependency"]

_F = TypeVar("_F", bound=Callable[..., Any])
_log = logging.getLogger("flask_gateway_obs.metrics")


class DependencyTracker:
    """Times calls to a dependency in ``dependency_latency_seconds{dependency,operation}``.

    Use as a context manager (one per ``with``) or as a decorator (sync or async);
    an exception leaving the block counts in ``errors_total{type=<class>,source="dependency"}``
    and propagates unchanged. The app is looked up when the call happens, so the
    decorator may be applied at import time. With tracing on, the call is a CLIENT
    span (``state.tracer.client_span``); with tracing off that costs nothing.

    :param resolve: finds the app's state when a call starts (``None``: not tracked).
    :param clock: seconds as a float (``time.perf_counter``).
    """

    __slots__ = (
        "_clock",
        "_error_type",
        "_resolve",
        "_span",
        "_start",
        "_state",
        "dependency",
        "operation",
    )

    def __init__(
        self,
        resolve: Callable[[], ObsState | None],
        dependency: str,
        operation: str,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._resolve = resolve
        self.dependency = dependency
        self.operation = operation
        self._clock = clock
        self._start = 0.0
        self._error_type: str | None = None
        self._state: ObsState | None = None
        self._span: AbstractContextManager[Any] | None = None

    def mark_failed(self, error_type: str = "DependencyError") -> None:
        """Count this call as failed though nothing was raised (e.g. an upstream 5xx)."""
        self._error_type = error_type

    def __enter__(self) -> DependencyTracker:
        self._error_type = None
        try:
            state = self._resolve()
        except Exception:
            state = None
        self._state = state
        self._span = None
        if state is not None and type(state.tracer) is not Tracer:  # tracing is on
            self._open_span(state.tracer)
        self._start = self._clock()
        return self

    def _open_span(self, tracer: Tracer) -> None:
        try:
            span = tracer.client_span(self.dependency, self.operation)
            span.__enter__()
        except Exception:  # instrumentation never breaks the call it watches
            _log.debug("opening a client span failed", exc_info=True)
            return
        self._span = span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        seconds = self._clock() - self._start
        error_type = self._error_type
        if exc_type is not None and issubclass(exc_type, Exception):
            error_type = exc_type.__name__
        state, self._state = self._state, None
        if state is not None:
            self._report(state, seconds, error_type)
        span, self._span = self._span, None
        if span is not None:
            if exc_type is None and error_type is not None and state is not None:
                try:
                    state.tracer.failed(error_type)  # while the client span is current
                except Exception:
                    _log.debug("marking a client span failed", exc_info=True)
            try:
                span.__exit__(exc_type, exc, tb)  # whatever it returns, the error propagates
            except Exception:
                _log.debug("closing a client span failed", exc_info=True)

    def _report(self, state: ObsState, seconds: float, error_type: str | None) -> None:
        recorder = state.recorder
        if isinstance(recorder, MetricsRecorder):
            recorder.observe_dependency(self.dependency, self.operation, seconds, error_type)
        else:
            recorder.dependency(self.dependency, self.operation, seconds, error_type is not None)

    def _call(self) -> DependencyTracker:
        """A tracker of its own for one call of a decorated function."""
        return DependencyTracker(self._resolve, self.dependency, self.operation, self._clock)

    def __call__(self, func: _F) -> _F:
        if inspect.iscoroutinefunction(func):
            return cast(_F, self._wrap_async(func))

        @functools.wraps(func)
        def tracked(*args: Any, **kwargs: Any) -> Any:
            with self._call():
                return func(*args, **kwargs)

        return cast(_F, tracked)

    def _wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(func)
        async def tracked(*args: Any, **kwargs: Any) -> Any:
            with self._call():
                return await func(*args, **kwargs)

        return tracked


def _state_for(obs: Extension | None) -> ObsState | None:
    if obs is not None:
        try:
            return obs.state()
        except RuntimeError:
            return None
    return current_state()


def track_dependency(
    dependency: str,
    operation: str = "call",
    *,
    obs: Extension | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> DependencyTracker:
    """A :class:`DependencyTracker` for the app of ``obs`` (or the current app).

    :param dependency: a fixed name such as ``"payments"`` or ``"redis"``.
    :param operation: a bounded name such as ``"GET /charges/{id}"``; build it from
        an outgoing URL with :func:`~flask_gateway_obs.normalize_path`, never from the raw URL.
    :param clock: seconds as a float, for tests (default ``time.perf_counter``).
    """
    return DependencyTracker(functools.partial(_state_for, obs), dependency, operation, clock)
