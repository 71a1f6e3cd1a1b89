"""Bulkheads: at most ``max_concurrent`` calls to a dependency at once, per process.

A call that finds the bulkhead full waits up to ``max_wait`` seconds for room, then
fails with :class:`~flask_gateway_obs.BulkheadFullError` (a 503 with ``Retry-After``)
without being made. Room is handed over to the waiters in the order they came, and
threads and coroutines (on any event loop) wait for the same bulkhead. The state is a
counter under a short lock: nothing is held while the call runs.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from ..config import Settings
from ..errors import BulkheadFullError
from ..logs import LOGGER_NAME
from .settings import BulkheadSettings

if TYPE_CHECKING:
    from ..core.contracts import Recorder

__all__ = ["Bulkhead", "BulkheadRegistry", "decorate"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Seconds between two warnings that one bulkhead is refusing calls.
WARN_INTERVAL = 60.0

_log = logging.getLogger(LOGGER_NAME + ".bulkhead")


class _HasRecorder(Protocol):
    @property
    def recorder(self) -> Recorder: ...


class _Waiter:
    """A call waiting for room: a thread (an event) or a coroutine (a future on its loop)."""

    __slots__ = ("event", "future", "granted", "loop")

    def __init__(
        self,
        event: threading.Event | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.event = event
        self.loop = loop
        self.future = future
        self.granted = False

    def grant(self) -> bool:
        """Hand the room over (under the bulkhead's lock); ``False`` if nobody can take it."""
        if self.event is not None:
            self.granted = True
            self.event.set()
            return True
        loop, future = cast(asyncio.AbstractEventLoop, self.loop), self.future
        try:
            loop.call_soon_threadsafe(_wake, future)
        except RuntimeError:  # its event loop is closed: nobody waits any more
            return False
        self.granted = True
        return True


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class Bulkhead:
    """At most ``max_concurrent`` calls at once; use as ``@bh``, ``bh.call(fn, ...)``,
    ``await bh.call_async(fn, ...)``, ``with bh:`` or ``async with bh:``.

    Create bulkheads with ``obs.bulkhead(name)`` or ``@bulkhead(name)``, not directly.

    :param name: the ``bulkhead`` label and log field.
    :param settings: ``max_concurrent`` and ``max_wait``.
    :param owner: whose ``recorder`` gets the metrics (read at each use).
    """

    def __init__(self, name: str, settings: BulkheadSettings, owner: _HasRecorder) -> None:
        self.name = name
        self.settings = settings
        self._owner = owner
        self._lock = threading.Lock()
        self._cap = settings.max_concurrent
        self._in_use = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._warned_at: float | None = None

    def __repr__(self) -> str:
        return f"<Bulkhead {self.name!r} {self._in_use}/{self.settings.max_concurrent}>"

    @property
    def in_use(self) -> int:
        """Calls running inside the bulkhead now."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Calls waiting for room now."""
        return len(self._waiters)

    # --- room -------------------------------------------------------------------------------

    def _report(self, calls: int) -> None:
        try:  # noqa: SIM105 - cheaper than contextlib.suppress on every call
            self._owner.recorder.bulkhead_in_use(self.name, calls)
        except Exception:  # instrumentation never breaks a call
            pass

    def _entered(self) -> bool:
        """Take room if there is some (under the lock)."""
        if self._in_use < self._cap:
            self._in_use += 1
            self._report(self._in_use)
            return True
        return False

    def _refused(self) -> BulkheadFullError:
        try:  # noqa: SIM105
            self._owner.recorder.bulkhead_rejected(self.name)
        except Exception:  # instrumentation never breaks a call
            pass
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_INTERVAL:
            self._warned_at = now
            _log.warning(
                "bulkhead %s is full; refusing calls",
                self.name,
                extra={
                    "bulkhead": self.name,
                    "max_concurrent": self.settings.max_concurrent,
                    "max_wait_s": self.settings.max_wait,
                },
            )
        return BulkheadFullError(self.name, self.settings.max_concurrent)

    def _gone(self, waiter: _Waiter) -> bool:
        """A waiter gives up (under the lock): ``True`` if room was handed to it meanwhile."""
        if waiter.granted:
            return True
        self._waiters.remove(waiter)
        return False

    def acquire(self) -> None:
        """Take room for one call, waiting up to ``max_wait``.

        :raises BulkheadFullError: when no room came free in time.
        """
        with self._lock:
            if self._in_use < self._cap:  # as _entered(), inline: the path of every call
                self._in_use += 1
                try:  # noqa: SIM105
                    self._owner.recorder.bulkhead_in_use(self.name, self._in_use)
                except Exception:  # instrumentation never breaks a call
                    pass
                return
            wait = self.settings.max_wait
            if wait <= 0:
                raise self._refused()
            waiter = _Waiter(event=threading.Event())
            self._waiters.append(waiter)
        cast(threading.Event, waiter.event).wait(wait)
        with self._lock:
            if self._gone(waiter):
                return
            raise self._refused()

    async def acquire_async(self) -> None:
        """:meth:`acquire` for coroutines: waits without blocking the event loop."""
        with self._lock:
            if self._entered():
                return
            wait = self.settings.max_wait
            if wait <= 0:
                raise self._refused()
            loop = asyncio.get_running_loop()
            waiter = _Waiter(loop=loop, future=loop.create_future())
            self._waiters.append(waiter)
        future = cast("asyncio.Future[None]", waiter.future)
        try:
            await asyncio.wait({future}, timeout=wait)
        except BaseException:  # cancelled while waiting: room handed over goes back
            with self._lock:
                granted = self._gone(waiter)
            if granted:
                self.release()
            raise
        with self._lock:
            if self._gone(waiter):
                return
            raise self._refused()

    def release(self) -> None:
        """Give the room of a finished call to the first waiter, or free it."""
        with self._lock:
            waiters = self._waiters
            while waiters:
                if waiters.popleft().grant():
                    return  # the room passes on: in use stays the same
            self._in_use -= 1
            try:  # noqa: SIM105
                self._owner.recorder.bulkhead_in_use(self.name, self._in_use)
            except Exception:  # instrumentation never breaks a call
                pass

    # --- call forms -------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` inside the bulkhead.

        :raises BulkheadFullError: when it is full and stays full for ``max_wait``.
        """
        self.acquire()
        try:
            return fn(*args, **kwargs)
        finally:
            self.release()

    async def call_async(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` inside the bulkhead."""
        await self.acquire_async()
        try:
            return await fn(*args, **kwargs)
        finally:
            self.release()

    def __enter__(self) -> Bulkhead:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Bulkhead:
        await self.acquire_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (sync or ``async def``) so each call runs inside the bulkhead."""
        return decorate(functools.partial(_constant, self), fn)


def _constant(value: T) -> T:
    return value


def decorate(resolve: Callable[[], Bulkhead], fn: F) -> F:
    """``fn`` called inside the bulkhead ``resolve()`` returns at each call."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await resolve().call_async(fn, *args, **kwargs)

        return cast(F, async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return resolve().call(fn, *args, **kwargs)

    return cast(F, wrapper)


class BulkheadRegistry:
    """The named bulkheads of one app, created on first use."""

    def __init__(self, settings: Settings, owner: _HasRecorder) -> None:
        self.settings = settings
        self._owner = owner
        self._bulkheads: dict[str, Bulkhead] = {}
        self._options: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Names of the bulkheads created so far."""
        return sorted(self._bulkheads)

    def get(self, name: str, **options: Any) -> Bulkhead:
        """The bulkhead called ``name``, created now if it is new (``options``:
        ``max_concurrent``, ``max_wait``, applied when it is created).

        :raises ConfigError: for an unknown or invalid option.
        :raises ValueError: when it exists with other options, or for an empty name.
        """
        found = self._bulkheads.get(name)
        if found is not None and (not options or self._options.get(name) == options):
            return found
        with self._lock:
            found = self._bulkheads.get(name)
            if found is not None:
                if options and self._options.get(name) != options:
                    raise ValueError(
                        f"bulkhead {name!r} already exists with options "
                        f"{self._options.get(name) or {}!r}; got {options!r}. Give each "
                        "configuration its own name, or set the options in one place "
                        "(GATEWAY_OBS_BULKHEADS)."
                    )
                return found
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"a bulkhead needs a non-empty name, got {name!r}")
            settings = BulkheadSettings.resolve(self.settings, name, options)
            created = self._bulkheads[name] = Bulkhead(name, settings, self._owner)
            self._options[name] = dict(options)
            created._report(0)
            return created
