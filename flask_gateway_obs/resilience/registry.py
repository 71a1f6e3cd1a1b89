"""The breakers, retry policies and bulkheads of each app, and how a call finds them.

An app's :class:`Resilience` is made on first use (``state.resilience``), so an app that
never calls through a breaker or a retry does not load pybreaker or tenacity. Outside
an app context the process-wide :func:`default` one serves (built-in defaults, memory
storage, no metrics); it lives in :mod:`flask_gateway_obs.core.process`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Flask, current_app

from ..config import Settings
from ..config.resilience import breaker_redis_url, uses_breaker_redis
from ..core import process
from ..core.contracts import Recorder
from ..core.state import EXTENSION_KEY, state_of
from .deadlines import expect_timeouts

if TYPE_CHECKING:
    from ..core.state import Extension, ObsState
    from .breakers import BreakerRegistry
    from .bulkheads import BulkheadRegistry
    from .policy import RetryRegistry

__all__ = [
    "Resilience",
    "current",
    "default",
    "init_app",
    "of_state",
    "resolver",
    "set_breaker_redis_client",
]

T = TypeVar("T")

_creating = threading.Lock()


class _Standalone:
    """The owner of the process-wide :class:`Resilience`: metrics go nowhere."""

    recorder = Recorder()


class Resilience:
    """The breakers, retry policies and bulkheads of one app.

    pybreaker and tenacity are imported when the first breaker or policy is asked
    for, so an app that uses neither pays nothing for them.

    :param settings: the app's validated settings.
    :param service: names the app's shared breaker state in Redis.
    :param owner: whose ``recorder`` gets the metrics (the app's state).
    :param redis_client: for breakers with ``storage = redis``.
    :param redis_factory: makes that client when the first such breaker is created.
    """

    def __init__(
        self,
        settings: Settings,
        service: str,
        owner: Any,
        redis_client: Any = None,
        *,
        redis_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.namespace = settings.breaker_redis_namespace or f"gateway_obs:{service}"
        #: Whether the namespace is only the default (no service name, none configured).
        self.default_namespace = not (settings.breaker_redis_namespace or settings.service_name)
        self._owner = owner
        self._redis_client = redis_client
        self._redis_factory = redis_factory
        self._lock = threading.Lock()
        self._breakers: BreakerRegistry | None = None
        self._retries: RetryRegistry | None = None
        self._bulkheads: BulkheadRegistry | None = None
        if settings.breaker_timeout is not None or any(
            o.get("timeout") is not None for o in (settings.breakers or {}).values()
        ):
            expect_timeouts()  # retries publish their deadline from the first call on

    @property
    def breakers(self) -> BreakerRegistry:
        """The app's circuit breakers, by name."""
        if self._breakers is None:
            from .breakers import BreakerRegistry

            with self._lock:
                if self._breakers is None:
                    self._breakers = BreakerRegistry(
                        self.settings,
                        self.namespace,
                        self._owner,
                        self._redis_client,
                        redis_factory=self._redis_factory,
                        default_namespace=self.default_namespace,
                    )
        return self._breakers

    @property
    def retries(self) -> RetryRegistry:
        """The app's retry policies, by name."""
        if self._retries is None:
            from .policy import RetryRegistry

            with self._lock:
                if self._retries is None:
                    self._retries = RetryRegistry(self.settings, self._owner)
        return self._retries

    @property
    def bulkheads(self) -> BulkheadRegistry:
        """The app's bulkheads, by name."""
        if self._bulkheads is None:
            from .bulkheads import BulkheadRegistry

            with self._lock:
                if self._bulkheads is None:
                    self._bulkheads = BulkheadRegistry(self.settings, self._owner)
        return self._bulkheads

    def set_breaker_redis_client(self, client: Any) -> None:
        """Share the state of breakers created from now on through ``client``.

        :raises ValueError: if ``client`` has ``decode_responses=True``.
        """
        from .connect import check_redis_client

        check_redis_client(client)
        self._redis_client = client
        if self._breakers is not None:
            self._breakers.set_redis_client(client)


def _create(state: ObsState) -> Resilience:
    settings = state.settings
    factory = None
    if breaker_redis_url(settings) is not None:
        from .connect import connect

        factory = functools.partial(connect, settings)
    return Resilience(settings, state.service, state, redis_factory=factory)


def of_state(state: ObsState) -> Resilience:
    """The :class:`Resilience` of an app's state, made on first use."""
    found = state.resilience
    if found is None:
        with _creating:
            found = state.resilience
            if found is None:
                found = state.resilience = _create(state)
    if not isinstance(found, Resilience):
        raise RuntimeError("state.resilience is not the resilience concern's")
    return found


def init_app(app: Flask, state: ObsState) -> None:
    """Set up ``app``'s breakers now rather than on first use: for Redis breaker storage,
    whose client is made here (no connection yet) and whose default namespace is warned
    about here (``config.resilience`` checked the keys)."""
    resilience = of_state(state)
    if uses_breaker_redis(state.settings):
        breakers = resilience.breakers
        breakers.connect()
        if resilience.default_namespace:
            breakers.warn_if_default_namespace()


def default() -> Resilience:
    """The process-wide :class:`Resilience` used outside an app context."""
    return process.registry(
        "resilience.default", lambda: Resilience(Settings(), "default", _Standalone())
    )


def _current_app() -> Flask | None:
    try:
        return cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
    except RuntimeError:
        return None


def current(obs: Extension | None = None, app: Flask | None = None) -> Resilience:
    """The :class:`Resilience` of the current app (or ``app``), else of ``obs``'s only
    app, else the process-wide default."""
    if app is None:
        app = _current_app()
    if app is not None:
        state = state_of(app)
        if state is not None:
            return of_state(state)
    if obs is not None:
        return of_state(obs.state())
    return default()


def resolver(get: Callable[[Resilience], T], obs: Extension | None = None) -> Callable[[], T]:
    """A function returning ``get(current(obs))``, cached for the last app seen
    (this is the per-call cost of a decorator applied at import time)."""
    last: tuple[Flask | None, Any] = (None, None)

    def resolve() -> T:
        nonlocal last
        app = _current_app()
        cached = last
        if app is not None and cached[0] is app:
            return cast(T, cached[1])
        value = get(current(obs, app))
        if app is not None:
            last = (app, value)
        return value

    return resolve


def set_breaker_redis_client(app: Flask, client: Any) -> None:
    """Share the state of ``app``'s breakers created from now on through ``client``.

    Call it right after ``init_app``, before the first call through a breaker.

    :raises ValueError: if ``client`` has ``decode_responses=True``.
    """
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise RuntimeError("flask-gateway-obs is not set up on this app")
    of_state(state).set_breaker_redis_client(client)
