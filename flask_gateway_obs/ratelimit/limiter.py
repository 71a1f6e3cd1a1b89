"""The app's :class:`flask_limiter.Limiter`, wired to the extension's errors, logs, metrics
and failure policy, on Flask-Limiter's public API.

Flask-Limiter registers three request hooks; Flask pays for each on every request. The
limiter takes its check and its header step out of Flask's lists and runs them inside
the extension's own before- and after-request steps (so health and metrics are never
limited, and the header step is skipped when there is nothing to do); its teardown,
which only empties per-request state that Flask discards with the request context,
not at all. Where the fast path notes the headers itself (:mod:`.fastpath`), the header
step is registered with Flask only while a request needs it (a breach, Flask-Limiter's
own evaluation), at the place it would have had.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from flask_limiter.constants import ConfigVars
from limits.storage import MemoryStorage

from .._compat import flask as compat_flask
from .._compat import limits as compat_limits
from ..core import process
from ..core.contracts import ErrorInfo
from ..labels import UNMATCHED_ROUTE
from ..logs import LOGGER_NAME
from .decorators import DeferredDecorators, ViewBinding
from .storage import ResilientStrategy, StorageUnavailable, primary_strategy, resilient

if TYPE_CHECKING:
    from limits.strategies import RateLimiter

    from ..core.state import Extension, ObsState
    from .identity import KeyFunc

__all__ = ["GatewayLimiter", "problem_detail"]

#: Flask-Limiter's breach line, which carries the client key (an address, an API token).
_KEYED_BREACH_LINE = "ratelimit %s (%s) exceeded at endpoint: %s"
BREACH_LINE = "ratelimit %s exceeded at endpoint: %s"

_log = logging.getLogger(LOGGER_NAME + ".ratelimit")


class GatewayLimiter(DeferredDecorators, ViewBinding, Limiter):  # type: ignore[misc]
    """The app's :class:`flask_limiter.Limiter`, with the extension's failure policy.

    Created by the extension's ``init_app``; ``obs.limiter`` is this object inside an app
    context. Everything Flask-Limiter offers works as documented (``limit``,
    ``shared_limit``, ``exempt``, ``request_filter``, ``current_limit``, ``reset``, its
    CLI). ``limit`` and ``shared_limit`` return the extension's decorators, which find the
    limiter of the app serving the request when the view is called.

    A storage failure never becomes a 500 (see :mod:`.storage`); a breach is counted,
    logged and answered as a problem+json 429 with ``Retry-After``.

    :param state: the app's extension state (settings, recorder, internal paths).
    :param key_func: the default key function (who a limit counts).
    :param obs: the extension object that set the app up (its other apps share blueprints).
    :param options: keyword arguments for :class:`flask_limiter.Limiter`.
    """

    def __init__(
        self, state: ObsState, key_func: KeyFunc, *, obs: Extension | None = None, **options: Any
    ) -> None:
        self._obs = obs
        self._state = state
        self._internal_paths = state.internal_paths
        self._init_views()
        #: The failure policy around the strategy (None when Flask-Limiter's own in-memory
        #: fallback or ``swallow_errors`` is configured: those keep Flask-Limiter's way).
        self.resilient: ResilientStrategy | None = None
        self._gw_check: Callable[[], None] | None = None
        self._gw_inject: Callable[[Response], Response] | None = None
        self._retry_after_header = "Retry-After"
        self._gw_key_prefix: str = options.get("key_prefix", "")
        self._hook_anchor: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None
        self._setting_up = False
        self._plugged = False
        # The header step on demand (see hold_header_step).
        self._header_step_on_demand = False
        self._header_step_lock = threading.Lock()
        self._header_step_holders = 0
        self._header_step_inserted = False
        self._hold_attr = f"_gateway_obs_header_step_{id(self):x}"
        super().__init__(key_func, **options)
        quiet_flask_limiters_logger(self.logger)

    def setup(self, app: Flask) -> None:
        """Run Flask-Limiter's ``init_app`` and move its request hooks into the extension's."""
        config = app.config
        own_failure_policy = bool(
            config.get(ConfigVars.IN_MEMORY_FALLBACK_ENABLED)
            or config.get(ConfigVars.IN_MEMORY_FALLBACK)
            or config.get(ConfigVars.SWALLOW_ERRORS)
        )
        self.init_app(app)
        if not self.initialized:  # RATELIMIT_ENABLED = False
            return
        self._retry_after_header = config.get(ConfigVars.HEADER_RETRY_AFTER) or "Retry-After"
        storage = self.storage
        if isinstance(storage, MemoryStorage):
            compat_limits.throttle_sweeps(storage)
        if not own_failure_policy:
            settings = self._state.settings
            self.resilient = resilient(
                primary_strategy(super().limiter),
                lambda: self._state.recorder,
                fail_closed=settings.ratelimit_fail_closed,
                max_probe_interval=settings.ratelimit_probe_interval,
                key_prefix=self._gw_key_prefix or config.get(ConfigVars.KEY_PREFIX) or "",
            )
        exempt_internal_views(self, app, self._internal_paths)
        self._prepare_steps(app)
        self._adopt_hooks(app)

    def _prepare_steps(self, app: Flask) -> None:
        """Set up, before the request steps are plugged in, what they need."""

    def _adopt_hooks(self, app: Flask) -> None:
        # Hooks not found (another Flask-Limiter) stay where they are.
        before = app.before_request_funcs.get(None, [])
        for check in list(before):
            if getattr(check, "__self__", None) is self:
                before.remove(check)
                self._gw_check = check
        after = app.after_request_funcs.get(None, [])
        for inject in list(after):
            if isinstance(inject, functools.partial) and inject.args[:1] == (self,):
                after.remove(inject)
                self._gw_inject = inject
        teardown = app.teardown_request_funcs.get(None, [])
        for release in list(teardown):
            if getattr(release, "__self__", None) is self:
                teardown.remove(release)
        for hooks in (
            app.before_request_funcs,
            app.after_request_funcs,
            app.teardown_request_funcs,
        ):
            if None in hooks and not hooks[None]:
                del hooks[None]  # an empty list there still costs Flask a lookup per request
        # Where the extension's steps go if they are plugged in after init_app: after the
        # hooks the app registered before it, before those it registers later.
        self._hook_anchor = (tuple(before), tuple(after))
        self._setting_up = True
        try:
            if self.needs_steps():
                self.plug_in()
        finally:
            self._setting_up = False

    def needs_steps(self) -> bool:
        """Whether any limit may apply to a request (Flask-Limiter's own evaluation cannot
        tell without evaluating: always)."""
        return True

    def header_step_each_request(self) -> bool:
        """Whether Flask-Limiter's header step runs after every request (else only after
        those that need it, see :meth:`hold_header_step`)."""
        return True

    def plug_in(self) -> None:
        """Put the limiter's steps into the extension's before- and after-request steps.

        During ``init_app`` the extension registers those steps with Flask; later (a first
        limit added to an app that had none) they are registered here, at the place they
        would have had.
        """
        with self._views_lock:
            if self._plugged or self._hook_anchor is None:
                return
            self._plugged = True
            state = self._state
            app = state.app
            before_anchor, after_anchor = self._hook_anchor
            if self._gw_check is not None:
                state.request_gates.append(self.gate)
                if not self._setting_up:
                    _register(app.before_request_funcs, state.run_gates, before_anchor)
            if self._gw_inject is not None and self.header_step_each_request():
                state.response_hooks.append(self.response_hook)
                if not self._setting_up:
                    _register(app.after_request_funcs, state.run_response_hooks, after_anchor)
            elif self._gw_inject is not None:
                self._header_step_on_demand = True

    def hold_header_step(self, request_state: dict[str, Any]) -> None:
        """Have the header step run after this request (``request_state`` is Flask's request
        context's ``__dict__``), when it runs only on demand.

        The step is registered with Flask, at the place :meth:`plug_in` would have given
        it, while at least one request holds it, and each request lets go of it once it
        went through it (:meth:`release_header_step`). A request that never reaches it
        (an after-request hook failing twice) leaves it registered: it then runs after
        every request and does nothing for those that do not hold it.
        """
        if not self._header_step_on_demand or self._hold_attr in request_state:
            return
        request_state[self._hold_attr] = True
        state = self._state
        with self._header_step_lock:
            self._header_step_holders += 1
            if self._header_step_holders == 1 and self._hook_anchor is not None:
                if self.response_hook not in state.response_hooks:
                    state.response_hooks.append(self.response_hook)
                self._header_step_inserted = _register(
                    state.app.after_request_funcs, state.run_response_hooks, self._hook_anchor[1]
                )

    def holds_header_step(self, request_state: dict[str, Any]) -> bool:
        """Whether the header step has something to do for this request."""
        return not self._header_step_on_demand or self._hold_attr in request_state

    def release_header_step(self, request_state: dict[str, Any]) -> None:
        """This request went through the header step: let go of it."""
        if request_state.pop(self._hold_attr, None) is None:
            return
        state = self._state
        with self._header_step_lock:
            self._header_step_holders -= 1
            if self._header_step_holders == 0 and self._header_step_inserted:
                _unregister(state.app.after_request_funcs, state.run_response_hooks)
                self._header_step_inserted = False

    # --- storage health ------------------------------------------------------------

    @property
    def limiter(self) -> RateLimiter:
        """The strategy in use, inside the extension's failure policy."""
        resilient = self.resilient
        return super().limiter if resilient is None else resilient

    @property
    def storage_down(self) -> bool:
        """Whether the storage is considered down (limits are per process, or refused)."""
        return self.resilient is not None and self.resilient.down

    @property
    def storage_failures(self) -> int:
        """Failed calls to the storage (probes included) since the app started."""
        return self.resilient.failures if self.resilient is not None else 0

    @property
    def clock(self) -> Callable[[], float]:
        """Clock of the probe schedule (monotonic seconds); replaceable in tests."""
        return self.resilient.clock if self.resilient is not None else time.monotonic

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        if self.resilient is not None:
            self.resilient.clock = clock

    # --- the request steps -----------------------------------------------------------

    def gate(self) -> None:
        """Before-request step: Flask-Limiter's check, but never on the extension's own
        endpoints, and with the app's decorated views bound first."""
        if not self.enabled:  # Flask-Limiter's switch, which an app may flip at run time
            return
        ctx = compat_flask.request_ctx()
        if ctx is None or ctx.request.path in self._internal_paths:
            return
        app = ctx.app
        if len(app.view_functions) != self._view_count:
            self.bind_views(app)
        check = self._gw_check
        if check is not None:
            check()

    def response_hook(self, response: Response) -> Response:
        """After-request step: Flask-Limiter's headers, ``Retry-After`` on a 429 only, and
        the breach counted and logged."""
        if not self.enabled or self._gw_inject is None:
            return response
        return self.finish(response, self.current_limit)

    def finish(self, response: Response, current: RequestLimit | None) -> Response:
        """Flask-Limiter's header step on ``response``; ``current`` is the request's limit."""
        if current is None:
            return response  # the limiter counted nothing in this request
        name = self._retry_after_header
        before = _header(response, name)
        inject = self._gw_inject
        assert inject is not None
        with contextlib.suppress(StorageUnavailable):  # fail-closed, storage down: no headers
            response = inject(response)
        if response.status_code != 429 or not current.breached:
            # Flask-Limiter sets Retry-After on every response; it means something only
            # on the 429 of a breach, and another response's own value (an open
            # breaker's 503, a 429 the app made) must stay as it was.
            if before is None:
                response.headers.remove(name)
            else:
                response.headers[name] = before
        if not current.breached:
            return response
        retry_after = retry_after_of(current)
        if response.status_code == 429:
            sent = response.headers.get(name)
            if sent is None or (sent.isdigit() and int(sent) < 1):
                # Under a second left: "0" would invite a retry now.
                response.headers[name] = str(retry_after)
        self.report_breach(current, retry_after)
        return response

    def report_breach(self, limit: RequestLimit, retry_after: int) -> None:
        """Count the breach in ``rate_limit_exceeded_total{route}`` and log it at info."""
        try:
            rule = request.url_rule
            route = rule.rule if rule is not None else UNMATCHED_ROUTE
            self._state.recorder.rate_limit_exceeded(route)
            _log.info(
                "rate limit exceeded",
                extra={
                    "route": route,
                    "method": request.method,
                    "rate_limit": str(limit.limit),
                    "retry_after": retry_after,
                },
            )
        except Exception:  # instrumentation never breaks a request
            _log.debug("reporting a rate limit breach failed", exc_info=True)


def _register(
    hooks: dict[Any, list[Any]], step: Callable[..., Any], anchor: tuple[Any, ...]
) -> bool:
    """Add ``step`` to the app-wide ``hooks`` right after the last of ``anchor`` still there;
    False if it was there already.

    The list is replaced, not changed: a request going through the old one is unaffected.
    """
    current = list(hooks.get(None, ()))
    if step in current:
        return False
    position = 0
    for index, hook in enumerate(current):
        if any(hook is known for known in anchor):
            position = index + 1
    current.insert(position, step)
    hooks[None] = current
    return True


def _unregister(hooks: dict[Any, list[Any]], step: Callable[..., Any]) -> None:
    """Take ``step`` out of the app-wide ``hooks`` (the list is replaced, as by _register)."""
    current = hooks.get(None)
    if current is not None and step in current:
        remaining = [hook for hook in current if hook != step]
        if remaining:
            hooks[None] = remaining
        else:
            hooks.pop(None, None)


def retry_after_of(limit: RequestLimit) -> int:
    """Whole seconds until ``limit``'s window resets (at least 1)."""
    try:
        return max(1, math.ceil(limit.window.reset_time - time.time()))
    except Exception:  # the storage is down (fail closed): the whole window, an upper bound
        return max(1, int(limit.limit.get_expiry()))


def _header(response: Response, name: str) -> str | None:
    lowered = name.lower()
    for key, value in response.headers:  # (Headers.get raises internally on a miss)
        if key.lower() == lowered:
            return value
    return None


def problem_detail(info: ErrorInfo) -> None:
    """Error listener: a 429's problem+json ``detail`` says which limit was exceeded.

    Flask-Limiter's own ``description`` (the limit, or the limit's ``error_message``) is
    left as it is, for the app's own ``errorhandler(429)``.
    """
    error = info.error
    if isinstance(error, RateLimitExceeded) and not error.limit.error_message:
        info.extensions["detail"] = f"Rate limit exceeded: {error.limit.limit}."


def exempt_internal_views(limiter: Limiter, app: Flask, paths: set[str]) -> None:
    """Mark the extension's own endpoints (health, metrics) exempt with Flask-Limiter's
    ``exempt``, so its own evaluation and its CLI (``flask limiter limits``) see them as
    they are served: never limited. A view without a name gets one first, as view
    functions have: Flask-Limiter names every view it looks at."""
    for rule in list(app.url_map.iter_rules()):
        view = app.view_functions.get(rule.endpoint)
        if rule.rule not in paths or view is None:
            continue
        if not hasattr(view, "__name__"):
            view = app.view_functions[rule.endpoint] = _named(view, rule.endpoint)
        limiter.exempt(view)


def _named(view: Callable[..., Any], endpoint: str) -> Callable[..., Any]:
    def internal_view(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    name = endpoint.rsplit(".", 1)[-1]
    internal_view.__name__ = internal_view.__qualname__ = name
    internal_view.__module__ = type(view).__module__
    internal_view.__doc__ = type(view).__doc__
    internal_view.__wrapped__ = view  # type: ignore[attr-defined]
    return internal_view


class _DropClientKey(logging.Filter):
    """Takes the client key out of Flask-Limiter's breach line before any handler sees it.

    The key is whatever the key function returns: an address, often an API token or a
    user ID, which must not end up in logs on every breach. The line keeps the limit and
    the endpoint; the extension's own breach record carries the route and request ID.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == _KEYED_BREACH_LINE and isinstance(args, tuple) and len(args) == 3:
            record.msg = BREACH_LINE
            record.args = (args[0], args[2])
        return True


def quiet_flask_limiters_logger(logger: logging.Logger) -> None:
    """Flask-Limiter's logger: one NullHandler (it adds one per Limiter), and no client key
    (a filter of the process, kept in :mod:`flask_gateway_obs.core.process`)."""
    nulls = [h for h in logger.handlers if type(h) is logging.NullHandler]
    for handler in nulls[1:]:
        logger.removeHandler(handler)
    installed = process.registry("ratelimit.client_key_filter", _DropClientKey)
    if installed not in logger.filters:
        logger.addFilter(installed)
        process.on_reset("ratelimit.client_key_filter", lambda: logger.removeFilter(installed))
