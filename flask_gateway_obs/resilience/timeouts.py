"""Calls with a ``timeout``: run on a worker thread so that the caller can stop waiting.

Python cannot stop a thread: a call that timed out keeps running in its worker until it
returns by itself. Such hung calls are capped per breaker (:data:`MAX_HUNG_CALLS`).
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..errors import AppError, ServiceUnavailableError

__all__ = [
    "MAX_HUNG_CALLS",
    "WORKER_IDLE_SECONDS",
    "CallTimeoutError",
    "HungCallsError",
    "TimeoutRunner",
]

#: Calls of one breaker that timed out but still run in their worker thread (Python cannot
#: stop them); with this many, new calls are refused with :class:`HungCallsError`.
MAX_HUNG_CALLS = 16
#: Seconds an idle worker thread of a breaker with ``timeout`` waits for a call, then exits.
WORKER_IDLE_SECONDS = 60.0


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


class TimeoutRunner:
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
