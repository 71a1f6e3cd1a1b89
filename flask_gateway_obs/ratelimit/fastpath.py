"""The fast path: the limits of an endpoint resolved once, counted straight on the storage.

Flask-Limiter works out, on every request, which limits apply to it (limit manager,
exemption scopes, ordered sets, the limit strings parsed again), builds an object per
limit and reads each window back from the storage for the headers. For a given endpoint
and method the answer is the same every time as long as the limits are static, so
:class:`FastLimiter` resolves it once into a plan (the limits in Flask-Limiter's order,
with their scopes and storage keys worked out) and per request only calls the key
functions and hits the storage, with the same keys, costs and order. Anything that can
change per request or that runs user code (callable limits, ``exempt_when``,
``deduct_when``, callable costs or scopes, meta limits, ``on_breach``, custom request
identifiers, Flask-Limiter's own fallback) keeps Flask-Limiter's own evaluation for the
endpoint. The plans are dropped whenever a limit, exemption or route is added.

It reads Flask-Limiter's internals through :mod:`flask_gateway_obs._compat.flask_limiter`,
and is used only with the versions verified there.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, cast

from flask import Flask, Request, Response
from flask_limiter import Limit, RateLimitExceeded, RequestLimit
from flask_limiter.util import get_qualified_name
from limits.limits import safe_string
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from .._compat import flask as compat_flask
from .._compat import flask_limiter as compat
from .._compat import limits as compat_limits
from .limiter import BREACH_LINE, GatewayLimiter
from .plans import EXEMPT_PLAN, NOTHING, SLOW_PLAN, Checked, Hit, Plan, Rule, Variant
from .storage import PipelinedFixedWindow, StorageUnavailable

if TYPE_CHECKING:
    from .._compat.flask_limiter import RuntimeLimit

__all__ = ["FastLimiter"]

#: How a fast step counts: on the storage itself (fixed window, in memory or in Redis),
#: or through the strategy (any other strategy or storage).
MEMORY, REDIS, STRATEGY = "memory", "redis", "strategy"
#: A client key no key function returns, to check a plan's keys against limits' own.
_PROBE_KEY = "\x00probe"
#: Plans kept per endpoint, one per method.
MAX_METHODS = 16


class _Unplannable(Exception):
    """A step that Flask-Limiter's own evaluation must run."""


