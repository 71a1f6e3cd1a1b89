"""``@breaker(name)``: a circuit breaker applied at import time, resolved per app at call time.

The breaker itself is :class:`~.circuit.CircuitBreaker`; this module is its public
face (the names users import) and the decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.lazy import lazy_getattr
from .calls import decorate
from .classify import client_error
from .deadlines import expect_timeouts
from .registry import resolver
from .settings import BreakerSettings
from .timeouts import CallTimeoutError, HungCallsError

if TYPE_CHECKING:
    from .circuit import STATE_CODES, CircuitBreaker

__all__ = [
    "STATE_CODES",
    "BreakerSettings",
    "CallTimeoutError",
    "CircuitBreaker",
    "HungCallsError",
    "breaker",
    "client_error",
]

F = TypeVar("F", bound=Callable[..., Any])

# The breaker itself brings in pybreaker: loaded at the first call through a breaker (or
# when these names are read), not by decorating a function at import time.
__getattr__ = lazy_getattr(
    "flask_gateway_obs.resilience",
    {"STATE_CODES": "circuit", "CircuitBreaker": "circuit"},
    globals(),
)


def breaker(
    name: str, *, fallback: Callable[..., Any] | None = None, **options: Any
) -> Callable[[F], F]:
    """Decorate a function so each call goes through the current app's breaker ``name``.

    Usable at import time: the app is looked up at call time
    (``flask.current_app``), and the breaker is created on its first call from
    ``GATEWAY_OBS_BREAKER_*``, ``GATEWAY_OBS_BREAKERS[name]`` and ``options``.
    Outside an app context a process-wide set of breakers with the built-in
    defaults (memory storage, no metrics) is used.

    .. code-block:: python

        @breaker("payments", fallback=lambda error, order_id: {"status": "pending"})
        def charge(order_id): ...

    :param name: the breaker's name (``breaker`` label of the metrics).
    :param fallback: ``fallback(error, *args, **kwargs)`` answers instead when the
        breaker is open or the call failed.
    :param options: ``fail_max``, ``reset_timeout``, ``success_threshold``,
        ``half_open_max_calls``, ``timeout``, ``storage``, ``exclude``, ``clock``, ``listeners``.
    """
    if options.get("timeout") is not None:
        expect_timeouts()  # before the first call creates the breaker

    def decorate_fn(fn: F) -> F:
        return decorate(resolver(lambda r: r.breakers.get(name, **options)), fn, fallback)

    return decorate_fn
