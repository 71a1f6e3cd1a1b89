"""Rate limiting: Flask-Limiter, wired to the extension's errors, logs, metrics and failure policy.

Each app gets its own :class:`GatewayLimiter` (a :class:`flask_limiter.Limiter`), kept
at ``state.limiter``, so two apps never share counters or settings by accident.
``obs.limiter`` is that app's limiter inside an app context; outside one (at import
time, in a module of blueprints) it is a :class:`DeferredLimiter`. Either way ``limit``
and ``shared_limit`` return decorators that find the limiter of the app serving the view
when it is called, and limits and exemptions of a blueprint reach only the apps it is
registered on.

What the extension adds to Flask-Limiter, whose ``RATELIMIT_*`` keys keep their meaning:

- storage: ``RATELIMIT_STORAGE_URI``, else ``GATEWAY_OBS_REDIS_URL``, else memory, with
  short socket timeouts on Redis;
- a storage failure never becomes a 500: requests are served on per-process in-memory
  counters (or refused with a 503 when fail-closed) and the storage is probed again
  with back-off instead of being tried on every request;
- a breach is a problem+json 429 with ``Retry-After``, counted and logged;
- the extension's own endpoints (health, metrics) are never limited;
- the client is the socket address unless proxies are declared trusted;
- speed: the limits of an endpoint are resolved once, not on every request, and
  counted straight on the storage with Flask-Limiter's own keys (see :class:`GatewayLimiter`).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Request, Response, current_app, has_app_context, request
from flask.globals import _cv_app, _cv_request
from flask_limiter import (
    ApplicationLimit,
    ExemptionScope,
    HeaderNames,
    Limit,
    Limiter,
    RateLimitExceeded,
    RequestLimit,
    RouteLimit,
)
from flask_limiter._extension import LimiterContext
from flask_limiter._limits import RuntimeLimit
from flask_limiter._manager import LimitManager
from flask_limiter.util import get_qualified_name
from limits import RateLimitItem, WindowStats
from limits.errors import StorageError
from limits.limits import safe_string
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import FixedWindowRateLimiter, RateLimiter

from .errors import ServiceUnavailableError
from .labels import UNMATCHED_ROUTE
from .logs import LOGGER_NAME, mask_url_credentials

if TYPE_CHECKING:
    from flask.sansio.app import App
    from flask.sansio.blueprints import BlueprintSetupState

    from .core.state import Extension, ObsState

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
#: A storage that fails again within this many seconds of its return is flapping: the
#: back-off goes on from where it was and the in-memory counts of the outage are kept.
FLAP_WINDOW = 60.0

_EXTENSION_KEY = "gateway_obs"  # extension.EXTENSION_KEY, without importing it at import time
_DEFERRED_ATTR = "_gateway_obs_deferred_limits"
_EXEMPT_ATTR = "_gateway_obs_exempt"  # exemption flags of a view function, for every app
_BLUEPRINT_ATTR = "_gateway_obs_rate_limits"  # what a blueprint asks of each app's limiter
_SENTINEL_SCHEMES = frozenset({"redis+sentinel", "valkey+sentinel"})
#: Flask-Limiter's breach line, which carries the client key (an address, an API token).
_KEYED_BREACH_LINE = "ratelimit %s (%s) exceeded at endpoint: %s"
_BREACH_LINE = "ratelimit %s exceeded at endpoint: %s"
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
            address: str = _environ().get("REMOTE_ADDR") or "127.0.0.1"
            return address

        return socket_address

    def forwarded_address() -> str:
        environ = _environ()
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


def _environ() -> dict[str, Any]:
    # The request's environ without going through the ``request`` proxy (key functions
    # run on every limited request).
    ctx = _cv_request.get(None)
    environ: dict[str, Any] = ctx.request.environ if ctx is not None else request.environ
    return environ


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


# --- the fast path ---------------------------------------------------------------------------
#
# Flask-Limiter works out, on every request, which limits apply to it (limit manager,
# exemption scopes, ordered sets, the limit strings parsed again), builds an object per
# limit and reads each window back from the storage for the headers. For a given
# endpoint and method the answer is the same every time as long as the limits are
# static, so the limiter resolves it once into a plan (the limits in Flask-Limiter's
# order, with their scopes and storage keys worked out) and per request only calls the
# key functions and hits the storage. Anything that can change per request or that
# runs user code (callable limits, exempt_when, deduct_when, callable costs or scopes,
# meta limits, on_breach, custom request identifiers, Flask-Limiter's own fallback) keeps
# Flask-Limiter's own path for the endpoint. The plans are dropped whenever a limit,
# exemption or route is added.

#: How a fast step counts: on the storage itself (fixed window, in memory or in Redis),
#: or through the strategy (any other strategy or storage).
_MEMORY, _REDIS, _STRATEGY = "memory", "redis", "strategy"

#: limits' ``incr_expire.lua``, the fixed window's hit on Redis, as limits 5.8 ships it.
_INCR_EXPIRE = b"""
local current
local amount = tonumber(ARGV[2])
current = redis.call("incrby", KEYS[1], amount)

if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end

return current
"""
#: The same hit, also returning the key's TTL: a hit and the window for the headers in
#: one round trip. Used only while limits ships the script above unchanged.
_INCR_EXPIRE_TTL = b"""
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("ttl", KEYS[1])}
"""

#: A client key no key function returns, to check a plan's keys against limits' own.
_PROBE_KEY = "\x00probe"
#: Plans kept per endpoint, one per method.
_MAX_METHODS = 16

#: (client key, count after the hit, window reset timestamp); count is None when the
#: strategy counted (its window is read back for the headers, as Flask-Limiter does).
_Hit = tuple[str, int | None, float]


class _Unplannable(Exception):
    """A step that Flask-Limiter's own path must run."""


