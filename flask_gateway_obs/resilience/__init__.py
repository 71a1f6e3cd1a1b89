"""Resilience: named circuit breakers (pybreaker) and retry policies (tenacity), per app.

Each app set up with the extension gets a :class:`Resilience` at
``app.extensions["gateway_obs"].resilience``: its breakers (created on first use)
and its retry policies. The decorators :func:`~.breaker.breaker` and
:func:`~.retry.retry` look it up at call time, so they work at import time.
Outside an app context they use a process-wide :class:`Resilience` with the
built-in defaults (memory storage, no metrics).

Composition: retry wraps breaker (see :func:`resilient`). Each attempt passes
the breaker, so every failure counts towards opening it, and once it opens the
attempt fails at once with ``CircuitOpenError``, which is never retried: the
retries stop instead of hammering a dependency known to be down.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Flask, current_app

from ..config import ConfigError, Keys, Settings
from ..core.contracts import Recorder
from ..core.state import EXTENSION_KEY
from ..logs import mask_url_credentials

if TYPE_CHECKING:
    from ..core.state import Extension, ObsState
    from .breaker import BreakerRegistry
    from .retry import RetryRegistry

__all__ = [
    "Resilience",
    "current",
    "default",
    "init_app",
    "of_state",
    "resilient",
    "set_breaker_redis_client",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class _Standalone:
    """The owner of the process-wide :class:`Resilience`: metrics go nowhere."""

    recorder = Recorder()


class Resilience:
    """The breakers and retry policies of one app.

    pybreaker and tenacity are imported when the first breaker or policy is asked
    for, so an app that uses neither pays nothing for them.

    :param settings: the app's validated settings.
    :param service: names the app's shared breaker state in Redis.
    :param owner: whose ``recorder`` gets the metrics (the app's state).
    :param redis_client: for breakers with ``storage = redis``.
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

    @property
    def breakers(self) -> BreakerRegistry:
        """The app's circuit breakers, by name."""
        if self._breakers is None:
            from .breaker import BreakerRegistry

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
            from .retry import RetryRegistry

            with self._lock:
                if self._retries is None:
                    self._retries = RetryRegistry(self.settings, self._owner)
        return self._retries

    def set_breaker_redis_client(self, client: Any) -> None:
        """Share the state of breakers created from now on through ``client``.

        :raises ValueError: if ``client`` has ``decode_responses=True``.
        """
        from .breaker import check_redis_client

        check_redis_client(client)
        self._redis_client = client
        if self._breakers is not None:
            self._breakers.set_redis_client(client)


def _breaker_redis_url(settings: Settings) -> tuple[str, str] | None:
    if settings.breaker_redis_url:
        return Keys.BREAKER_REDIS_URL, settings.breaker_redis_url
    if settings.redis_url:
        return Keys.REDIS_URL, settings.redis_url
    return None


def _uses_redis(settings: Settings) -> bool:
    if settings.breaker_storage == "redis":
        return True
    return any(o.get("storage") == "redis" for o in (settings.breakers or {}).values())


def _redis_client(settings: Settings) -> Any:
    """The breakers' Redis client, or ``None``; checks the combination of keys.

    :raises ConfigError: when Redis storage is asked for without a URL, or the URL
        asks for ``decode_responses``.
    """
    if not _uses_redis(settings):
        return None
    return _connect_redis(settings)


def _connect_redis(settings: Settings) -> Any:
    """A Redis client (no connection yet) for the breakers' URL.

    :raises ConfigError: without a URL, without the redis package, or when the URL asks
        for ``decode_responses``.
    """
    found = _breaker_redis_url(settings)
    if found is None:
        raise ConfigError(
            [
                (
                    Keys.BREAKER_STORAGE,
                    "redis",
                    "'memory', or 'redis' together with GATEWAY_OBS_BREAKER_REDIS_URL "
                    "or GATEWAY_OBS_REDIS_URL",
                )
            ]
        )
    key, url = found
    try:
        import redis
    except ImportError:
        raise ConfigError(
            [
                (
                    Keys.BREAKER_STORAGE,
                    "redis",
                    "'memory' unless the redis package is installed "
                    "(pip install 'flask-gateway-obs[redis]')",
                )
            ]
        ) from None
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeout = settings.breaker_redis_timeout
    # Short timeouts and no client-side retries: state calls happen under a
    # breaker's lock, and a slow Redis must turn into local state quickly.
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    from .breaker import check_redis_client

    try:
        check_redis_client(client)
    except ValueError:
        client.close()
        raise ConfigError(
            [
                (
                    key,
                    mask_url_credentials(url),
                    "a Redis URL without decode_responses=true (breaker state is read "
                    "as bytes); give other users of Redis their own URL",
                )
            ]
        ) from None
    return client


def init_app(app: Flask, state: ObsState) -> None:
    """Give ``app`` its breakers and retry policies (no connection is made here).

    With a Redis URL but memory storage configured, the client is made when a breaker
    asks for ``storage="redis"`` in code. Shared state under the default namespace
    (no service name, no namespace) is warned about here, or at that first breaker.

    :raises ConfigError: for Redis breaker storage without a usable URL.
    """
    settings = state.settings
    client = _redis_client(settings)
    factory = None
    if client is None and _breaker_redis_url(settings) is not None:
        factory = functools.partial(_connect_redis, settings)
    resilience = Resilience(settings, state.service, state, client, redis_factory=factory)
    state.resilience = resilience
    if settings.breaker_timeout is not None or any(
        o.get("timeout") is not None for o in (settings.breakers or {}).values()
    ):
        from .breaker import expect_timeouts

        expect_timeouts()  # retries publish their deadline from the first call on
    if client is not None and resilience.default_namespace:
        resilience.breakers.warn_if_default_namespace()


_default: Resilience | None = None
_default_lock = threading.Lock()


def default() -> Resilience:
    """The process-wide :class:`Resilience` used outside an app context."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Resilience(Settings(), "default", _Standalone())
    return _default


def reset_default() -> None:
    """Forget the process-wide breakers (for tests)."""
    global _default
    with _default_lock:
        _default = None


def of_state(state: ObsState) -> Resilience:
    """The :class:`Resilience` of an app's state (set up by :func:`init_app`)."""
    found = state.resilience
    if not isinstance(found, Resilience):
        raise RuntimeError("resilience is not set up on this app; call init_app first")
    return found


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
        found = getattr(app.extensions.get(EXTENSION_KEY), "resilience", None)
        if found is not None:
            return cast(Resilience, found)
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
    fallback: Callable[..., Any] | None = None,
    obs: Extension | None = None,
) -> Callable[[F], F]:
    """Retry wrapping a circuit breaker, in one decorator: ``fallback(retry(breaker(fn)))``.

    :param name: names the breaker, the retry policy and the ``operation`` label.
    :param retry: ``None``/``True`` the policy ``name`` (defaults if not configured),
        a policy name, a dict of retry options on top of policy ``name``, or ``False``.
    :param breaker: likewise for the breaker (a dict applies when it is created).
    :param fallback: ``fallback(error, *args, **kwargs)`` answers when the call still
        fails after the retries (4xx errors are raised as they are).
    :param obs: resolve against this extension's app outside an app context.
    """
    retry_spec = _options(retry, "retry")
    breaker_spec = _options(breaker, "breaker")

    def decorate(fn: F) -> F:
        from .breaker import _decorate as decorate_breaker
        from .retry import _decorate as decorate_retry

        wrapped: Callable[..., Any] = fn
        if breaker_spec is not None:
            breaker_name = breaker_spec[0] or name
            breaker_options = breaker_spec[1]
            if breaker_options.get("timeout") is not None:
                from .breaker import expect_timeouts

                expect_timeouts()

            wrapped = decorate_breaker(
                resolver(lambda r: r.breakers.get(breaker_name, **breaker_options), obs),
                wrapped,
                None,
            )
        if retry_spec is not None:
            policy_name = retry_spec[0] or name
            retry_options = retry_spec[1]

            wrapped = decorate_retry(
                resolver(lambda r: r.retries.get(policy_name, **retry_options), obs),
                wrapped,
                name,
            )
        if fallback is not None:
            wrapped = _with_fallback(wrapped, fallback)
        return cast(F, wrapped)

    return decorate


def _with_fallback(fn: Callable[..., Any], fallback: Callable[..., Any]) -> Callable[..., Any]:
    from .breaker import client_error

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
