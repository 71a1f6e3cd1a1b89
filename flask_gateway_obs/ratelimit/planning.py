"""The fast path's plans: the limits of an endpoint and method, resolved once.

For a given endpoint and method Flask-Limiter's answer to "which limits apply, in which
order, under which keys" is the same on every request while the limits are static, so
:class:`PlanResolver` works it out once into a :class:`~.plans.Plan`: the limits in
Flask-Limiter's order, with their scopes and storage keys worked out. Anything that can
change per request or that runs user code (callable limits, ``exempt_when``,
``deduct_when``, callable costs or scopes, meta limits, ``on_breach``, custom request
identifiers, Flask-Limiter's own fallback) makes a slow plan: Flask-Limiter's own
evaluation for the endpoint. The plans are dropped whenever a limit, exemption or route
is added.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, cast

from flask import Flask, Request
from flask_limiter import Limit
from flask_limiter.util import get_qualified_name
from limits.storage import RedisStorage

from .._compat import flask_limiter as compat
from .limiter import GatewayLimiter
from .plans import EXEMPT_PLAN, NOTHING, SLOW_PLAN, Plan, Rule, Variant

if TYPE_CHECKING:
    from .._compat.flask_limiter import RuntimeLimit

__all__ = ["MAX_METHODS", "MEMORY", "REDIS", "STRATEGY", "PlanResolver", "runs_user_code"]

#: How a fast step counts: on the storage itself (fixed window, in memory or in Redis),
#: or through the strategy (any other strategy or storage).
MEMORY, REDIS, STRATEGY = "memory", "redis", "strategy"
#: A client key no key function returns, to check a plan's keys against limits' own.
_PROBE_KEY = "\x00probe"
#: Plans kept per endpoint, one per method.
MAX_METHODS = 16


class _Unplannable(Exception):
    """A step that Flask-Limiter's own evaluation must run."""


class PlanResolver(GatewayLimiter):
    """A :class:`GatewayLimiter` that resolves the plans of its endpoints once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._plans_lock = threading.Lock()
        self._generation = 0
        self._gate_plans: dict[str, dict[str, Plan]] = {}
        self._view_plans: dict[str, dict[str, Plan]] = {}
        self._fast_mode: str | None = None  # None until set up: Flask-Limiter's path only
        self._own_identity = True
        self._settings: compat.Settings | None = None
        self._middleware_limits = True
        super().__init__(*args, **kwargs)
        compat.track_changes(self, self._limits_changed)

    @property
    def cached_plans(self) -> int:
        """How many endpoint-and-method plans are kept (at most :data:`MAX_METHODS` per
        endpoint, whatever methods clients send)."""
        plans = [*self._gate_plans.values(), *self._view_plans.values()]
        return sum(len(by_method) for by_method in plans)

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
            rule = Rule(limit, scope, settings.key_prefix, storage_prefix, settings.limit_header)
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