class _Rule:
    """One limit of a plan: everything about it that is the same on every request."""

    __slots__ = (
        "amount",
        "amount_text",
        "cost",
        "expiry",
        "head",
        "item",
        "key_func",
        "limit",
        "prefix",
        "scope",
        "shared",
        "tail",
    )

    def __init__(self, limit: RuntimeLimit, scope: str, key_prefix: str, storage_prefix: str):
        item = limit.limit
        self.limit = limit
        self.item = item
        self.amount = item.amount
        self.amount_text = str(item.amount)
        self.expiry = item.get_expiry()
        self.cost = int(limit.deduction_amount)
        self.key_func = limit.key_func
        self.scope = scope
        self.prefix = key_prefix
        self.shared = limit.shared
        # limits' item.key_for(*args) is "namespace/" + "/".join(args + [amount, multiples,
        # granularity]); Flask-Limiter's args are [key_prefix,] client key, scope.
        middle = f"{key_prefix}/" if key_prefix else ""
        self.head = f"{storage_prefix}{item.namespace}/{middle}"
        self.tail = f"/{scope}/{item.amount}/{item.multiples}/{item.GRANULARITY.name}"

    def args(self, client: str) -> list[str]:
        """The identifiers Flask-Limiter hits this limit with (``RequestLimit.request_args``)."""
        return [self.prefix, client, self.scope] if self.prefix else [client, self.scope]

    def key(self, client: str) -> str:
        """The storage key of ``client``'s window (what the storage itself is called with)."""
        return f"{self.head}{client}{self.tail}"


class _Variant:
    """The limits one step evaluates, given what earlier steps of the request marked seen."""

    __slots__ = ("header", "rules", "seen")

    def __init__(self, rules: tuple[_Rule, ...], seen: tuple[RuntimeLimit, ...]) -> None:
        self.rules = rules
        #: Flask-Limiter's ``seen_limits`` after the step (defaults are counted once a request).
        self.seen = seen
        #: Which limit the headers describe when none is breached: the first not shared.
        self.header = next((i for i, rule in enumerate(rules) if not rule.shared), 0)


_NOTHING: tuple[RuntimeLimit, ...] = ()


class _Plan:
    """One step of the check (the before-request gate, or a decorated view) for one
    endpoint and method, resolved once."""

    __slots__ = ("after_gate", "alone", "exempt", "gate_seen", "name", "slow")

    def __init__(
        self,
        *,
        slow: bool = False,
        exempt: bool = False,
        name: str = "",
        alone: _Variant | None = None,
        gate_seen: tuple[RuntimeLimit, ...] | None = None,
        after_gate: _Variant | None = None,
    ) -> None:
        #: Flask-Limiter's own path runs this step.
        self.slow = slow
        #: Nothing is limited (no endpoint, or a static file).
        self.exempt = exempt
        #: The qualified name of the view (a decorated step runs for it alone).
        self.name = name
        #: The step when nothing was seen before it in the request.
        self.alone = alone or _Variant((), _NOTHING)
        #: What the gate of the same endpoint and method marks seen, and the step after it.
        self.gate_seen = gate_seen
        self.after_gate = after_gate


_SLOW_PLAN = _Plan(slow=True)
_EXEMPT_PLAN = _Plan(exempt=True)


class _Checked:
    """What a fast step did in this request: enough for the headers, or for handing
    Flask-Limiter its own per-request state (``current_limit``) if anything asks for it."""

    __slots__ = ("breached", "header", "hits", "rules", "seen")

    def __init__(
        self,
        seen: tuple[RuntimeLimit, ...],
        rules: tuple[_Rule, ...],
        hits: list[_Hit | None],
        header: int,
        breached: tuple[int, ...],
    ) -> None:
        self.seen = seen
        self.rules = rules
        #: One entry per rule evaluated, None for a rule skipped (an empty client key).
        self.hits = hits
        #: Index of the rule the headers describe, -1 for none.
        self.header = header
        self.breached = breached


class _TrackedLimitManager(LimitManager):
    """Flask-Limiter's limit manager, telling the limiter whenever its limits change."""

    def __init__(self, source: LimitManager, changed: Callable[[], None]) -> None:
        super().__init__(
            application_limits=source._application_limits,
            default_limits=source._default_limits,
            decorated_limits=source._decorated_limits,
            blueprint_limits=source._blueprint_limits,
            route_exemptions=source._route_exemptions,
            blueprint_exemptions=source._blueprint_exemptions,
        )
        self._endpoint_hints = source._endpoint_hints
        self._changed = changed

    def set_application_limits(self, limits: list[ApplicationLimit]) -> None:
        super().set_application_limits(limits)
        self._changed()

    def set_default_limits(self, limits: list[Limit]) -> None:
        super().set_default_limits(limits)
        self._changed()

    def add_decorated_limit(self, route: str, limit: Limit | None, override: bool = False) -> None:
        current = self._decorated_limits.get(route)
        # limit(...) used as a context manager sets the same limit again on every call.
        same = limit is None or (
            current is not None and (list(current) == [limit] if override else limit in current)
        )
        super().add_decorated_limit(route, limit, override)
        if not same:
            self._changed()

    def add_blueprint_limit(self, blueprint: str, limit: Limit | None) -> None:
        current = self._blueprint_limits.get(blueprint)
        super().add_blueprint_limit(blueprint, limit)
        if limit is not None and (current is None or limit not in current):
            self._changed()

    def add_route_exemption(self, route: str, scope: ExemptionScope) -> None:
        changed = self._route_exemptions.get(route) != scope
        super().add_route_exemption(route, scope)
        if changed:
            self._changed()

    def add_blueprint_exemption(self, blueprint: str, scope: ExemptionScope) -> None:
        changed = self._blueprint_exemptions.get(blueprint) != scope
        super().add_blueprint_exemption(blueprint, scope)
        if changed:
            self._changed()

    def add_endpoint_hint(self, endpoint: str, callable: str) -> None:
        known = callable in self._endpoint_hints.get(endpoint, ())
        super().add_endpoint_hint(endpoint, callable)
        if not known:
            self._changed()


