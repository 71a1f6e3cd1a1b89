"""``@retry``: a retry policy applied at import time, resolved per app at call time.

The policy itself is :class:`~.policy.RetryPolicy`; this module is its public face
(the names users import) and the decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.lazy import lazy_getattr
from .calls import decorate_retries
from .classify import TRANSIENT_STATUSES, is_transient, retry_after_of
from .registry import resolver
from .settings import RetrySettings

if TYPE_CHECKING:
    from .policy import OUTCOMES, RetryPolicy, RetryRegistry

__all__ = [
    "OUTCOMES",
    "TRANSIENT_STATUSES",
    "RetryPolicy",
    "RetryRegistry",
    "RetrySettings",
    "is_transient",
    "retry",
    "retry_after_of",
]

F = TypeVar("F", bound=Callable[..., Any])

# Policies bring in tenacity: loaded at the first call through a policy (or when these
# names are read), not by decorating a function at import time.
__getattr__ = lazy_getattr(
    "flask_gateway_obs.resilience",
    {"OUTCOMES": "policy", "RetryPolicy": "policy", "RetryRegistry": "policy"},
    globals(),
)


def retry(
    fn: Callable[..., Any] | str | None = None,
    /,
    *,
    name: str | None = None,
    operation: str | None = None,
    **options: Any,
) -> Any:
    """Retry transient failures of a function, with the current app's settings.

    ``@retry``, ``@retry("payments")`` (a named policy) and ``@retry(max_attempts=5)``
    all work at import time: the app is looked up at each call
    (``flask.current_app``). Outside an app context the built-in defaults apply
    (and no metrics are counted).

    .. code-block:: python

        @retry(max_attempts=4, deadline=3)
        def fetch_rates(): ...

    :param name: a policy of ``GATEWAY_OBS_RETRY_POLICIES`` (default: the
        ``GATEWAY_OBS_RETRY_*`` settings).
    :param operation: the ``operation`` label (default: the policy name, else the
        function's qualified name).
    :param options: ``max_attempts``, ``base_delay``, ``multiplier``, ``max_delay``,
        ``jitter``, ``deadline``, ``respect_retry_after``, ``retry_on``, ``retry_if``,
        ``sleep``, ``clock``, ``random``.
    """
    if isinstance(fn, str):
        name, fn = fn, None

    def decorate_fn(func: F) -> F:
        policy = resolver(lambda r: r.retries.get(name, **options))
        return decorate_retries(policy, func, operation or name)

    if fn is not None:
        return decorate_fn(fn)
    return decorate_fn
