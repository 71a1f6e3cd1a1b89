"""``resilient``: ``fallback(retry(bulkhead(breaker(fn))))``, each layer optional.

Each attempt passes the breaker, so every failure counts towards opening it, and
once it opens the attempt fails at once with ``CircuitOpenError``, which is never
retried: the retries stop instead of hammering a dependency known to be down. The
bulkhead sits outside the breaker (a full bulkhead says nothing about the
dependency, so it never counts against the breaker) and inside the retry (a retry
sleeping between attempts holds no room); ``BulkheadFullError`` is not retried.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .bulkheads import Bulkhead
from .bulkheads import decorate as inside_bulkhead
from .calls import decorate as through_breaker
from .calls import decorate_retries as with_retries
from .classify import client_error
from .deadlines import expect_timeouts
from .registry import Resilience, resolver

if TYPE_CHECKING:
    from ..core.state import Extension
    from .circuit import CircuitBreaker
    from .policy import RetryPolicy

__all__ = ["resilient"]

F = TypeVar("F", bound=Callable[..., Any])


def _options(value: Any, what: str) -> tuple[str | None, dict[str, Any]] | None:
    """``(name, options)`` from ``resilient``'s ``retry=``/``breaker=`` argument."""
    if value is False:
        return None
    if value is None or value is True:
        return None, {}
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping):
        return None, dict(value)
    raise TypeError(f"{what} must be a name, a dict of options, True or False; got {value!r}")


def resilient(
    name: str,
    *,
    retry: str | Mapping[str, Any] | bool | None = None,
    breaker: str | Mapping[str, Any] | bool | None = None,
    bulkhead: str | Mapping[str, Any] | bool | None = False,
    fallback: Callable[..., Any] | None = None,
    obs: Extension | None = None,
) -> Callable[[F], F]:
    """Retry around a bulkhead around a circuit breaker, in one decorator:
    ``fallback(retry(bulkhead(breaker(fn))))``.

    :param name: names the breaker, the retry policy and the ``operation`` label.
    :param retry: ``None``/``True`` the policy ``name`` (defaults if not configured),
        a policy name, a dict of retry options on top of policy ``name``, or ``False``.
    :param breaker: likewise for the breaker (a dict applies when it is created).
    :param bulkhead: likewise for a bulkhead, left out unless given (``True``: bulkhead
        ``name``).
    :param fallback: ``fallback(error, *args, **kwargs)`` answers when the call still
        fails after the retries (4xx errors are raised as they are).
    :param obs: resolve against this extension's app outside an app context.
    """
    retry_spec = _options(retry, "retry")
    breaker_spec = _options(breaker, "breaker")
    bulkhead_spec = _options(bulkhead, "bulkhead")
    breaker_name = (breaker_spec[0] if breaker_spec else None) or name
    breaker_options = breaker_spec[1] if breaker_spec else {}
    if breaker_options.get("timeout") is not None:
        expect_timeouts()

    def get_breaker(r: Resilience) -> CircuitBreaker:
        return r.breakers.get(breaker_name, **breaker_options)

    def get_bulkhead(r: Resilience) -> Bulkhead:
        assert bulkhead_spec is not None
        return r.bulkheads.get(bulkhead_spec[0] or name, **bulkhead_spec[1])

    def get_policy(r: Resilience) -> RetryPolicy:
        if breaker_spec is not None:
            get_breaker(r)  # made first: a timed breaker sees the first call's deadline
        assert retry_spec is not None
        return r.retries.get(retry_spec[0] or name, **retry_spec[1])

    def decorate(fn: F) -> F:
        wrapped: Callable[..., Any] = fn
        if breaker_spec is not None:
            wrapped = through_breaker(resolver(get_breaker, obs), wrapped, None)
        if bulkhead_spec is not None:
            wrapped = inside_bulkhead(resolver(get_bulkhead, obs), wrapped)
        if retry_spec is not None:
            wrapped = with_retries(resolver(get_policy, obs), wrapped, name)
        if fallback is not None:
            wrapped = _with_fallback(wrapped, fallback)
        return cast(F, wrapped)

    return decorate


def _with_fallback(fn: Callable[..., Any], fallback: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except Exception as error:
                if client_error(error):
                    raise
                result = fallback(error, *args, **kwargs)
                return await result if inspect.isawaitable(result) else result

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            if client_error(error):
                raise
            return fallback(error, *args, **kwargs)

    return wrapper