# --- the per-app limiter -------------------------------------------------------------------


class _DeferredDecorators:
    """``limit`` and ``shared_limit`` that find the serving app's limiter at call time, so a
    decorated view counts in whichever app serves it (and never keeps a dead app alive)."""

    _obs: Extension | None

    def limit(self, limit_value: str | Callable[[], str], **kwargs: Any) -> _Decoration:
        """Like :meth:`flask_limiter.Limiter.limit`, for a view, a blueprint or a block."""
        return _Decoration(self._obs, "limit", (limit_value,), kwargs)

    def shared_limit(
        self,
        limit_value: str | Callable[[], str],
        scope: str | Callable[[str], str],
        **kwargs: Any,
    ) -> _Decoration:
        """Like :meth:`flask_limiter.Limiter.shared_limit`, for a view, a blueprint or a block."""
        return _Decoration(self._obs, "shared_limit", (limit_value, scope), kwargs)


class GatewayLimiter(_DeferredDecorators, Limiter):  # type: ignore[misc]
    """The app's :class:`flask_limiter.Limiter`, with the extension's failure policy.

    Created by the extension's ``init_app``; reach it as ``obs.limiter`` inside an app
    context. Everything Flask-Limiter offers works as documented (``limit``,
    ``shared_limit``, ``exempt``, ``request_filter``, ``current_limit``, ``reset``).

    When a call to the storage fails, the storage is marked down: requests are then
    limited on per-process in-memory counters (fail open) or refused with a 503
    (``fail_closed``), and the storage is not touched again until a probe, first
    after :data:`FIRST_PROBE_DELAY` seconds, then after waits doubling up to
    ``max_probe_interval``. A successful probe makes the limits shared again.

    Static limits take a fast path: which limits apply to an endpoint and method is
    worked out once (as Flask-Limiter does it) and kept until a limit, exemption or
    route is added; each request then calls the key functions and hits the storage
    with the same keys, costs and order as Flask-Limiter. On a fixed window the
    headers come from the hit itself (on Redis one round trip per limit, where
    Flask-Limiter makes three). Limits that run app code per request (callable
    limits, ``exempt_when``, ``deduct_when``, callable ``cost`` or ``scope``,
    ``on_breach``, meta limits) and Flask-Limiter's own fallback, ``swallow_errors``
    and request identifiers keep Flask-Limiter's path.

    ``limit`` and ``shared_limit`` return the extension's decorators, which find the
    limiter of the app serving the request when the view is called (a view can be
    served by several apps, and a limiter never outlives its app's use of it); used as a
    context manager, they limit a block inside a view, as Flask-Limiter documents it.

    :param state: the app's extension state (settings, recorder, internal paths).
    :param key_func: the default key function (who a limit counts).
    :param obs: the extension object that set the app up (its other apps share blueprints).
    :param options: keyword arguments for :class:`flask_limiter.Limiter`.
    """

    def __init__(
        self, state: ObsState, key_func: KeyFunc, *, obs: Extension | None = None, **options: Any
    ) -> None:
        self._obs = obs
        # The fast path's plans, per endpoint and method, dropped when the limits change.
        self._plans_lock = threading.Lock()
        self._generation = 0
        self._gate_plans: dict[str, dict[str, _Plan]] = {}
        self._view_plans: dict[str, dict[str, _Plan]] = {}
        self._fast_mode: str | None = None  # None until set up: Flask-Limiter's path only
        self._incr_expire_ttl: Any = None
        self._identity: Callable[..., str] | None = None
        self._record_attr = f"_gateway_obs_rate_limit_{id(self):x}"
        self._headers_on = False
        self._limit_header = self._remaining_header = self._reset_header = ""
        super().__init__(key_func, **options)
        self.limit_manager = _TrackedLimitManager(self.limit_manager, self._limits_changed)
        _drop_duplicate_null_handlers(self.logger)
        _drop_client_keys(self.logger)
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
        self._flap_until = -math.inf  # until then a new failure continues the last outage
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
        own_identity = "RATELIMIT_REQUEST_IDENTIFIER" not in app.config
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
        self._set_up_fast_path(storage, own_identity)
        self._adopt_hooks(app)

    def _set_up_fast_path(self, storage: Storage, own_identity: bool) -> None:
        mapping = self._header_mapping
        self._limit_header = mapping[HeaderNames.LIMIT]
        self._remaining_header = mapping[HeaderNames.REMAINING]
        self._reset_header = mapping[HeaderNames.RESET]
        self._headers_on = bool(self._headers_enabled and mapping)
        # Flask-Limiter's default identity is the endpoint; another one keeps its path.
        self._identity = self._request_identifier if own_identity else None
        if type(storage) is MemoryStorage:
            _throttle_sweeps(storage)
        mode = _STRATEGY
        if self._strategy_class is FixedWindowRateLimiter:
            if type(storage) is MemoryStorage:
                mode = _MEMORY
            elif type(storage) is RedisStorage and _same_script(
                storage.SCRIPT_INCR_EXPIRE, _INCR_EXPIRE
            ):
                # Registering a script does not connect.
                self._incr_expire_ttl = storage.get_connection().register_script(_INCR_EXPIRE_TTL)
                mode = _REDIS
        self._fast_mode = mode
        self._limits_changed()

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
                    self._fallback = strategy(_throttle_sweeps(MemoryStorage()))
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
                if now < self._flap_until:
                    # Back soon after it returned: the same trouble. Waiting as after a
                    # failed probe, and counting on from the outage's in-memory counts,
                    # keeps a flapping storage from resetting the limits at every return.
                    self._probe_delay = min(self._probe_delay * 2, self.max_probe_interval)
                else:
                    self._probe_delay = FIRST_PROBE_DELAY
                    self._fallback = None  # a new outage counts from zero
                self._next_probe = now + min(self._probe_delay, self.max_probe_interval)
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
                healthy = self._probe_storage()
            except Exception as exc:
                healthy, error = False, exc
            if healthy:
                self._recovered()
            else:
                self._storage_failed(error, probe=True)
        finally:
            self._probe_lock.release()

    def _probe_storage(self) -> bool:
        """Whether the storage takes a write: answering (a ``PING``) is not enough, a
        read-only replica, a Redis out of memory or an ACL that refuses writes answers
        and fails every hit."""
        prefix = f"{self._key_prefix}/" if self._key_prefix else ""
        # limits' own increment (on Redis, its script), on a key no client has, for a second.
        self.storage.incr(f"LIMITER/{prefix}gateway-obs-storage-probe", 1)
        return True

    def _recovered(self) -> None:
        now = self.clock()
        with self._lock:
            self._down = False
            # The outage's in-memory counts (and the back-off) are kept for FLAP_WINDOW,
            # in case the storage fails again; then dropped (_forget_outage).
            self._flap_until = now + FLAP_WINDOW
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

    def _forget_outage(self) -> None:
        if self.clock() >= self._flap_until:
            self._fallback = None

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
        if not self.enabled:  # Flask-Limiter's switch, which an app may flip at run time
            return
        ctx = _cv_request.get(None)
        if ctx is None:  # outside a request: Flask-Limiter's own path says what that means
            super()._check_request_limit(callable_name, in_middleware)
            return
        req = ctx.request
        if in_middleware:
            if not self._middleware_has_limits():
                return
            if req.path in self._internal_paths:
                return
            app = ctx.app
            if len(app.view_functions) != self._view_count:
                self._bind_views(app)
        if self._down:
            self._maybe_probe()
        elif self._fallback is not None:
            self._forget_outage()
        try:
            if self._down or not self._fast_check(ctx, req, callable_name, in_middleware):
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
        ctx = _cv_request.get(None)
        if ctx is None or not self.enabled:
            return response
        state = ctx.__dict__
        record: _Checked | None = state.get(self._record_attr)
        if record is not None:
            if response.status_code != 429:
                if record.header >= 0 and self._headers_on:
                    self._add_headers(response, record)
                return response
            self._own_context()  # a 429 takes Flask-Limiter's header step, from the same counts
        contexts = state.get(_CONTEXT_ATTR)
        if self._inject_headers is None or contexts is None or self not in contexts:
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

    # --- the fast path (see the comment above _Rule) -------------------------------------

    def _limits_changed(self) -> None:
        """Drop the plans: a limit, an exemption or a route was added."""
        with self._plans_lock:
            self._generation += 1
            self._gate_plans = {}
            self._view_plans = {}

    def _fast_check(
        self, ctx: Any, req: Request, callable_name: str | None, in_middleware: bool
    ) -> bool:
        """One step of Flask-Limiter's check, from the endpoint's plan.

        Counts exactly as Flask-Limiter would: the same limits in the same order, the
        same storage keys and costs, the same log lines, the same exception on a breach.
        What it did stays on the request for the headers. Returns False, having touched
        nothing, when this step needs Flask-Limiter's own path.
        """
        state = ctx.__dict__
        contexts = state.get(_CONTEXT_ATTR)
        if contexts is not None and self in contexts:
            return False  # Flask-Limiter's own state is in use for this request: stay on it
        endpoint: str | None = req.endpoint
        method = req.method
        plan: _Plan | None
        if not endpoint:  # no route matched: Flask-Limiter limits nothing (meta limits aside)
            plan = _EXEMPT_PLAN if self._plannable() else _SLOW_PLAN
        else:
            plans = self._gate_plans if in_middleware else self._view_plans
            by_method = plans.get(endpoint)
            plan = by_method.get(method) if by_method is not None else None
            if plan is None:
                plan = self._new_plan(ctx.app, req, endpoint, method, in_middleware)
        if plan.slow:
            return False
        previous: _Checked | None = state.get(self._record_attr)
        seen = previous.seen if previous is not None else _NOTHING
        if not plan.exempt:
            if not in_middleware and callable_name != plan.name:
                return False  # limit(...) as a context manager, or a decorated helper
            filters = self._request_filters
            if not (filters and any(exempt() for exempt in filters)):
                if not seen:
                    variant = plan.alone
                elif seen is plan.gate_seen and plan.after_gate is not None:
                    variant = plan.after_gate
                else:
                    return False
                if variant.rules:
                    self._hit(state, variant)
                    return True
                seen = variant.seen
        # Nothing to count: Flask-Limiter would forget any earlier step's header limit.
        if previous is not None or seen:
            state[self._record_attr] = _Checked(seen, (), [], -1, ())
        return True

    def _hit(self, state: dict[str, Any], variant: _Variant) -> None:
        """Count the request in each limit of ``variant``, as Flask-Limiter's evaluation does."""
        rules = variant.rules
        mode = self._fast_mode
        storage = cast(Storage, self._storage)
        strategy = self.limiter if mode is _STRATEGY else None
        hits: list[_Hit | None] = []
        failed: list[int] = []
        skipped = False
        for index, rule in enumerate(rules):
            raw = rule.key_func()
            if not raw:
                self.logger.error(f"Skipping limit: {rule.item}. Empty value found in parameters.")
                hits.append(None)
                skipped = True
                continue
            client = raw if type(raw) is str else safe_string(raw)
            count: int | None
            if mode is _MEMORY:
                key = f"{rule.head}{client}{rule.tail}"
                count = storage.incr(key, rule.expiry, amount=rule.cost)
                reset = cast(MemoryStorage, storage).expirations.get(key) or time.time()
                allowed = count <= rule.amount
            elif mode is _REDIS:
                reply = self._incr_expire_ttl(
                    keys=[f"{rule.head}{client}{rule.tail}"], args=[rule.expiry, rule.cost]
                )
                count = int(reply[0])
                reset = max(int(reply[1]), 0) + time.time()
                allowed = count <= rule.amount
            else:
                assert strategy is not None
                allowed = strategy.hit(rule.item, *rule.args(client), cost=rule.cost)
                count, reset = None, 0.0
            hits.append((client, count, reset))
            if not allowed:
                # Flask-Limiter's line, without the client key (see _DropClientKey).
                self.logger.info(_BREACH_LINE, rule.item, rule.scope)
                failed.append(index)
                if self._fail_on_first_breach:
                    break
        if failed:
            header = failed[-1]
        elif not skipped:
            header = variant.header
        else:
            counted = [i for i, hit in enumerate(hits) if hit is not None]
            explicit = [i for i in counted if not rules[i].shared]
            header = explicit[0] if explicit else counted[0] if counted else -1
        state[self._record_attr] = _Checked(variant.seen, rules, hits, header, tuple(failed))
        if failed:
            # Rules are in Flask-Limiter's order (shortest window first): the first failed
            # is the one it reports.
            raise RateLimitExceeded(rules[failed[0]].limit)

    def _new_plan(
        self, app: Flask, req: Request, endpoint: str, method: str, in_middleware: bool
    ) -> _Plan:
        generation = self._generation
        try:
            plan = self._resolve_plan(app, req, endpoint, method, in_middleware)
        except _Unplannable:
            plan = _SLOW_PLAN
        except Exception:  # whatever it is, Flask-Limiter's own path meets it as it would
            _log.debug("rate limits of %s not cached", endpoint, exc_info=True)
            plan = _SLOW_PLAN
        with self._plans_lock:
            if generation == self._generation:
                plans = self._gate_plans if in_middleware else self._view_plans
                by_method = plans.setdefault(endpoint, {})
                # A route answers a few methods; this bounds the cache whatever clients send.
                if len(by_method) < _MAX_METHODS:
                    by_method[method] = plan
        return plan

    def _plannable(self) -> bool:
        """Whether the limiter's settings allow plans at all."""
        return not (
            self._fast_mode is None
            or self._identity is None
            or self._request_identifier is not self._identity
            or self._in_memory_fallback_enabled
            or self._storage_dead
            or self._swallow_errors
            or self._meta_limits
            or self._on_breach
            or self._on_meta_breach
        )

    def _resolve_plan(
        self, app: Flask, req: Request, endpoint: str, method: str, in_middleware: bool
    ) -> _Plan:
        if not self._plannable():
            return _SLOW_PLAN
        if endpoint.split(".")[-1] == "static":
            return _EXEMPT_PLAN
        view_func = app.view_functions.get(endpoint)
        name = get_qualified_name(view_func) if view_func else ""
        manager = self.limit_manager
        if manager.has_hints(endpoint):
            return _SLOW_PLAN  # limits met inside views: Flask-Limiter tracks those itself
        groups: list[Limit] = [
            *manager._application_limits,
            *manager._default_limits,
            *manager._decorated_limits.get(name, ()),
            *(group for groups in manager._blueprint_limits.values() for group in groups),
        ]
        for group in groups:
            if callable(group.limit_provider) or _runs_user_code(group):
                return _SLOW_PLAN
            list(group)  # a bad limit string raises ValueError: Flask-Limiter logs it per request
        defaults, decorated = manager.resolve_limits(
            app, endpoint, req.blueprint, name, in_middleware, name in self._marked_for_limiting
        )
        if any(_runs_user_code(limit) for limit in (*defaults, *decorated)):
            return _SLOW_PLAN
        alone = self._variant(defaults, decorated, _NOTHING, endpoint, method)
        gate_seen = after_gate = None
        if not in_middleware:
            gate = self._gate_plans.get(endpoint, {}).get(method)
            if gate is not None and not gate.slow and gate.alone.seen:
                gate_seen = gate.alone.seen
                after_gate = self._variant(defaults, decorated, gate_seen, endpoint, method)
        return _Plan(name=name, alone=alone, gate_seen=gate_seen, after_gate=after_gate)

    def _variant(
        self,
        defaults: list[RuntimeLimit],
        decorated: list[RuntimeLimit],
        seen: tuple[RuntimeLimit, ...],
        endpoint: str,
        method: str,
    ) -> _Variant:
        # As Flask-Limiter's __filter_limits and __evaluate_limits do it (its ordered sets
        # are dicts here: insertion order, equal limits once).
        fresh = [limit for limit in dict.fromkeys(defaults) if limit not in seen]
        ordered = sorted([*fresh, *decorated], key=lambda limit: limit.limit)
        mode = self._fast_mode
        redis = cast(RedisStorage, self.storage) if mode is _REDIS else None
        storage_prefix = redis.prefixed_key("") if redis is not None else ""
        rules: list[_Rule] = []
        for limit in ordered:
            if limit.method_exempt:
                continue
            scope = limit.scope_for(endpoint, method)
            if not scope:
                raise _Unplannable  # Flask-Limiter skips it with an error, per request
            rule = _Rule(limit, scope, self._key_prefix, storage_prefix)
            if mode is not _STRATEGY:
                # The keys must be limits' own, so that counts stay shared with every other
                # client of the storage (raw Flask-Limiter, other versions of this one).
                expected = limit.limit.key_for(*rule.args(_PROBE_KEY))
                if redis is not None:
                    expected = redis.prefixed_key(expected)
                if rule.key(_PROBE_KEY) != expected:
                    raise _Unplannable
            rules.append(rule)
        return _Variant(tuple(rules), tuple(dict.fromkeys([*seen, *defaults])))

    @property
    def context(self) -> LimiterContext:
        """Flask-Limiter's per-request state, made from the fast path's record when asked for.

        :meta private:
        """
        return self._own_context()

    def _own_context(self) -> LimiterContext:
        context: LimiterContext = Limiter.context.fget(self)  # type: ignore[attr-defined]
        ctx = _cv_request.get(None)
        record = ctx.__dict__.pop(self._record_attr, None) if ctx is not None else None
        if record is not None:
            context.seen_limits.update(record.seen)
            limits: list[RequestLimit] = []
            chosen = None
            for index, hit in enumerate(record.hits):
                if hit is None:
                    continue
                rule = record.rules[index]
                client, count, reset = hit
                limit = RequestLimit(
                    self, rule.item, rule.args(client), index in record.breached, rule.shared
                )
                if count is not None:
                    # The window as the hit left it (what Flask-Limiter would read back now).
                    limit._window = WindowStats(reset, max(0, rule.amount - count))
                limits.append(limit)
                if index == record.header:
                    chosen = limit
            context.view_rate_limits = limits
            context.view_rate_limit = chosen
        return context

    def _add_headers(self, response: Response, record: _Checked) -> None:
        index = record.header
        rule = record.rules[index]
        hit = record.hits[index]
        assert hit is not None
        client, count, reset = hit
        if count is None:  # the strategy counted: read its window back, as Flask-Limiter does
            try:
                reset, remaining = self.limiter.get_window_stats(rule.item, *rule.args(client))
            except StorageUnavailable:
                return
            except Exception as exc:
                if not self._is_storage_error(exc):
                    raise
                self._storage_failed(exc)
                return
        else:
            remaining = rule.amount - count
            if remaining < 0:
                remaining = 0
        headers = response.headers
        headers.add(self._limit_header, rule.amount_text)
        headers.add(self._remaining_header, str(remaining))
        headers.add(self._reset_header, str(int(reset + 1)))

    # --- decorators: the app is found when the view is called ----------------------------

    def _bind_views(self, app: Flask) -> None:
        with self._views_lock:
            for view in list(app.view_functions.values()):
                deferred = getattr(view, _DEFERRED_ATTR, None)
                if isinstance(deferred, _DeferredLimits):
                    self.bound_view(deferred)
                flags = getattr(view, _EXEMPT_ATTR, None)
                if isinstance(flags, ExemptionScope):
                    Limiter.exempt(self, view, flags=flags)
            self._view_count = len(app.view_functions)
        self._limits_changed()  # routes came or went

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


