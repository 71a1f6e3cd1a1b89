"""Rate limiting: Flask-Limiter, wired to the extension's errors, logs, metrics and failure policy.

Each app gets its own :class:`GatewayLimiter` (a :class:`flask_limiter.Limiter`), kept
at ``state.limiter``, so two apps never share counters or settings by accident.
``obs.limiter`` is that app's limiter inside an app context (and outside one when the
``GatewayObs`` has set up one app); before any app, or with several, it is a
:class:`DeferredLimiter`. Either way ``limit`` and ``shared_limit`` return decorators that
find the limiter of the app serving the view when it is called, and limits and
exemptions of a blueprint reach only the apps it is registered on.

What the extension adds to Flask-Limiter, whose ``RATELIMIT_*`` keys keep their meaning:

- storage: ``RATELIMIT_STORAGE_URI``, else ``GATEWAY_OBS_REDIS_URL``, else memory, with
  short socket timeouts on Redis;
- a storage failure never becomes a 500 (:mod:`.storage`);
- a breach is a problem+json 429 with ``Retry-After``, counted and logged;
- the extension's own endpoints (health, metrics) are never limited;
- the client is the socket address unless proxies are declared trusted;
- speed: with the Flask-Limiter versions verified in
  :mod:`flask_gateway_obs._compat.flask_limiter`, the limits of an endpoint are resolved
  once and counted straight on the storage with Flask-Limiter's own keys
  (:mod:`.fastpath`); with any other version, Flask-Limiter evaluates them itself.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import Flask

from .._compat import flask_limiter as compat
from ..core import process
from ..logs import LOGGER_NAME
from .decorators import apply_blueprint_limits
from .facade import DeferredLimiter, InertLimiter, limiter_for
from .identity import client_address
from .limiter import GatewayLimiter, problem_detail, quiet_flask_limiters_logger
from .storage import StorageUnavailable, storage_options, storage_uri

if TYPE_CHECKING:
    from ..core.state import Extension, ObsState

__all__ = [
    "DeferredLimiter",
    "GatewayLimiter",
    "StorageUnavailable",
    "client_address",
    "init_app",
    "limiter_for",
    "storage_options",
    "storage_uri",
]

_log = logging.getLogger(LOGGER_NAME + ".ratelimit")


def limiter_class() -> type[GatewayLimiter]:
    """The fast path's limiter with a verified Flask-Limiter, else the public one (said once)."""
    if compat.VERIFIED:
        from .fastpath import FastLimiter

        return FastLimiter
    announced: list[bool] = process.registry("ratelimit.public_path_announced", list)
    if not announced:
        announced.append(True)
        _log.info(
            "Flask-Limiter %s is not among the versions verified for the fast path (%s): "
            "rate limits are evaluated by Flask-Limiter itself",
            version("flask-limiter"),
            ", ".join(f"{major}.{minor}" for major, minor in compat.VERIFIED_SERIES),
        )
    return GatewayLimiter


def init_app(app: Flask, state: ObsState, obs: Extension) -> None:
    """Create the app's limiter (``state.limiter``) and install it."""
    settings = state.settings
    key_func = settings.ratelimit_key_func or client_address(settings.trusted_proxies)
    if not settings.ratelimit_enabled:
        # Inert: decorators still work, nothing is counted, no hook is installed.
        state.limiter = InertLimiter(key_func, obs)
        quiet_flask_limiters_logger(state.limiter.logger)
        return
    config = app.config
    uri = storage_uri(config, settings.redis_url)
    options = storage_options(
        uri, settings.ratelimit_storage_timeout, config.get("RATELIMIT_STORAGE_OPTIONS")
    )
    shared = urlsplit(uri).scheme != "memory"
    limiter = limiter_class()(
        state,
        key_func,
        obs=obs,
        # Given explicitly so that Flask-Limiter does not warn about a default it
        # did not choose; RATELIMIT_STORAGE_URI, when set, is what this is.
        storage_uri=uri,
        storage_options=options,
        # Our defaults; the RATELIMIT_* key wins when the app sets it.
        headers_enabled=None if "RATELIMIT_HEADERS_ENABLED" in config else True,
        key_prefix="" if "RATELIMIT_KEY_PREFIX" in config or not shared else state.service,
    )
    state.limiter = limiter
    state.error_listeners.append(problem_detail)
    if obs._limiter_facade is not None:
        obs._limiter_facade.apply_to(limiter)
    apply_blueprint_limits(app, limiter)
    limiter.setup(app)
