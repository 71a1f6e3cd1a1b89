"""``@bulkhead(name)``: a cap on concurrent calls applied at import time, resolved per app.

The bulkhead itself is :class:`~.bulkheads.Bulkhead`; this module is its public face.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import BulkheadFullError
from .bulkheads import Bulkhead, decorate
from .registry import resolver
from .settings import BulkheadSettings

__all__ = ["Bulkhead", "BulkheadFullError", "BulkheadSettings", "bulkhead"]

F = TypeVar("F", bound=Callable[..., Any])


def bulkhead(name: str, **options: Any) -> Callable[[F], F]:
    """Decorate a function (sync or ``async def``) so that at most ``max_concurrent`` calls
    run at once through the current app's bulkhead ``name``.

    Usable at import time: the app is looked up at call time, and the bulkhead is
    created on its first call from ``GATEWAY_OBS_BULKHEAD_*``,
    ``GATEWAY_OBS_BULKHEADS[name]`` and ``options``. Outside an app context a
    process-wide set with the built-in defaults is used.

    .. code-block:: python

        @bulkhead("payments", max_concurrent=4, max_wait=0.5)
        def charge(order_id): ...

    :param name: the bulkhead's name (``bulkhead`` label of the metrics).
    :param options: ``max_concurrent``, ``max_wait`` (seconds).
    :raises BulkheadFullError: (at call time) when no room came free within ``max_wait``.
    """

    def decorate_fn(fn: F) -> F:
        return decorate(resolver(lambda r: r.bulkheads.get(name, **options)), fn)

    return decorate_fn