def _runs_user_code(limit: Limit | RuntimeLimit) -> bool:
    """Whether a limit calls back into the app per request (Flask-Limiter's path runs it)."""
    return bool(
        limit.exempt_when
        or limit.deduct_when
        or limit.on_breach
        or limit.meta_limits
        or callable(limit.cost)
        or callable(limit.scope)
    )


#: Seconds between two sweeps of expired windows out of an in-memory storage.
SWEEP_INTERVAL = 1.0
_SCHEDULE_SWEEP = "_MemoryStorage__schedule_expiry"  # limits' MemoryStorage, name-mangled


def _throttle_sweeps(storage: MemoryStorage) -> MemoryStorage:
    """Let ``storage`` start its sweeper thread at most once per :data:`SWEEP_INTERVAL`.

    limits' memory storage sweeps expired windows in a one-shot 10 ms timer thread that
    every hit restarts when it has finished: under load about a hundred thread starts a
    second, each stalling the request that makes it until the OS runs the new thread
    (milliseconds on a busy machine). Counting does not depend on the sweep (a window
    past its expiry is dropped when next read), only memory does: expired windows of
    clients that do not come back now stay up to a second longer.
    """
    schedule = getattr(storage, _SCHEDULE_SWEEP, None)
    if schedule is None:  # another limits: leave it as it is
        return storage
    next_sweep = 0.0

    def throttled() -> None:
        nonlocal next_sweep
        now = time.monotonic()
        if now >= next_sweep:
            next_sweep = now + SWEEP_INTERVAL
            schedule()

    # On this instance only (the app's own storage): the class is left alone.
    setattr(storage, _SCHEDULE_SWEEP, throttled)
    return storage


