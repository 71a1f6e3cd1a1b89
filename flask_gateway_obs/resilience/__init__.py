"""Resilience: named circuit breakers (pybreaker) and retry policies (tenacity), per app.

Each app set up with the extension gets a :class:`Resilience` (its breakers, created on
first use, and its retry policies) at ``app.extensions["gateway_obs"].resilience``, made
when first needed. The decorators :func:`~.breaker.breaker` and :func:`~.retry.retry`
look it up at call time, so they work at import time. Outside an app context they use a
process-wide :class:`Resilience` with the built-in defaults (memory storage, no metrics).

Modules, each imported when first needed: :mod:`.registry` (per-app objects and their
lookup), :mod:`.breaker` / :mod:`.circuit` / :mod:`.breakers` / :mod:`.storage` /
:mod:`.timeouts` (breakers over pybreaker), :mod:`.retry` / :mod:`.policy` (retries over
tenacity), :mod:`.compose` (:func:`resilient`), :mod:`.classify` (which errors count).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import (
    Resilience,
    current,
    default,
    init_app,
    of_state,
    resolver,
    set_breaker_redis_client,
)

if TYPE_CHECKING:
    from .compose import resilient

__all__ = [
    "Resilience",
    "current",
    "default",
    "init_app",
    "of_state",
    "resilient",
    "resolver",
    "set_breaker_redis_client",
]


def __getattr__(name: str) -> Any:
    # ``resilient`` brings in pybreaker and tenacity: only when used.
    if name == "resilient":
        from .compose import resilient

        return resilient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
