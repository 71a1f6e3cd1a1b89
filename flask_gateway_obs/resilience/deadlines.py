"""The deadlines retries hand to the breakers with a ``timeout`` inside them.

A retry publishes its deadline in :data:`DEADLINES` for the duration of a call; a
breaker with ``timeout`` waits no longer than the nearest one. Publishing costs a
fraction of a microsecond per call, so retries do it only once a breaker with a
``timeout`` exists or is configured in the process (:func:`expect_timeouts`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from ..core import process

__all__ = ["DEADLINES", "Clock", "TimeoutSwitch", "deadline_left", "expect_timeouts", "switch"]

Clock = Callable[[], float]

#: The deadlines of the retries around the current call: ``(clock, moment)`` pairs, the
#: moment on that retry policy's clock.
DEADLINES: ContextVar[tuple[tuple[Clock, float], ...]] = ContextVar(
    "gateway_obs_retry_deadlines", default=()
)


class TimeoutSwitch:
    """Whether a breaker with a ``timeout`` exists or is configured (never turns off)."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = False


def switch() -> TimeoutSwitch:
    """The process's switch (a retry policy keeps the one of its creation)."""
    return process.registry("resilience.timeouts", TimeoutSwitch)


def expect_timeouts() -> None:
    """Note that a breaker with a ``timeout`` exists or will be created (on first use)."""
    switch().on = True


def deadline_left(deadlines: tuple[tuple[Clock, float], ...]) -> float:
    """Seconds until the nearest of ``deadlines``."""
    return min(moment - clock() for clock, moment in deadlines)