def _same_script(shipped: bytes, known: bytes) -> bool:
    return shipped.split() == known.split()


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


class _DropClientKey(logging.Filter):
    """Takes the client key out of Flask-Limiter's breach line before any handler sees it.

    The key is whatever the key function returns: an address, often an API token or a
    user ID, which must not end up in logs on every breach. The line keeps the limit and
    the endpoint; the extension's own breach record carries the route and request ID.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == _KEYED_BREACH_LINE and isinstance(args, tuple) and len(args) == 3:
            record.msg = _BREACH_LINE
            record.args = (args[0], args[2])
        return True


def _drop_client_keys(logger: logging.Logger) -> None:
    """Install :class:`_DropClientKey` on Flask-Limiter's logger, once."""
    if not any(isinstance(f, _DropClientKey) for f in logger.filters):
        logger.addFilter(_DropClientKey())


# --- decorators that find the app's limiter when they are used --------------------------------


_NO_VIEWS: dict[Any, Any] = {}


def _limiter_of(app: App) -> Limiter | None:
    limiter = getattr(app.extensions.get(_EXTENSION_KEY), "limiter", None)
    return limiter if isinstance(limiter, Limiter) else None


class _Decoration:
    """``limit(...)`` or ``shared_limit(...)``: a decorator for views and blueprints, and a
    context manager inside a view, that finds the app's limiter when it is needed.

    On a view: one wrapper, which each app serving the view binds to its own limiter at
    the first call (:meth:`GatewayLimiter.bound_view`). On a blueprint: a limit of every
    app the blueprint is registered on, and of no other. In a ``with`` block: Flask-Limiter's
    context manager on the limiter of the app serving the request.
    """

    def __init__(
        self,
        obs: Extension | None,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.obs = obs
        self.method = method
        self.args = args
        self.kwargs = kwargs

    def apply(self, limiter: Limiter) -> RouteLimit:
        """The same decorator, from ``limiter`` (Flask-Limiter's own)."""
        route_limit: RouteLimit = getattr(Limiter, self.method)(limiter, *self.args, **self.kwargs)
        return route_limit

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, Blueprint):
            _for_blueprint(obj, lambda limiter: self.apply(limiter)(obj), self.obs)
            return None
        deferred = getattr(obj, _DEFERRED_ATTR, None)
        if isinstance(deferred, _DeferredLimits):
            # Stacked decorators: one wrapper, the limits applied innermost first.
            deferred.decorations.append(self)
            return obj
        deferred = _DeferredLimits(obj, [self])

        @functools.wraps(obj)
        def view(*args: Any, **kwargs: Any) -> Any:
            ctx = _cv_app.get(None)
            if ctx is not None:  # the common case first: bound to this app's limiter already
                limiter = getattr(ctx.app.extensions.get(_EXTENSION_KEY), "limiter", None)
                bound = getattr(limiter, "_views", _NO_VIEWS).get(deferred)
                if bound is not None:
                    return bound(*args, **kwargs)
            return deferred.call(args, kwargs)

        setattr(view, _DEFERRED_ATTR, deferred)
        return view

    def __enter__(self) -> None:
        # Flask-Limiter's RouteLimit.__enter__, on the limiter of the app serving the
        # request, naming the block after the ``with`` line (the caller), not this frame.
        limiter = _limiter_of(current_app)
        if limiter is None or not (limiter.enabled and limiter.initialized):
            return
        caller = traceback.extract_stack(limit=2)[0]
        location = f"{caller.filename}:{caller.name}:{caller.lineno}"
        manager = limiter.limit_manager
        manager.add_decorated_limit(location, self.apply(limiter), override=True)
        manager.add_endpoint_hint(limiter.identify_request(), location)
        limiter._check_request_limit(in_middleware=False, callable_name=location)

    def __exit__(self, *exc_info: object) -> None:
        return None


