"""The resolved settings of one breaker or retry policy: defaults, config, keyword options."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..config import BREAKER_OPTIONS, RETRY_OPTIONS, ConfigError, Settings, parse_options
from ..config.resilience import (
    BULKHEAD_OPTIONS,
    SLOW_CALLS_NEED_A_RATE_WINDOW,
    slow_calls_problem,
)

__all__ = ["BreakerSettings", "BulkheadSettings", "RetrySettings"]


@dataclasses.dataclass(frozen=True)
class BreakerSettings:
    """The resolved settings of one named breaker."""

    fail_max: int = 5
    reset_timeout: float = 30.0
    success_threshold: int = 1
    half_open_max_calls: int = 1
    timeout: float | None = None
    storage: str = "memory"
    window: str = "consecutive"
    failure_rate: float = 50.0
    min_calls: int = 10
    slow_call_seconds: float | None = None
    slow_call_rate: float = 100.0

    @classmethod
    def resolve(
        cls, settings: Settings, name: str, options: Mapping[str, Any] | None = None
    ) -> BreakerSettings:
        """Defaults from ``GATEWAY_OBS_BREAKER_*``, then ``GATEWAY_OBS_BREAKERS[name]``,
        then ``options`` (validated here; :class:`ConfigError` names every bad one)."""
        values: dict[str, Any] = {
            "fail_max": settings.breaker_fail_max,
            "reset_timeout": settings.breaker_reset_timeout,
            "success_threshold": settings.breaker_success_threshold,
            "half_open_max_calls": settings.breaker_half_open_max_calls,
            "timeout": settings.breaker_timeout,
            "storage": settings.breaker_storage,
            "window": settings.breaker_window,
            "failure_rate": settings.breaker_failure_rate,
            "min_calls": settings.breaker_min_calls,
            "slow_call_seconds": settings.breaker_slow_call_seconds,
            "slow_call_rate": settings.breaker_slow_call_rate,
        }
        values.update((settings.breakers or {}).get(name, {}))
        if options:
            label = f"breaker {name!r}"
            given = parse_options(label, options, BREAKER_OPTIONS)
            values.update(given)
            if "slow_call_seconds" in given and slow_calls_problem(
                values["window"], values["slow_call_seconds"]
            ):
                raise ConfigError(
                    [
                        (
                            f"{label}: slow_call_seconds",
                            values["slow_call_seconds"],
                            SLOW_CALLS_NEED_A_RATE_WINDOW,
                        )
                    ]
                )
        return cls(**values)

    @property
    def rate_window(self) -> tuple[str, int] | None:
        """``("count", N)`` or ``("time", S)``; ``None`` for consecutive failures."""
        kind, _, size = self.window.partition(":")
        return (kind, int(size)) if size else None


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


@dataclasses.dataclass(frozen=True)
class BulkheadSettings:
    """The resolved settings of one bulkhead."""

    max_concurrent: int = 10
    max_wait: float = 0.0

    @classmethod
    def resolve(
        cls, settings: Settings, name: str, options: Mapping[str, Any] | None = None
    ) -> BulkheadSettings:
        """Defaults from ``GATEWAY_OBS_BULKHEAD_*``, then ``GATEWAY_OBS_BULKHEADS[name]``,
        then ``options`` (validated; :class:`ConfigError` names every bad one)."""
        values: dict[str, Any] = {
            "max_concurrent": settings.bulkhead_max_concurrent,
            "max_wait": settings.bulkhead_max_wait,
        }
        values.update((settings.bulkheads or {}).get(name, {}))
        if options:
            values.update(parse_options(f"bulkhead {name!r}", options, BULKHEAD_OPTIONS))
        return cls(**values)
