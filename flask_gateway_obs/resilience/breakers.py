"""The named circuit breakers of one app: their settings and their registry."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pybreaker

from ..config import Settings
from ..logs import LOGGER_NAME
from .circuit import CircuitBreaker, _HasRecorder
from .connect import check_redis_client
from .settings import BreakerSettings
from .storage import LocalStorage, SharedStorage, StorageHealth

__all__ = ["BreakerRegistry"]

_log = logging.getLogger(LOGGER_NAME + ".breaker")

#: Options of ``obs.circuit_breaker(name, ...)`` that are code, not settings.
_HOOKS = frozenset({"clock", "exclude", "listeners"})


class BreakerRegistry:
    """The named breakers of one app, created on first use.

    :param settings: the app's settings (defaults and per-name overrides).
    :param namespace: Redis key prefix of this app's shared breaker state.
    :param owner: whose ``recorder`` gets the metrics.
    :param redis_client: client for ``storage = redis`` (checked here).
    :param redis_factory: makes that client when the first breaker with ``storage =
        redis`` is created, if none was given (a Redis URL is set, but the configured
        storage is memory).
    :param default_namespace: whether ``namespace`` is only the default one (no service
        name, no namespace configured): sharing state under it is warned about.
    """

    def __init__(
        self,
        settings: Settings,
        namespace: str,
        owner: _HasRecorder,
        redis_client: Any = None,
        *,
        redis_factory: Callable[[], Any] | None = None,
        default_namespace: bool = False,
    ) -> None:
        self.settings = settings
        self.namespace = namespace
        self._owner = owner
        self._breakers: dict[str, CircuitBreaker] = {}
        self._options: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.health = StorageHealth(settings.breaker_redis_retry_interval)
        self._redis: Any = None
        self._redis_factory = redis_factory
        self._warn_namespace = default_namespace
        if redis_client is not None:
            self.set_redis_client(redis_client)

    def warn_if_default_namespace(self) -> None:
        """Warn (once) that shared state lives under a namespace nobody chose.

        The default ``gateway_obs:<service>`` falls back to the app's import name (often
        ``app``), so two services using one Redis would share their breakers of the same
        name: one opening "payments" would open the other's.
        """
        if not self._warn_namespace:
            return
        self._warn_namespace = False
        _log.warning(
            "circuit breakers share state in Redis under the default namespace %r, taken "
            "from the app's import name: other services using this Redis with breakers of "
            "the same names would share them. Set GATEWAY_OBS_SERVICE_NAME or "
            "GATEWAY_OBS_BREAKER_REDIS_NAMESPACE.",
            self.namespace,
            extra={"namespace": self.namespace},
        )

    def set_redis_client(self, client: Any) -> None:
        """Share the state of breakers created from now on through ``client``.

        :raises ValueError: if ``client`` has ``decode_responses=True``.
        """
        check_redis_client(client)
        self._redis = client
        self._redis_factory = None

    def connect(self) -> None:
        """Make the client for shared state now (no connection yet), if a URL is set."""
        with self._lock:
            self._redis_client()

    def _redis_client(self) -> Any:
        """The client for shared state, made now from the URL if need be (under the lock)."""
        if self._redis is None and self._redis_factory is not None:
            self.set_redis_client(self._redis_factory())
        return self._redis

    def names(self) -> list[str]:
        """Names of the breakers created so far."""
        return sorted(self._breakers)

    def get(self, name: str, **options: Any) -> CircuitBreaker:
        """The breaker called ``name``, created now if it is new.

        ``options`` (the settings' option names, plus ``clock``, ``exclude`` and
        ``listeners``) apply when the breaker is created; asking again for the same
        name with different options is an error, with none it returns the breaker.

        :raises ConfigError: for an unknown or invalid option.
        :raises ValueError: when the breaker exists with other options, or
            ``storage="redis"`` has no Redis client.
        """
        found = self._breakers.get(name)
        if found is not None and (not options or self._options.get(name) == options):
            return found
        with self._lock:
            found = self._breakers.get(name)
            if found is not None:
                if options and self._options.get(name) != options:
                    raise ValueError(
                        f"circuit breaker {name!r} already exists with options "
                        f"{self._options.get(name) or {}!r}; got {options!r}. Give each "
                        "configuration its own name, or set the options in one place "
                        "(GATEWAY_OBS_BREAKERS)."
                    )
                return found
            created = self._create(name, options)
            self._breakers[name] = created
            self._options[name] = dict(options)
            return created

    def _create(self, name: str, options: Mapping[str, Any]) -> CircuitBreaker:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a circuit breaker needs a non-empty name, got {name!r}")
        hooks = {k: v for k, v in options.items() if k in _HOOKS}
        settings = BreakerSettings.resolve(
            self.settings, name, {k: v for k, v in options.items() if k not in _HOOKS}
        )
        clock = hooks.get("clock", time.time)
        storage: pybreaker.CircuitBreakerStorage
        if settings.storage == "redis":
            client = self._redis_client()
            if client is None:
                raise ValueError(
                    f"circuit breaker {name!r} uses storage 'redis' but no Redis is set: "
                    "set GATEWAY_OBS_BREAKER_REDIS_URL or GATEWAY_OBS_REDIS_URL, or call "
                    "flask_gateway_obs.resilience.set_breaker_redis_client(app, client)"
                )
            self.warn_if_default_namespace()
            storage = SharedStorage(client, f"{self.namespace}:{name}", self.health, name, clock)
        else:
            storage = LocalStorage(clock)
        return CircuitBreaker(
            name,
            settings,
            storage=storage,
            owner=self._owner,
            clock=clock,
            exclude=tuple(hooks.get("exclude", ())),
            listeners=tuple(hooks.get("listeners", ())),
        )