class _DeferredLimits:
    """A view function and the limits declared on it, for whichever app serves it."""

    def __init__(self, original: Callable[..., Any], decorations: list[_Decoration]) -> None:
        self.original = original
        self.decorations = decorations

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the view as the current app's limiter decorates it (binding it if new)."""
        ctx = _cv_app.get(None)
        app = ctx.app if ctx is not None else current_app  # (outside an app: Flask's error)
        limiter = getattr(app.extensions.get(_EXTENSION_KEY), "limiter", None)
        if isinstance(limiter, GatewayLimiter):
            return limiter.bound_view(self)(*args, **kwargs)
        return app.ensure_sync(self.original)(*args, **kwargs)


def _for_blueprint(
    bp: Blueprint, action: Callable[[Limiter], object], obs: Extension | None
) -> None:
    """Run ``action`` on the limiter of each app ``bp`` is registered on, now and later.

    The actions stay on the blueprint: an app gets them when the blueprint is registered
    on it (or, registered before the extension, from ``init_app``), and only then.
    """
    actions: list[Callable[[Limiter], object]] | None = bp.__dict__.get(_BLUEPRINT_ATTR)
    if actions is None:
        actions = []
        setattr(bp, _BLUEPRINT_ATTR, actions)
        known = actions

        def registered(setup: BlueprintSetupState) -> None:
            if setup.first_registration:
                limiter = _limiter_of(setup.app)
                if isinstance(limiter, GatewayLimiter):
                    for known_action in known:
                        known_action(limiter)

        if bp._got_registered_once:
            # Flask's setup methods are closed once a blueprint is registered; apps that
            # register it later must still get its limits.
            bp.deferred_functions.append(registered)
        else:
            bp.record_once(registered)
    actions.append(action)
    if bp._got_registered_once and obs is not None:
        for state in obs._states:
            limiter = state.limiter
            if isinstance(limiter, GatewayLimiter) and any(
                registered_bp is bp for registered_bp in state.app.blueprints.values()
            ):
                action(limiter)


