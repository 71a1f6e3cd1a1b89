"""Sliding windows of call outcomes: what opens a breaker on a failure or slow-call rate.

``count:N`` keeps the outcomes of the last N calls in a ring with running totals;
``time:S`` keeps the calls of the last S seconds in one-second buckets. Each record is
O(1) (amortised for ``time:``: a bucket is emptied once per second that passes). The
windows hold no lock of their own: the breaker records under its short lock, after
the call.

The rules are Resilience4j's: a closed breaker opens when, with at least
``min_calls`` calls in its window, the failure rate or the slow-call rate is at or
above its threshold; a half-open breaker admits ``half_open_max_calls`` trial calls,
and once all of them are done their rates decide: open again, or close.
"""

from __future__ import annotations

from .settings import BreakerSettings

__all__ = ["RECOVER", "REOPEN", "CountWindow", "RateWindows", "TimeWindow"]

#: What the trial calls of a half-open breaker decided: open again, or close.
REOPEN, RECOVER = "reopen", "recover"


class CountWindow:
    """The outcomes of the last ``size`` calls."""

    __slots__ = ("_next", "_ring", "calls", "failures", "size", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring = bytearray(size)  # per call: 1 failed, 2 slow
        self._next = 0
        self.calls = self.failures = self.slow = 0

    def record(self, failed: bool, slow: bool, now: float) -> None:
        """Add one outcome, dropping the oldest once the window is full."""
        i = self._next
        if self.calls == self.size:
            oldest = self._ring[i]
            self.failures -= oldest & 1
            self.slow -= oldest >> 1
        else:
            self.calls += 1
        self._ring[i] = failed | slow << 1
        self.failures += failed
        self.slow += slow
        i += 1
        self._next = 0 if i == self.size else i

    def advance(self, now: float) -> None:
        """Nothing to forget: a count window moves with calls, not time."""

    def reset(self) -> None:
        """Forget every outcome."""
        self._ring = bytearray(self.size)
        self._next = 0
        self.calls = self.failures = self.slow = 0


class TimeWindow:
    """The outcomes of the calls of the last ``size`` seconds, in one-second buckets."""

    __slots__ = ("_calls", "_failures", "_second", "_slow", "calls", "failures", "size", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self.reset()

    def reset(self) -> None:
        """Forget every outcome."""
        self._calls = [0] * self.size
        self._failures = [0] * self.size
        self._slow = [0] * self.size
        self._second: int | None = None  # the latest second the buckets cover
        self.calls = self.failures = self.slow = 0

    def advance(self, now: float) -> None:
        """Forget the buckets of seconds that left the window by ``now``."""
        second = int(now // 1)
        latest = self._second
        if latest is None or second - latest >= self.size:
            if self.calls:
                self.reset()
            self._second = second
            return
        if second <= latest:  # the same second (or a clock that stepped back)
            return
        calls, failures, slow = self._calls, self._failures, self._slow
        for passed in range(latest + 1, second + 1):
            i = passed % self.size
            if calls[i]:
                self.calls -= calls[i]
                self.failures -= failures[i]
                self.slow -= slow[i]
                calls[i] = failures[i] = slow[i] = 0
        self._second = second

    def record(self, failed: bool, slow: bool, now: float) -> None:
        """Add one outcome to the bucket of ``now``'s second."""
        self.advance(now)
        i = (self._second or 0) % self.size
        self._calls[i] += 1
        self._failures[i] += failed
        self._slow[i] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow


class RateWindows:
    """A breaker's closed-state window and the window of its half-open trial calls.

    Not thread-safe by itself: the breaker calls it under its lock.
    """

    __slots__ = (
        "_closed",
        "_failure_rate",
        "_min_calls",
        "_slow_rate",
        "_trials",
        "rate",
        "slow_call_seconds",
    )

    def __init__(self, settings: BreakerSettings) -> None:
        spec = settings.rate_window
        if spec is None:
            raise ValueError("a consecutive breaker has no rate window")
        kind, size = spec
        self._closed: CountWindow | TimeWindow
        if kind == "count":
            self._closed = CountWindow(size)
            self._min_calls = min(settings.min_calls, size)  # a full window always decides
        else:
            self._closed = TimeWindow(size)
            self._min_calls = settings.min_calls
        self._failure_rate = settings.failure_rate
        self._slow_rate = settings.slow_call_rate
        self.slow_call_seconds = settings.slow_call_seconds
        if self.slow_call_seconds is None:
            self._slow_rate = float("inf")  # no call is slow: the slow-call rate never opens
        self._trials = CountWindow(settings.half_open_max_calls)
        #: The failure rate of the closed-state window after the last :meth:`record`.
        self.rate = 0.0

    def _over(self, calls: int, failures: int, slow: int) -> bool:
        return failures * 100 >= self._failure_rate * calls or slow * 100 >= self._slow_rate * calls

    def slow(self, seconds: float) -> bool:
        """Whether a call of ``seconds`` is slow (longer than ``slow_call_seconds``)."""
        limit = self.slow_call_seconds
        return limit is not None and seconds > limit

    def record(self, failed: bool, slow: bool, now: float) -> bool:
        """Count a call of the closed breaker (and set :attr:`rate`); whether its window now
        says open."""
        window = self._closed
        window.record(failed, slow, now)
        calls, failures = window.calls, window.failures
        self.rate = failures / calls
        if calls < self._min_calls:
            return False
        return failures * 100 >= self._failure_rate * calls or (
            window.slow * 100 >= self._slow_rate * calls
        )

    def record_trial(self, failed: bool, slow: bool) -> str | None:
        """Count a trial call; once every trial is done, :data:`REOPEN` or :data:`RECOVER`."""
        trials = self._trials
        trials.record(failed, slow, 0.0)
        if trials.calls < trials.size:
            return None
        return REOPEN if self._over(trials.calls, trials.failures, trials.slow) else RECOVER

    def failure_rate(self, now: float) -> float:
        """The share of failed calls in the closed-state window now (0 when empty)."""
        window = self._closed
        window.advance(now)
        return window.failures / window.calls if window.calls else 0.0

    def failures(self, now: float) -> int:
        """Failed calls in the closed-state window now."""
        self._closed.advance(now)
        return self._closed.failures

    def closed(self) -> None:
        """The breaker closed: its window starts empty (Resilience4j resets it too)."""
        self._closed.reset()
        self.rate = 0.0

    def half_opened(self) -> None:
        """The breaker half-opened: a fresh window for its trial calls."""
        self._trials.reset()
