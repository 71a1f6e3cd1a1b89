"""Rate limiting: Flask-Limiter, wired to the extension's errors, logs, metrics and failure policy.

Each app gets its own :class:`GatewayLimiter` (a :class:`flask_limiter.Limiter`), kept
at ``state.limiter``, so two apps never share counters or settings by accident.
``obs.limiter`` is that app's limiter inside an app context; outside one (at import
time, in a module of blueprints) it is a :class:`DeferredLimiter` whose decorators
apply to every app the ``GatewayObs`` object sets up.

What the extension adds to Flask-Limiter, whose ``RATELIMIT_*`` keys keep their meaning:

- storage: ``RATELIMIT_STORAGE_URI``, else ``GATEWAY_OBS_REDIS_URL``, else memory, with
  short socket timeouts on Redis;
- a storage failure never becomes a 500: requests are served on per-process in-memory
  counters (or refused with a 503 when fail-closed) and the storage is probed again
  with back-off instead of being tried on every request;
- a breach is a problem+json 429 with ``Retry-After``, counted and logged;
- the extension's own endpoints (health, metrics) are never limited;
- the client is the socket address unless proxies are declared trusted.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, has_app_context, request
from flask_limiter import ExemptionScope, HeaderNames, Limiter, RateLimitExceeded
from flask_limiter._compat import request_context
from limits import RateLimitItem, WindowStats
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import FixedWindowRateLimiter, RateLimiter

from .errors import ServiceUnavailableError
from .labels import UNMATCHED_ROUTE
from .logs import LOGGER_NAME, mask_url_credentials

if TYPE_CHECKING:
    from .extension import GatewayObs, ObsState

__all__ = [
    "DeferredLimiter",
    "GatewayLimiter",
    "StorageUnavailable",
    "client_address",
    "init_app",
    "limiter_for",
]

#: ``errors_total{type, source}`` of a failed call to the limiter's storage.
STORAGE_ERROR_TYPE = "RateLimitStorageError"
ERROR_SOURCE = "ratelimit"
#: First wait before a storage that just failed is tried again; it doubles per failed probe.
FIRST_PROBE_DELAY = 0.5
#: While the storage stays down, the warning is repeated at most this often (seconds).
REMINDER_INTERVAL = 60.0

_EXTENSION_KEY = "gateway_obs"  # extension.EXTENSION_KEY, without importing it at import time
_DEFERRED_ATTR = "_gateway_obs_deferred_limits"
_CONTEXT_ATTR = "_limiter_request_context"  # where Flask-Limiter keeps its per-request state
_DEFAULT_EXEMPTION = ExemptionScope.APPLICATION | ExemptionScope.DEFAULT | ExemptionScope.META
_REDIS_SCHEMES = frozenset(
    {
        "redis",
        "rediss",
        "redis+unix",
        "redis+cluster",
        "redis+sentinel",
        "valkey",
        "valkeys",
        "valkey+unix",
        "valkey+cluster",
        "valkey+sentinel",
    }
)

_log = logging.getLogger(LOGGER_NAME + ".ratelimit")

KeyFunc = Callable[[], str]


# --- client identity ----------------------------------------------------------------------


def client_address(trusted_proxies: int = 0) -> KeyFunc:
    """A key function: the client's address, as werkzeug's ``ProxyFix`` would see it.

    With ``trusted_proxies`` = 0 it is the socket address (``REMOTE_ADDR``), which a
    client cannot forge. With N > 0 it is the Nth address from the right of
    ``X-Forwarded-For`` (the one the outermost trusted proxy saw), falling back to the
    socket address when the header has fewer than N entries. Entries further left are
    whatever the client sent and are never used.

    :param trusted_proxies: how many proxies in front of the app append to the header.
    """
    if trusted_proxies < 0:
        raise ValueError("trusted_proxies must be >= 0")
    if trusted_proxies == 0:

        def socket_address() -> str:
            address: str = request.environ.get("REMOTE_ADDR") or "127.0.0.1"
            return address

        return socket_address

    def forwarded_address() -> str:
        environ = request.environ
        forwarded: str | None = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded:
            # Split only the hops our proxies wrote; a client can make the rest arbitrarily long.
            hops = forwarded.rsplit(",", trusted_proxies)
            if len(hops) >= trusted_proxies:
                hop = hops[-trusted_proxies].strip()
                if hop:
                    return hop
        address: str = environ.get("REMOTE_ADDR") or "127.0.0.1"
        return address

    return forwarded_address


# --- storage failure -----------------------------------------------------------------------


class StorageUnavailable(Exception):
    """The limiter's storage is known to be down and is not tried until its next probe."""