def _apply_blueprint_limits(app: Flask, limiter: Limiter) -> None:
    """Give a new limiter the limits and exemptions of blueprints registered before it."""
    for bp in list(app.blueprints.values()):
        for action in bp.__dict__.get(_BLUEPRINT_ATTR, ()):
            action(limiter)


class _InertLimiter(_DeferredDecorators, Limiter):  # type: ignore[misc]
    """The app's limiter with ``GATEWAY_OBS_RATELIMIT_ENABLED`` off: counts nothing. Its
    decorators are the extension's, so a view still counts in another app that limits."""

    def __init__(self, key_func: KeyFunc, obs: Extension | None) -> None:
        super().__init__(key_func, enabled=False)
        self._obs = obs


class DeferredLimiter(_DeferredDecorators):
    """``obs.limiter`` outside an app context, and wherever it is kept in a variable.

    - ``limit`` and ``shared_limit`` on a view wrap it once; each app serving the view
      builds the real Flask-Limiter decorators for it on its own limiter, at the first
      call, so two apps count apart even when they share view functions. Used as a
      context manager inside a view, they limit the block on the serving app's limiter.
    - ``limit``, ``shared_limit`` and ``exempt`` on a blueprint apply to the apps the
      blueprint is registered on, and to no other.
    - ``exempt`` on a view function marks the function: every app serving it exempts it.
    - ``request_filter`` inside an app context is that app's; outside one it is a filter
      of every app this ``GatewayObs`` sets up, those already set up included.
    - Any other attribute (``current_limit``, ``enabled``, ``reset``, ...) is the current
      app's limiter; outside an app context, the one app's limiter, when there is
      exactly one.
    """

    def __init__(self, obs: Extension) -> None:
        self._obs = obs
        self._filters: list[Callable[[], bool]] = []

    def _limiters(self) -> list[Limiter]:
        states = self._obs._states if self._obs is not None else []
        return [s.limiter for s in states if s.limiter is not None]

    def _here(self, name: str) -> Limiter:
        """The limiter ``name`` is asked of: the current app's, else the only app's."""
        if has_app_context():
            limiter = _limiter_of(current_app)
            if limiter is None:
                raise AttributeError(f"obs.limiter.{name}: the current app has no rate limiter")
            return limiter
        limiters = self._limiters()
        if len(limiters) == 1:
            return limiters[0]
        raise AttributeError(
            f"obs.limiter.{name} needs an app: outside an app context only limit, "
            "shared_limit, exempt and request_filter work (use `with app.app_context():`)"
        )

    def apply_to(self, limiter: Limiter) -> None:
        """Give a new app's limiter the request filters declared for every app."""
        for fn in self._filters:
            limiter.request_filter(fn)

    def exempt(self, obj: Any = None, *, flags: ExemptionScope = _DEFAULT_EXEMPTION) -> Any:
        """Like :meth:`flask_limiter.Limiter.exempt`, in every app serving ``obj``."""
        if obj is None:
            return functools.partial(self.exempt, flags=flags)
        if isinstance(obj, Blueprint):
            bp = obj
            _for_blueprint(bp, lambda limiter: Limiter.exempt(limiter, bp, flags=flags), self._obs)
            return obj
        setattr(obj, _EXEMPT_ATTR, flags)
        for limiter in self._limiters():
            if isinstance(limiter, GatewayLimiter):
                limiter._view_count = -1  # looks at its views again at the next request
        return obj

    def request_filter(self, fn: Callable[[], bool]) -> Callable[[], bool]:
        """Like :meth:`flask_limiter.Limiter.request_filter`: the current app's, or, outside
        an app context, every app's."""
        if has_app_context():
            limiter = _limiter_of(current_app)
            if limiter is not None:
                limiter.request_filter(fn)
                return fn
        if fn not in self._filters:
            self._filters.append(fn)
            for limiter in self._limiters():
                limiter.request_filter(fn)
        return fn

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._here(name), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:  # e.g. ``limiter.enabled = False``: the app's limiter's switch
            setattr(self._here(name), name, value)