class FastLimiter(compat.CheckInterceptor, GatewayLimiter):  # type: ignore[misc]
    """:class:`GatewayLimiter` with the fast path of the module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._plans_lock = threading.Lock()
        self._generation = 0
        self._gate_plans: dict[str, dict[str, Plan]] = {}
        self._view_plans: dict[str, dict[str, Plan]] = {}
        self._fast_mode: str | None = None  # None until set up: Flask-Limiter's path only
        self._incr_expire_ttl: Any = None
        self._expirations: dict[str, float] | None = None
        self._fast_storage: Any = None
        self._own_identity = True
        self._settings: compat.Settings | None = None
        self._middleware_limits = True
        self._record_attr = f"_gateway_obs_rate_limit_{id(self):x}"
        super().__init__(*args, **kwargs)
        compat.track_changes(self, self._limits_changed)

    def setup(self, app: Flask) -> None:
        self._own_identity = "RATELIMIT_REQUEST_IDENTIFIER" not in app.config
        super().setup(app)
        if not self.initialized:
            return
        self._settings = compat.settings_of(self)
        storage, mode = self.storage, STRATEGY
        self._fast_storage = storage
        primary = self.resilient.primary if self.resilient is not None else None
        if type(primary) in (FixedWindowRateLimiter, PipelinedFixedWindow):
            if type(storage) is MemoryStorage:
                self._expirations = compat_limits.expirations(storage)
                if self._expirations is not None:
                    mode = MEMORY
            elif type(storage) is RedisStorage:
                self._incr_expire_ttl = compat_limits.incr_with_ttl(storage)
                if self._incr_expire_ttl is not None:
                    mode = REDIS
        self._fast_mode = mode
        self._limits_changed()

    @property
    def cached_plans(self) -> int:
        """How many endpoint-and-method plans are kept (at most :data:`MAX_METHODS` per
        endpoint, whatever methods clients send)."""
        plans = [*self._gate_plans.values(), *self._view_plans.values()]
        return sum(len(by_method) for by_method in plans)

    # --- the check -------------------------------------------------------------------

    def gate(self) -> None:
        """Before-request step (see :meth:`GatewayLimiter.gate`), straight to the fast check."""
        if not self.enabled:
            return
        ctx = compat_flask.request_ctx()
        if ctx is None or ctx.request.path in self._internal_paths:
            return
        app = ctx.app
        if len(app.view_functions) != self._view_count:
            self.bind_views(app)
        if self._middleware_limits:
            self._step(ctx, None, True)

    def fast_step(self, callable_name: str | None, in_middleware: bool) -> None:
        """A decorated view's check (or Flask-Limiter's own, outside a request)."""
        if not self.enabled:
            return
        ctx = compat_flask.request_ctx()
        if ctx is None:
            self.own_step(callable_name, in_middleware)
        elif not in_middleware or self._middleware_limits:
            self._step(ctx, callable_name, in_middleware)

    def _step(self, ctx: Any, callable_name: str | None, in_middleware: bool) -> None:
        resilient = self.resilient
        if resilient is None or resilient.down:
            self.own_step(callable_name, in_middleware)
            return
        try:
            if not self._fast_check(ctx, ctx.request, callable_name, in_middleware):
                self.own_step(callable_name, in_middleware)
        except RateLimitExceeded:
            raise
        except Exception as exc:
            if not resilient.is_storage_error(exc):
                raise
            resilient.failed(exc)
            # Count this request on the stand-in instead (a 503 when failing closed).
            self.context.seen_limits.clear()
            self.own_step(callable_name, in_middleware)

    def response_hook(self, response: Response) -> Response:
        if not self.enabled or self._gw_inject is None:
            return response
        ctx = compat_flask.request_ctx()
        if ctx is None:
            return response
        state = ctx.__dict__
        record: Checked | None = state.get(self._record_attr)
        if record is not None:
            if response.status_code != 429 and not record.breached:
                settings = self._settings
                if record.header >= 0 and settings is not None and settings.headers_enabled:
                    self._add_headers(response, record)
                return response
            self._own_context()  # a breach takes Flask-Limiter's header step, same counts
        else:
            contexts = state.get(compat.OWN_STATE_ATTR)
            if contexts is None or self not in contexts:
                return response  # the limiter did nothing for this request
        return self.finish(response, self.current_limit)

    def needs_steps(self) -> bool:
        """Whether any limit is declared: without one, no Flask hook runs per request."""
        return compat.has_limits(self)

    def _limits_changed(self) -> None:
        """Drop the plans: a limit, an exemption or a route was added."""
        with self._plans_lock:
            self._generation += 1
            self._gate_plans = {}
            self._view_plans = {}
            self._middleware_limits = compat.middleware_has_limits(self)
        if not self._plugged and self._hook_anchor is not None and self.needs_steps():
            self.plug_in()  # the first limit of an app that had none

    def _fast_check(
        self, ctx: Any, req: Request, callable_name: str | None, in_middleware: bool
    ) -> bool:
        """One step of Flask-Limiter's check, from the endpoint's plan.

        Counts exactly as Flask-Limiter would: the same limits in the same order, the
        same storage keys and costs, the same log lines, the same exception on a breach.
        What it did stays on the request for the headers. Returns False, having touched
        nothing, when this step needs Flask-Limiter's own evaluation.
        """
        state = ctx.__dict__
        contexts = state.get(compat.OWN_STATE_ATTR)
        if contexts is not None and self in contexts:
            return False  # Flask-Limiter's own state is in use for this request: stay on it
        settings = self._settings
        if settings is None:
            return False
        endpoint: str | None = req.endpoint
        method = req.method
        plan: Plan | None
        if not endpoint:  # no route matched: Flask-Limiter limits nothing (meta limits aside)
            plan = EXEMPT_PLAN if self._plannable() else SLOW_PLAN
        else:
            plans = self._gate_plans if in_middleware else self._view_plans
            by_method = plans.get(endpoint)
            plan = by_method.get(method) if by_method is not None else None
            if plan is None:
                plan = self._new_plan(ctx.app, req, endpoint, method, in_middleware)
        if plan.slow:
            return False
        previous: Checked | None = state.get(self._record_attr)
        seen = previous.seen if previous is not None else NOTHING
        if not plan.exempt:
            if not in_middleware and callable_name != plan.name:
                return False  # limit(...) as a context manager, or a decorated helper
            filters = settings.request_filters
            if not (filters and any(exempt() for exempt in filters)):
                if not seen:
                    variant = plan.alone
                elif seen is plan.gate_seen and plan.after_gate is not None:
                    variant = plan.after_gate
                else:
                    return False
                if variant.rules:
                    self._hit(state, variant, settings)
                    return True
                seen = variant.seen
        # Nothing to count: Flask-Limiter would forget any earlier step's header limit.
        if previous is not None or seen:
            state[self._record_attr] = Checked(seen, (), [], -1, ())
        return True

    def _hit(self, state: dict[str, Any], variant: Variant, settings: compat.Settings) -> None:
        """Count the request in each limit of ``variant``, as Flask-Limiter's evaluation does."""
        rules = variant.rules
        mode = self._fast_mode
        storage = self._fast_storage
        strategy = self.limiter if mode is STRATEGY else None
        expirations: Any = self._expirations
        hits: list[Hit | None] = []
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
            if mode is MEMORY:
                key = f"{rule.head}{client}{rule.tail}"
                count = storage.incr(key, rule.expiry, amount=rule.cost)
                reset = expirations.get(key) or time.time()
                allowed = count <= rule.amount
            elif mode is REDIS:
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
                # Flask-Limiter's line, without the client key.
                self.logger.info(BREACH_LINE, rule.item, rule.scope)
                failed.append(index)
                if settings.fail_on_first_breach:
                    break
        if failed:
            header = failed[-1]
        elif not skipped:
            header = variant.header
        else:
            counted = [i for i, hit in enumerate(hits) if hit is not None]
            explicit = [i for i in counted if not rules[i].shared]
            header = explicit[0] if explicit else counted[0] if counted else -1
        state[self._record_attr] = Checked(variant.seen, rules, hits, header, tuple(failed))
        if failed:
            # Rules are in Flask-Limiter's order (shortest window first): the first failed
            # is the one it reports.
            raise RateLimitExceeded(rules[failed[0]].limit)

    # --- plans ---------------------------------------------------------------------------

    def _new_plan(
        self, app: Flask, req: Request, endpoint: str, method: str, in_middleware: bool
    ) -> Plan:
        generation = self._generation
        try:
            plan = self._resolve_plan(app, req, endpoint, method, in_middleware)
        except _Unplannable:
            plan = SLOW_PLAN
        except Exception:  # whatever it is, Flask-Limiter's own evaluation meets it as it would
            plan = SLOW_PLAN
        with self._plans_lock:
            if generation == self._generation:
                plans = self._gate_plans if in_middleware else self._view_plans
                by_method = plans.setdefault(endpoint, {})
                # A route answers a few methods; this bounds the cache whatever clients send.
                if len(by_method) < MAX_METHODS:
                    by_method[method] = plan
        return plan

    def _plannable(self) -> bool:
        """Whether the limiter's settings allow plans at all."""
        settings = self._settings
        return not (
            self._fast_mode is None
            or settings is None
            or not self._own_identity
            or settings.own_evaluation
        )

    def _resolve_plan(
        self, app: Flask, req: Request, endpoint: str, method: str, in_middleware: bool
    ) -> Plan:
        settings = self._settings
        if settings is None or not self._plannable():
            return SLOW_PLAN
        if endpoint.split(".")[-1] == "static":
            return EXEMPT_PLAN
        view_func = app.view_functions.get(endpoint)
        name = get_qualified_name(view_func) if view_func else ""
        manager = self.limit_manager
        if manager.has_hints(endpoint):
            return SLOW_PLAN  # limits met inside views: Flask-Limiter tracks those itself
        for group in compat.limit_groups(self, name):
            if callable(group.limit_provider) or runs_user_code(group):
                return SLOW_PLAN
            list(group)  # a bad limit string raises ValueError: Flask-Limiter logs it per request
        defaults, decorated = manager.resolve_limits(
            app, endpoint, req.blueprint, name, in_middleware, name in settings.marked_for_limiting
        )
        if any(runs_user_code(limit) for limit in (*defaults, *decorated)):
            return SLOW_PLAN
        alone = self._variant(defaults, decorated, NOTHING, endpoint, method, settings)
        gate_seen = after_gate = None
        if not in_middleware:
            gate = self._gate_plans.get(endpoint, {}).get(method)
            if gate is not None and not gate.slow and gate.alone.seen:
                gate_seen = gate.alone.seen
                after_gate = self._variant(
                    defaults, decorated, gate_seen, endpoint, method, settings
                )
        return Plan(name=name, alone=alone, gate_seen=gate_seen, after_gate=after_gate)

    def _variant(
        self,
        defaults: list[RuntimeLimit],
        decorated: list[RuntimeLimit],
        seen: tuple[RuntimeLimit, ...],
        endpoint: str,
        method: str,
        settings: compat.Settings,
    ) -> Variant:
        # As Flask-Limiter's __filter_limits and __evaluate_limits do it (its ordered sets
        # are dicts here: insertion order, equal limits once).
        fresh = [limit for limit in dict.fromkeys(defaults) if limit not in seen]
        ordered = sorted([*fresh, *decorated], key=lambda limit: limit.limit)
        mode = self._fast_mode
        redis = cast(RedisStorage, self.storage) if mode is REDIS else None
        storage_prefix = redis.prefixed_key("") if redis is not None else ""
        rules: list[Rule] = []
        for limit in ordered:
            if limit.method_exempt:
                continue
            scope = limit.scope_for(endpoint, method)
            if not scope:
                raise _Unplannable  # Flask-Limiter skips it with an error, per request
            rule = Rule(limit, scope, settings.key_prefix, storage_prefix)
            if mode is not STRATEGY:
                # The keys must be limits' own, so that counts stay shared with every other
                # client of the storage (raw Flask-Limiter, other versions of this one).
                expected = limit.limit.key_for(*rule.args(_PROBE_KEY))
                if redis is not None:
                    expected = redis.prefixed_key(expected)
                if rule.key(_PROBE_KEY) != expected:
                    raise _Unplannable
            rules.append(rule)
        return Variant(tuple(rules), tuple(dict.fromkeys([*seen, *defaults])))

    # --- Flask-Limiter's per-request state, when something asks for it -------------------

    @property
    def context(self) -> Any:
        """Flask-Limiter's per-request state, made from the fast path's record when asked for.

        :meta private:
        """
        return self._own_context()

    def _own_context(self) -> Any:
        context = compat.flask_limiters_context(self)
        ctx = compat_flask.request_ctx()
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
                    compat.with_window(limit, reset, max(0, rule.amount - count))
                limits.append(limit)
                if index == record.header:
                    chosen = limit
            context.view_rate_limits = limits
            context.view_rate_limit = chosen
        return context

    def _add_headers(self, response: Response, record: Checked) -> None:
        settings = self._settings
        assert settings is not None
        index = record.header
        rule = record.rules[index]
        hit = record.hits[index]
        assert hit is not None
        client, count, reset = hit
        if count is None:  # the strategy counted: read its window back, as Flask-Limiter does
            try:
                reset, remaining = self.limiter.get_window_stats(rule.item, *rule.args(client))
            except StorageUnavailable:  # fail-closed and the storage is down: no headers
                return
        else:
            remaining = rule.amount - count
            if remaining < 0:
                remaining = 0
        headers = response.headers
        headers.add(settings.limit_header, rule.amount_text)
        headers.add(settings.remaining_header, str(remaining))
        headers.add(settings.reset_header, str(int(reset + 1)))


def runs_user_code(limit: Limit | RuntimeLimit) -> bool:
    """Whether a limit calls back into the app per request (Flask-Limiter's path runs it)."""
    return bool(
        limit.exempt_when
        or limit.deduct_when
        or limit.on_breach
        or limit.meta_limits
        or callable(limit.cost)
        or callable(limit.scope)
    )
