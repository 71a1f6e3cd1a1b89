"""The fast path: the limits of an endpoint resolved once, counted straight on the storage.

Flask-Limiter works out, on every request, which limits apply to it (limit manager,
exemption scopes, ordered sets, the limit strings parsed again), builds an object per
limit and reads each window back from the storage for the headers. :class:`FastLimiter`
resolves that once per endpoint and method into a plan (:mod:`.planning`) and per request
only calls the key functions and hits the storage, with the same keys, costs and order.
Endpoints whose limits run user code keep Flask-Limiter's own evaluation.

The ``X-RateLimit-*`` headers of a request the fast path counted and let through are
noted on the extension's request context at the hit, and the WSGI step adds them when
the response starts: no after-request hook runs for them. Flask-Limiter's header step
runs only after the requests that need it (see :meth:`GatewayLimiter.hold_header_step`):
a breach (``Retry-After``, the breach counted and logged), Flask-Limiter's own
evaluation, a window the strategy reads back after the view, an app driven without the
WSGI step.

It reads Flask-Limiter's internals through :mod:`flask_gateway_obs._compat.flask_limiter`,
and is used only with the versions verified there.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from flask import Flask, Request, Response
from flask_limiter import RateLimitExceeded, RequestLimit
from limits.limits import safe_string
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from .._compat import flask as compat_flask
from .._compat import flask_limiter as compat
from .._compat import limits as compat_limits
from ..core.context import current_request
from .identity import DEFAULT_ADDRESS
from .limiter import BREACH_LINE
from .planning import MAX_METHODS, MEMORY, REDIS, STRATEGY, PlanResolver
from .plans import EXEMPT_PLAN, NOTHING, SLOW_PLAN, Checked, Header, Hit, Plan, Variant
from .storage import PipelinedFixedWindow, StorageUnavailable

if TYPE_CHECKING:
    from redis import Redis

    from .redis_hit import RedisHit

__all__ = ["MAX_METHODS", "FastLimiter"]

_OWN_STATE_ATTR = compat.OWN_STATE_ATTR
#: How many headers a step notes (limit, remaining, reset).
_NOTED = 3


class FastLimiter(compat.CheckInterceptor, PlanResolver):  # type: ignore[misc]
    """:class:`GatewayLimiter` with the fast path of the module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._redis_hit: RedisHit | None = None
        self._memory_hit: compat_limits.MemoryHit | None = None
        self._record_attr = f"_gateway_obs_rate_limit_{id(self):x}"
        self._noted_attr = f"_gateway_obs_rate_limit_headers_{id(self):x}"
        super().__init__(*args, **kwargs)

    def setup(self, app: Flask) -> None:
        self._own_identity = "RATELIMIT_REQUEST_IDENTIFIER" not in app.config
        super().setup(app)
        if self.initialized:
            self._limits_changed()

    def _prepare_steps(self, app: Flask) -> None:
        self._settings = compat.settings_of(self)
        storage, mode = self.storage, STRATEGY
        primary = self.resilient.primary if self.resilient is not None else None
        if type(primary) in (FixedWindowRateLimiter, PipelinedFixedWindow):
            if type(storage) is MemoryStorage:
                self._memory_hit = compat_limits.memory_hit(storage)
                if self._memory_hit is not None:
                    mode = MEMORY
            elif type(storage) is RedisStorage:
                script = compat_limits.incr_with_ttl(storage)
                if script is not None:
                    # Imported here: redis-py is there only when a storage is on Redis.
                    from .redis_hit import RedisHit

                    client = cast("Redis[Any]", storage.get_connection())
                    self._redis_hit = RedisHit(client, script)
                    mode = REDIS
        self._fast_mode = mode

    def header_step_each_request(self) -> bool:
        """Only while some request needs it, unless every request does: the strategy counts
        (its window is read back after the view, as Flask-Limiter does) or Flask-Limiter
        evaluates every limit itself."""
        return self._fast_mode is STRATEGY or not self._plannable()

    # --- the check -------------------------------------------------------------------

    def gate(self) -> None:
        """Before-request step (see :meth:`GatewayLimiter.gate`), straight to the fast check."""
        if not self.enabled:
            return
        ctx = compat_flask.request_ctx()
        if ctx is None:
            return
        req = ctx.request
        if req.path in self._internal_paths:
            return
        app = ctx.app
        if len(app.view_functions) != self._view_count:
            self.bind_views(app)
        if self._middleware_limits:
            self._step(ctx, req, None, True)

    def fast_step(self, callable_name: str | None, in_middleware: bool) -> None:
        """A decorated view's check (or Flask-Limiter's own, outside a request)."""
        if not self.enabled:
            return
        ctx = compat_flask.request_ctx()
        if ctx is None:
            self.own_step(callable_name, in_middleware)
        elif not in_middleware or self._middleware_limits:
            self._step(ctx, ctx.request, callable_name, in_middleware)

    def own_step(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        """Flask-Limiter's own check; in a request, its header step then describes the request."""
        ctx = compat_flask.request_ctx()
        if ctx is not None:
            state = ctx.__dict__
            self._withdraw_headers(state)  # its state decides the headers from now on
            self.hold_header_step(state)
        super().own_step(callable_name, in_middleware)

    def _step(self, ctx: Any, req: Request, callable_name: str | None, in_middleware: bool) -> None:
        """One step of Flask-Limiter's check, from the endpoint's plan.

        Counts exactly as Flask-Limiter would: the same limits in the same order, the
        same storage keys and costs, the same log lines, the same exception on a breach.
        What it did stays on the request for the headers. A step the plan cannot take
        is Flask-Limiter's own (:meth:`own_step`).
        """
        resilient = self.resilient
        if resilient is None or resilient.down:
            self.own_step(callable_name, in_middleware)
            return
        try:
            state = ctx.__dict__
            settings = self._settings
            contexts = state.get(_OWN_STATE_ATTR)
            if settings is None or (contexts is not None and self in contexts):
                # (the latter: Flask-Limiter's own state is in use for this request: stay on it)
                self.own_step(callable_name, in_middleware)
                return
            url_rule = req.url_rule
            endpoint: str | None = url_rule.endpoint if url_rule is not None else None
            plan: Plan | None
            if not endpoint:  # no route matched: Flask-Limiter limits nothing (meta limits aside)
                plan = EXEMPT_PLAN if self._plannable() else SLOW_PLAN
            else:
                method = req.method
                by_method = (self._gate_plans if in_middleware else self._view_plans).get(endpoint)
                plan = by_method.get(method) if by_method is not None else None
                if plan is None:
                    plan = self._new_plan(ctx.app, req, endpoint, method, in_middleware)
            if plan.slow or (not in_middleware and not plan.exempt and callable_name != plan.name):
                # (the latter: limit(...) as a context manager, or a decorated helper)
                self.own_step(callable_name, in_middleware)
                return
            previous: Checked | None = state.get(self._record_attr)
            seen = previous[0] if previous is not None else NOTHING
            if not plan.exempt:
                filters = settings.request_filters
                if not (filters and any(exempt() for exempt in filters)):
                    if not seen:
                        variant = plan.alone
                    elif seen is plan.gate_seen and plan.after_gate is not None:
                        variant = plan.after_gate
                    else:
                        self.own_step(callable_name, in_middleware)
                        return
                    if variant.rules:
                        if previous is not None:
                            self._withdraw_headers(state)
                        self._hit(state, req.environ, variant, settings)
                        return
                    seen = variant.seen
            # Nothing to count: Flask-Limiter would forget any earlier step's header limit.
            if previous is not None or seen:
                self._withdraw_headers(state)
                state[self._record_attr] = (seen, (), [], -1, ())
        except RateLimitExceeded:
            raise
        except Exception as exc:
            if not resilient.is_storage_error(exc):
                raise
            resilient.failed(exc)
            # Count this request on the stand-in instead (a 503 when failing closed).
            self.context.seen_limits.clear()
            self.own_step(callable_name, in_middleware)

    def _hit(
        self,
        state: dict[str, Any],
        environ: dict[str, Any],
        variant: Variant,
        settings: compat.Settings,
    ) -> None:
        """Count the request in each limit of ``variant``, as Flask-Limiter's evaluation does,
        and note the headers of the limit they describe."""
        rules = variant.rules
        memory_hit = self._memory_hit
        redis_hit = self._redis_hit if self._fast_mode is REDIS else None
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
            elif redis_hit is not None:
                reply = redis_hit(f"{rule.head}{client}{rule.tail}", rule.expiry, rule.cost)
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
            state[self._record_attr] = (variant.seen, rules, hits, failed[-1], tuple(failed))
            self.hold_header_step(state)  # Retry-After, the breach counted and logged
            # Rules are in Flask-Limiter's order (shortest window first): the first failed
            # is the one it reports.
            raise RateLimitExceeded(rules[failed[0]].limit)
        if not skipped:
            header = variant.header
        else:
            counted = [i for i, hit in enumerate(hits) if hit is not None]
            explicit = [i for i in counted if not rules[i].shared]
            header = explicit[0] if explicit else counted[0] if counted else -1
        state[self._record_attr] = (variant.seen, rules, hits, header, ())
        if header < 0 or not settings.headers_enabled:
            return
        # The headers, for the WSGI step to add when the response starts.
        _, count, reset = hits[header] or ("", None, 0.0)
        request = current_request.get()
        if count is None or request is None or request.environ is not environ:
            # The strategy counted (its window is read back after the view), or the app
            # is driven without the WSGI step: the header step adds them.
            self.hold_header_step(state)
            return
        rule = rules[header]
        remaining = rule.amount - count
        noted = [
            rule.limit_header,
            (settings.remaining_header, str(remaining if remaining > 0 else 0)),
            (settings.reset_header, str(int(reset + 1))),
        ]
        headers = request.headers
        if headers is None:
            request.headers = noted  # shared: withdrawn by taking its first three back
        else:
            headers.extend(noted)
        state[self._noted_attr] = noted

    def _withdraw_headers(self, state: dict[str, Any]) -> None:
        """Take back the headers an earlier step of this request noted."""
        noted: list[Header] | None = state.pop(self._noted_attr, None)
        request = current_request.get()
        headers = request.headers if request is not None else None
        if noted is None or not headers:
            return
        if headers is noted:  # the list the step made: its own three first, others' after
            del headers[:_NOTED]
            return
        for header in noted[:_NOTED]:
            if header in headers:
                headers.remove(header)

    # --- the header step -------------------------------------------------------------

    def response_hook(self, response: Response) -> Response:
        """After-request step, for the requests that hold it (see :meth:`hold_header_step`)."""
        ctx = compat_flask.request_ctx()
        if ctx is None:
            return response
        state = ctx.__dict__
        if not self.holds_header_step(state):
            return response  # registered for another request: nothing to do for this one
        try:
            return self._header_step(response, state)
        finally:
            self.release_header_step(state)

    def _header_step(self, response: Response, state: dict[str, Any]) -> Response:
        if not self.enabled or self._gw_inject is None:
            return response
        noted = self._noted_attr in state
        record: Checked | None = state.get(self._record_attr)
        if record is not None:
            if not record[4] and (noted or response.status_code != 429):  # let through
                settings = self._settings
                headers_on = settings is not None and settings.headers_enabled
                if not noted and record[3] >= 0 and headers_on:
                    self._add_headers(response, record)
                return response
            current = self._own_context().view_rate_limit  # a breach: Flask-Limiter's step
        else:
            contexts = state.get(_OWN_STATE_ATTR)
            if contexts is None or self not in contexts:
                return response  # the limiter did nothing for this request
            if noted:
                return response  # its state came from a fast step, whose headers are noted
            current = self.current_limit
        return self.finish(response, current)

    def _add_headers(self, response: Response, record: Checked) -> None:
        settings = self._settings
        assert settings is not None
        _, rules, hits, index, _ = record
        rule = rules[index]
        hit = hits[index]
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
        record: Checked | None = (
            ctx.__dict__.pop(self._record_attr, None) if ctx is not None else None
        )
        if record is not None:
            seen, rules, hits, header, breached = record
            context.seen_limits.update(seen)
            limits: list[RequestLimit] = []
            chosen = None
            for index, hit in enumerate(hits):
                if hit is None:
                    continue
                rule = rules[index]
                client, count, reset = hit
                limit = RequestLimit(
                    self, rule.item, rule.args(client), index in breached, rule.shared
                )
                if count is not None:
                    compat.with_window(limit, reset, max(0, rule.amount - count))
                limits.append(limit)
                if index == header:
                    chosen = limit
            context.view_rate_limits = limits
            context.view_rate_limit = chosen
        return context