class _PipelinedFixedWindow(FixedWindowRateLimiter):
    """Fixed window on Redis, reading a window's count and TTL in one round trip, not two.

    The rate-limit headers read the window of every limited request, so this saves
    one Redis round trip per request.
    """

    storage: RedisStorage

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        key = self.storage.prefixed_key(item.key_for(*identifiers))
        pipe = cast(Any, self.storage.get_connection(True)).pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        count, ttl = pipe.execute()
        return WindowStats(max(int(ttl), 0) + time.time(), max(0, item.amount - int(count or 0)))


class _Refusing(RateLimiter):
    """The strategy in use while the storage is down and the limiter fails closed."""

    def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        raise StorageUnavailable

    def test(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        raise StorageUnavailable

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        raise StorageUnavailable


# --- the per-app limiter -------------------------------------------------------------------


class GatewayLimiter(Limiter):
    """The app's :class:`flask_limiter.Limiter`, with the extension's failure policy.

    Created by the extension's ``init_app``; reach it as ``obs.limiter`` inside an app
    context. Everything Flask-Limiter offers works as documented (``limit``,
    ``shared_limit``, ``exempt``, ``request_filter``, ``current_limit``, ``reset``).

    When a call to the storage fails, the storage is marked down: requests are then
    limited on per-process in-memory counters (fail open) or refused with a 503
    (``fail_closed``), and the storage is not touched again until a probe, first
    after :data:`FIRST_PROBE_DELAY` seconds, then after waits doubling up to
    ``max_probe_interval``. A successful probe makes the limits shared again.

    :param state: the app's extension state (settings, recorder, internal paths).
    :param key_func: the default key function (who a limit counts).
    :param options: keyword arguments for :class:`flask_limiter.Limiter`.
    """

    def __init__(self, state: ObsState, key_func: KeyFunc, **options: Any) -> None:
        super().__init__(key_func, **options)
        _drop_duplicate_null_handlers(self.logger)
        self._state = state
        self._internal_paths = state.internal_paths
        settings = state.settings
        #: Answer 503 instead of serving while the storage is down.
        self.fail_closed: bool = settings.ratelimit_fail_closed
        #: Longest wait (seconds) between two probes of a storage that is down.
        self.max_probe_interval: float = settings.ratelimit_probe_interval
        #: Clock of the probe schedule (monotonic seconds); replaceable in tests.
        self.clock: Callable[[], float] = time.monotonic
        #: Failed calls to the storage (probes included) since the app started.
        self.storage_failures = 0
        self._storage_errors: tuple[type[BaseException], ...] = (StorageError,)
        self._strategy_class: type[RateLimiter] | None = None
        self._fast_strategy: RateLimiter | None = None
        self._fallback: RateLimiter | None = None
        self._refusing: RateLimiter | None = None
        self._down = False
        self._down_since = 0.0
        self._next_probe = 0.0
        self._probe_delay = FIRST_PROBE_DELAY
        self._next_reminder = -math.inf
        self._outage_logged = False
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._inject_headers: Callable[[Response], Response] | None = None
        self._retry_after_header = "Retry-After"
        self._views: dict[_DeferredLimits, Callable[..., Any]] = {}
        self._view_count = -1
        self._views_lock = threading.RLock()

    def setup(self, app: Flask) -> None:
        """Run Flask-Limiter's ``init_app`` and move its request hooks into the extension's."""
        self.init_app(app)
        if not self.initialized:  # RATELIMIT_ENABLED = False
            return
        storage = self.storage
        if not isinstance(storage, MemoryStorage):
            # With wrap_exceptions off, the storage raises its driver's own errors.
            extra = storage.base_exceptions
            self._storage_errors += extra if isinstance(extra, tuple) else (extra,)
        self._strategy_class = type(super().limiter)
        if type(storage) is RedisStorage and self._strategy_class is FixedWindowRateLimiter:
            self._fast_strategy = _PipelinedFixedWindow(storage)
        self._retry_after_header = self._header_mapping.get(HeaderNames.RETRY_AFTER, "Retry-After")
        self._adopt_hooks(app)

    def _adopt_hooks(self, app: Flask) -> None:
        # Flask-Limiter registers three hooks of its own; Flask pays for each on every
        # request. Its check runs instead as a gate of the extension's before-request
        # step, its header step inside ours (skipped when the limiter did nothing), and
        # its teardown, which only empties per-request state that Flask discards with
        # the request context anyway, not at all. Hooks not found stay where they are.
        before = app.before_request_funcs.get(None, [])
        for check in list(before):
            if getattr(check, "__self__", None) is self:
                before.remove(check)
                self._state.request_gates.append(self._check_request_limit)
        after = app.after_request_funcs.get(None, [])
        for inject in list(after):
            if isinstance(inject, functools.partial) and inject.args[:1] == (self,):
                after.remove(inject)
                self._inject_headers = inject
                self._state.response_hooks.append(self._after_request)
        teardown = app.teardown_request_funcs.get(None, [])
        for release in list(teardown):
            if getattr(release, "__self__", None) is self:
                teardown.remove(release)

    # --- storage health ------------------------------------------------------------

    @property
    def storage_down(self) -> bool:
        """Whether the storage is considered down (limits are per process, or refused)."""
        return self._down

    @property
    def limiter(self) -> RateLimiter:
        """The strategy in use: on the shared storage, or the stand-in while it is down."""
        if self._down:
            return self._degraded()
        strategy = self._fast_strategy
        if strategy is None or self._storage_dead:  # (Flask-Limiter's own fallback, if enabled)
            return super().limiter
        return strategy

    def _degraded(self) -> RateLimiter:
        if self.fail_closed:
            if self._refusing is None:
                self._refusing = _Refusing(self.storage)
            return self._refusing
        if self._fallback is None:
            with self._lock:
                if self._fallback is None:
                    strategy = self._strategy_class or type(super().limiter)
                    self._fallback = strategy(MemoryStorage())
        return self._fallback

    def _is_storage_error(self, error: BaseException) -> bool:
        return isinstance(error, self._storage_errors)

    def _storage_failed(self, error: BaseException | None, *, probe: bool = False) -> None:
        now = self.clock()
        with self._lock:
            self.storage_failures += 1
            first = not self._down
            if first:
                self._down = True
                self._down_since = now
                self._probe_delay = FIRST_PROBE_DELAY
                self._next_probe = now + min(FIRST_PROBE_DELAY, self.max_probe_interval)
            elif probe:
                self._probe_delay = min(self._probe_delay * 2, self.max_probe_interval)
                self._next_probe = now + self._probe_delay
            # else: a request that was already talking to the storage when it went down.
            # One warning per REMINDER_INTERVAL at most, even if the storage flaps.
            remind = now >= self._next_reminder
            if remind:
                self._next_reminder = now + REMINDER_INTERVAL
                self._outage_logged = True
        try:
            self._state.recorder.error(STORAGE_ERROR_TYPE, ERROR_SOURCE)
            if remind:
                self._warn(error, first, now)
        except Exception:  # instrumentation never breaks a request
            _log.debug("reporting a storage failure failed", exc_info=True)

    def _warn(self, error: BaseException | None, first: bool, now: float) -> None:
        if self.fail_closed:
            policy = "rate-limited requests are refused with 503 until it returns"
        else:
            policy = "limits are counted per process, in memory, until it returns"
        message = "rate limit storage unavailable" if first else "rate limit storage still down"
        cause = getattr(error, "storage_error", error)
        _log.warning(
            f"{message}: {policy}",
            extra={
                "storage": mask_url_credentials(_storage_name(self.storage)),
                "error_type": type(cause).__name__ if cause is not None else None,
                "error": mask_url_credentials(str(cause)) if cause is not None else None,
                "down_seconds": round(now - self._down_since, 3),
                "failures": self.storage_failures,
            },
        )

    def _maybe_probe(self) -> None:
        if self.clock() < self._next_probe or not self._probe_lock.acquire(blocking=False):
            return
        try:
            if not self._down or self.clock() < self._next_probe:
                return
            error: BaseException | None = None
            try:
                healthy = bool(self.storage.check())
            except Exception as exc:  # some storages raise instead of answering False
                healthy, error = False, exc
            if healthy:
                self._recovered()
            else:
                self._storage_failed(error, probe=True)
        finally:
            self._probe_lock.release()

    def _recovered(self) -> None:
        now = self.clock()
        with self._lock:
            self._down = False
            self._fallback = None  # its counts are not carried into a later outage
            down_for = now - self._down_since
            logged, self._outage_logged = self._outage_logged, False
        if not logged:
            return  # the outage went unreported (flapping): so does its end
        _log.info(
            "rate limit storage is back: limits are shared again",
            extra={
                "storage": mask_url_credentials(_storage_name(self.storage)),
                "down_seconds": round(down_for, 3),
            },
        )

    def _unavailable(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            "Rate limiting is temporarily unavailable; try again later.",
            retry_after=max(1.0, self._next_probe - self.clock()),
            code="rate_limit_unavailable",
        )

    # --- the request steps -----------------------------------------------------------

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        if in_middleware:
            if not self._middleware_has_limits():
                return
            if request.path in self._internal_paths:
                return
            app = current_app._get_current_object()  # type: ignore[attr-defined]
            if len(app.view_functions) != self._view_count:
                self._bind_views(app)
        if self._down:
            self._maybe_probe()
        try:
            super()._check_request_limit(callable_name, in_middleware)
        except RateLimitExceeded as exc:
            self._breached(exc)
            raise
        except StorageUnavailable:
            raise self._unavailable() from None
        except Exception as exc:
            if not self._is_storage_error(exc):
                raise
            self._storage_failed(exc)
            if self.fail_closed:
                raise self._unavailable() from None
            # Count this request on the in-memory stand-in instead.
            self.context.seen_limits.clear()
            try:
                super()._check_request_limit(callable_name, in_middleware)
            except RateLimitExceeded as again:
                self._breached(again)
                raise

    def _middleware_has_limits(self) -> bool:
        # Without application, default, meta or blueprint limits the before-request
        # step has nothing to evaluate (decorated routes check in their wrapper).
        manager = self.limit_manager
        return bool(
            manager._application_limits
            or manager._default_limits
            or manager._blueprint_limits
            or self._meta_limits
            or self._in_memory_fallback
        )

    def _after_request(self, response: Response) -> Response:
        if self._inject_headers is None or not hasattr(request_context(), _CONTEXT_ATTR):
            return response  # the limiter did nothing for this request
        name = self._retry_after_header
        lowered = name.lower()
        before = None
        for key, value in response.headers:  # (Headers.get raises internally on a miss)
            if key.lower() == lowered:
                before = value
                break
        try:
            response = self._inject_headers(response)
        except StorageUnavailable:
            pass  # fail-closed and the storage is down: no headers
        except Exception as exc:  # the storage died since the check (headers, deduct_when)
            if not self._is_storage_error(exc):
                raise
            self._storage_failed(exc)
        if response.status_code != 429:
            # Flask-Limiter sets Retry-After on every response; it means something only
            # on a 429, and a 503's own value (an open breaker's) must stay as it was.
            if before is None:
                response.headers.remove(name)
            else:
                response.headers[name] = before
        else:
            sent = response.headers.get(name)
            if sent is not None and sent.isdigit() and int(sent) < 1:
                response.headers[name] = "1"  # under a second left: "0" would invite a retry now
        return response

    def _breached(self, exc: RateLimitExceeded) -> None:
        try:
            retry_after = self._breach_retry_after(exc)
            if exc.retry_after is None:
                exc.retry_after = retry_after
            if not exc.limit.error_message:
                exc.description = f"Rate limit exceeded: {exc.limit.limit}."
            rule = request.url_rule
            route = rule.rule if rule is not None else UNMATCHED_ROUTE
            self._state.recorder.rate_limit_exceeded(route)
            _log.info(
                "rate limit exceeded",
                extra={
                    "route": route,
                    "method": request.method,
                    "rate_limit": str(exc.limit.limit),
                    "retry_after": retry_after,
                },
            )
        except Exception:  # instrumentation never breaks a request
            _log.debug("reporting a rate limit breach failed", exc_info=True)

    def _breach_retry_after(self, exc: RateLimitExceeded) -> int:
        """Whole seconds until the breached limit's window resets (at least 1)."""
        limit = self.context.view_rate_limit
        if limit is not None:
            try:
                return max(1, math.ceil(limit.window.reset_time - time.time()))
            except StorageUnavailable:
                pass
            except Exception as error:
                if not self._is_storage_error(error):
                    raise
                self._storage_failed(error)
        return max(1, int(exc.limit.limit.get_expiry()))  # the whole window: an upper bound

    # --- views decorated before the app existed ------------------------------------------

    def _bind_views(self, app: Flask) -> None:
        with self._views_lock:
            for view in list(app.view_functions.values()):
                deferred = getattr(view, _DEFERRED_ATTR, None)
                if isinstance(deferred, _DeferredLimits):
                    self.bound_view(deferred)
            self._view_count = len(app.view_functions)

    def bound_view(self, deferred: _DeferredLimits) -> Callable[..., Any]:
        """The view wrapped by this limiter's own decorators for ``deferred``'s limits."""
        view = self._views.get(deferred)
        if view is None:
            with self._views_lock:
                view = self._views.get(deferred)
                if view is None:
                    view = deferred.original
                    for decoration in deferred.decorations:
                        view = decoration.apply(self)(view)
                    self._views[deferred] = view
        return view


def _storage_name(storage: Storage) -> str:
    connection = getattr(storage, "storage", None)
    pool = getattr(connection, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, dict) and "host" in kwargs:
        return f"redis://{kwargs['host']}:{kwargs.get('port', 6379)}"
    return type(storage).__name__


def _drop_duplicate_null_handlers(logger: logging.Logger) -> None:
    # Flask-Limiter adds a NullHandler to its logger per Limiter; one per app adds up.
    nulls = [h for h in logger.handlers if type(h) is logging.NullHandler]
    for handler in nulls[1:]:
        logger.removeHandler(handler)


# --- decorators usable before any app exists -------------------------------------------------


class _Decoration:
    """``limit(...)`` or ``shared_limit(...)`` as asked of the deferred limiter."""

    def __init__(
        self, owner: DeferredLimiter, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.owner = owner
        self.method = method
        self.args = args
        self.kwargs = kwargs

    def apply(self, limiter: Limiter) -> Any:
        """The same decorator, from a real limiter."""
        return getattr(limiter, self.method)(*self.args, **self.kwargs)

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, Blueprint):
            self.owner.eagerly(lambda limiter: self.apply(limiter)(obj))
            return None
        deferred = getattr(obj, _DEFERRED_ATTR, None)
        if isinstance(deferred, _DeferredLimits):
            # Stacked decorators: one wrapper, the limits applied innermost first.
            deferred.decorations.append(self)
            return obj
        deferred = _DeferredLimits(obj, [self])

        @functools.wraps(obj)
        def view(*args: Any, **kwargs: Any) -> Any:
            return deferred.call(args, kwargs)

        setattr(view, _DEFERRED_ATTR, deferred)
        return view


class _DeferredLimits:
    """A view function and the limits declared on it before any app existed."""

    def __init__(self, original: Callable[..., Any], decorations: list[_Decoration]) -> None:
        self.original = original
        self.decorations = decorations

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        limiter = getattr(current_app.extensions.get(_EXTENSION_KEY), "limiter", None)
        if isinstance(limiter, GatewayLimiter):
            return limiter.bound_view(self)(*args, **kwargs)
        return current_app.ensure_sync(self.original)(*args, **kwargs)


class DeferredLimiter:
    """``obs.limiter`` outside an app context: decorators for every app of one ``GatewayObs``.

    ``limit`` and ``shared_limit`` on a view wrap it once; each app builds the real
    Flask-Limiter decorators for it on its own limiter, so two apps count apart even
    when they share view functions. ``exempt``, ``request_filter`` and limits on a
    blueprint are applied to every app set up so far and to every later one.
    Any other attribute is the one app's limiter, when there is exactly one.
    """

    def __init__(self, obs: GatewayObs) -> None:
        self._obs = obs
        self._actions: list[Callable[[Limiter], object]] = []

    def _limiters(self) -> list[Limiter]:
        return [s.limiter for s in self._obs._states if s.limiter is not None]

    def eagerly(self, action: Callable[[Limiter], object]) -> None:
        """Run ``action`` on every app's limiter, now and on each app set up later."""
        self._actions.append(action)
        for limiter in self._limiters():
            action(limiter)

    def apply_to(self, limiter: Limiter) -> None:
        """Give a new app's limiter everything declared so far."""
        for action in self._actions:
            action(limiter)

    def limit(self, limit_value: str | Callable[[], str], **kwargs: Any) -> _Decoration:
        """Like :meth:`flask_limiter.Limiter.limit`, for a view or a blueprint."""
        return _Decoration(self, "limit", (limit_value,), kwargs)

    def shared_limit(
        self,
        limit_value: str | Callable[[], str],
        scope: str | Callable[[str], str],
        **kwargs: Any,
    ) -> _Decoration:
        """Like :meth:`flask_limiter.Limiter.shared_limit`, for a view or a blueprint."""
        return _Decoration(self, "shared_limit", (limit_value, scope), kwargs)

    def exempt(self, obj: Any = None, *, flags: ExemptionScope = _DEFAULT_EXEMPTION) -> Any:
        """Like :meth:`flask_limiter.Limiter.exempt`, on every app."""
        if obj is None:
            return functools.partial(self.exempt, flags=flags)
        self.eagerly(lambda limiter: limiter.exempt(obj, flags=flags))
        return obj

    def request_filter(self, fn: Callable[[], bool]) -> Callable[[], bool]:
        """Like :meth:`flask_limiter.Limiter.request_filter`, on every app."""
        self.eagerly(lambda limiter: limiter.request_filter(fn))
        return fn

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        limiters = self._limiters()
        if len(limiters) == 1:
            return getattr(limiters[0], name)
        raise AttributeError(
            f"obs.limiter.{name} needs an app: outside an app context only limit, "
            "shared_limit, exempt and request_filter work (use `with app.app_context():`)"
        )


def limiter_for(obs: GatewayObs) -> Limiter:
    """``obs.limiter``: the current app's limiter, else the deferred one."""
    if has_app_context():
        limiter = getattr(current_app.extensions.get(_EXTENSION_KEY), "limiter", None)
        if isinstance(limiter, Limiter):
            return limiter
    if obs._limiter_facade is None:
        obs._limiter_facade = DeferredLimiter(obs)
    # Offers the decorators of a Limiter (limit, shared_limit, exempt, request_filter).
    return cast(Limiter, obs._limiter_facade)


# --- set-up ---------------------------------------------------------------------------------


def storage_uri(config: Any, redis_url: str | None) -> str:
    """The limiter's storage: ``RATELIMIT_STORAGE_URI``, else the shared Redis, else memory."""
    configured = config.get("RATELIMIT_STORAGE_URI")
    if configured:
        return str(configured)
    if redis_url:
        return "redis+unix" + redis_url[4:] if redis_url.startswith("unix:") else redis_url
    return "memory://"


def init_app(app: Flask, state: ObsState, obs: GatewayObs) -> None:
    """Create the app's limiter (``state.limiter``) and install it."""
    settings = state.settings
    key_func = settings.ratelimit_key_func or client_address(settings.trusted_proxies)
    if not settings.ratelimit_enabled:
        # Inert: decorators still work, nothing is counted, no hook is installed.
        state.limiter = Limiter(key_func, enabled=False)
        _drop_duplicate_null_handlers(state.limiter.logger)
        return
    config = app.config
    uri = storage_uri(config, settings.redis_url)
    options: dict[str, Any] = {"wrap_exceptions": True}
    shared = urlsplit(uri).scheme != "memory"
    if urlsplit(uri).scheme in _REDIS_SCHEMES:
        options["socket_connect_timeout"] = settings.ratelimit_storage_timeout
        options["socket_timeout"] = settings.ratelimit_storage_timeout
    limiter = GatewayLimiter(
        state,
        key_func,
        # Given explicitly so that Flask-Limiter does not warn about a default it
        # did not choose; RATELIMIT_STORAGE_URI, when set, is what this is.
        storage_uri=uri,
        storage_options=options,
        # Our defaults; the RATELIMIT_* key wins when the app sets it.
        headers_enabled=None if "RATELIMIT_HEADERS_ENABLED" in config else True,
        key_prefix="" if "RATELIMIT_KEY_PREFIX" in config or not shared else state.service,
    )
    state.limiter = limiter
    if obs._limiter_facade is not None:
        obs._limiter_facade.apply_to(limiter)
    limiter.setup(app)
