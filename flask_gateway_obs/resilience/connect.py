"""The Redis client of shared breaker state: the process's one for the URL, checked for
raw bytes."""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..config.resilience import breaker_redis_url
from ..core.redis import shared as redis_client

__all__ = ["check_redis_client", "connect"]


def check_redis_client(client: Any) -> None:
    """Refuse a client that decodes responses: pybreaker's Redis storage reads bytes.

    :raises ValueError: with what to do instead.
    """
    get_kwargs = getattr(client, "get_connection_kwargs", None)
    if callable(get_kwargs):
        kwargs = get_kwargs()
    else:
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if kwargs.get("decode_responses"):
        raise ValueError(
            "the Redis client for circuit-breaker state has decode_responses=True, but "
            "pybreaker's Redis storage reads raw bytes (it calls .decode() on them). Give the "
            "breakers a client of their own without it, e.g. redis.Redis.from_url(url)."
        )


def connect(settings: Settings) -> Any:
    """The process's Redis client for the breakers' URL (one server, Sentinel or Cluster),
    with short timeouts and no retries of its own: a slow Redis must turn into local state
    quickly. No connection is made here.

    :raises ValueError: without a URL, or when it asks for ``decode_responses``.
    """
    found = breaker_redis_url(settings)
    if found is None:
        raise ValueError(
            "no Redis for breaker state: set GATEWAY_OBS_BREAKER_REDIS_URL or "
            "GATEWAY_OBS_REDIS_URL, or call "
            "flask_gateway_obs.resilience.set_breaker_redis_client(app, client)"
        )
    client = redis_client(found[1], timeout=settings.breaker_redis_timeout)
    check_redis_client(client)
    return client
