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
endpoint. The plans are dropped whenever a limit, exemption or route is added. Plans
are resolved by :mod:`.planning`.

It reads Flask-Limiter's internals through :mod:`flask_gateway_obs._compat.flask_limiter`,
and is used only with the versions verified there.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Request, Response
from flask_limiter import RateLimitExceeded, RequestLimit
from limits.limits import safe_string
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from .._compat import flask as compat_flask
from .._compat import flask_limiter as compat
from .._compat import limits as compat_limits
from .identity import DEFAULT_ADDRESS
from .limiter import BREACH_LINE
from .planning import MAX_METHODS, MEMORY, REDIS, STRATEGY, PlanResolver
from .plans import EXEMPT_PLAN, NOTHING, SLOW_PLAN, Checked, Hit, Plan, Variant
from .storage import PipelinedFixedWindow, StorageUnavailable

__all__ = ["MAX_METHODS", "FastLimiter"]


class FastLimiter(compat.CheckInterceptor, PlanResolver):  # type: ignore[misc]
    """:class:`GatewayLimiter` with the fast path of the module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._incr_expire_ttl: Any = None
        self._memory_hit: compat_limits.MemoryHit | None = None
        self._record_attr = f"_gateway_obs_rate_limit_{id(self):x}"
        super().__init__(*args, **kwargs)

    def setup(self, app: Flask) -> None:
        self._own_identity = "RATELIMIT_REQUEST_IDENTIFIER" not in app.config
        super().setup(app)
        if not self.initialized:
            return
        self._settings = compat.settings_of(self)
        storage, mode = self.storage, STRATEGY
        primary = self.resilient.primary if self.resilient is not None else None
        if type(primary) in (FixedWindowRateLimiter, PipelinedFixedWindow):
            if type(storage) is MemoryStorage:
                self._memory_hit = compat_limits.memory_hit(storage)
                if self._memory_hit is not None:
                    mode = MEMORY
            elif type(storage) is RedisStorage:
                self._incr_expire_ttl = compat_limits.incr_with_ttl(storage)
                if self._incr_expire_ttl is not None:
                    mode = REDIS
        self._fast_mode = mode
        self._limits_changed()

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
                    self._hit(state, req.environ, variant, settings)
                    return True
                seen = variant.seen
        # Nothing to count: Flask-Limiter would forget any earlier step's header limit.
        if previous is not None or seen:
            state[self._record_attr] = Checked(seen, (), [], -1, ())
        return True

    def _hit(
        self,
        state: dict[str, Any],
        environ: dict[str, Any],
        variant: Variant,
        settings: compat.Settings,
    ) -> None:
        """Count the request in each limit of ``variant``, as Flask-Limiter's evaluation does."""
        rules = variant.rules
        memory_hit = self._memory_hit
        hits: list[Hit | None] = []
        failed: list[int] = []
        skipped = False
        for index, rule in enumerate(rules):
            if rule.by_address:
                client = environ.get("REMOTE_ADDR") or DEFAULT_ADDRESS
            else:
                raw = rule.key_func()
                if not raw:
                    self.logger.error(
                        f"Skipping limit: {rule.item}. Empty value found in parameters."
                    )
                    hits.append(None)
                    skipped = True
                    continue
                client = raw if type(raw) is str else safe_string(raw)
            count: int | None
            if memory_hit is not None:
                count, reset = memory_hit(f"{rule.head}{client}{rule.tail}", rule.expiry, rule.cost)
                allowed = count <= rule.amount
            elif self._fast_mode is REDIS:
                reply = self._incr_expire_ttl(
                    keys=[f"{rule.head}{client}{rule.tail}"], args=[rule.expiry, rule.cost]
                )
                count = int(reply[0])
                reset = max(int(reply[1]), 0) + time.time()
                allowed = count <= rule.amount
            else:
                allowed = self.limiter.hit(rule.item, *rule.args(client), cost=rule.cost)
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