def limiter_for(obs: Extension) -> Limiter:
    """``obs.limiter``: the current app's limiter, else the deferred one."""
    if has_app_context():
        limiter = _limiter_of(current_app)
        if limiter is not None:
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


def storage_options(uri: str, timeout: float) -> dict[str, Any]:
    """Our options for the storage at ``uri`` (``RATELIMIT_STORAGE_OPTIONS`` is merged over them).

    Redis gets connect and read timeouts of ``timeout`` seconds. Through Sentinel the
    connections to the sentinels get them too: limits gives the Sentinel client its own
    ``sentinel_kwargs``, without which those connections would wait forever.
    """
    options: dict[str, Any] = {"wrap_exceptions": True}
    scheme = urlsplit(uri).scheme
    if scheme in _REDIS_SCHEMES:
        timeouts = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
        options.update(timeouts)
        if scheme in _SENTINEL_SCHEMES:
            options["sentinel_kwargs"] = dict(timeouts)
    return options


def init_app(app: Flask, state: ObsState, obs: Extension) -> None:
    """Create the app's limiter (``state.limiter``) and install it."""
    settings = state.settings
    key_func = settings.ratelimit_key_func or client_address(settings.trusted_proxies)
    if not settings.ratelimit_enabled:
        # Inert: decorators still work, nothing is counted, no hook is installed.
        state.limiter = _InertLimiter(key_func, obs)
        _drop_duplicate_null_handlers(state.limiter.logger)
        return
    config = app.config
    uri = storage_uri(config, settings.redis_url)
    options = storage_options(uri, settings.ratelimit_storage_timeout)
    shared = urlsplit(uri).scheme != "memory"
    limiter = GatewayLimiter(
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
    if obs._limiter_facade is not None:
        obs._limiter_facade.apply_to(limiter)
    _apply_blueprint_limits(app, limiter)
    limiter.setup(app)
