"""``limit`` and ``shared_limit`` that find the serving app's limiter when they are used.

A view decorated at import time (before any app exists), in an app factory, or in another
app's context counts in whichever app serves it: each app's limiter builds Flask-Limiter's
own decorators for the view at its first call. On a blueprint, a limit applies to the
apps the blueprint is registered on, and to no other. In a ``with`` block, it is
Flask-Limiter's context manager on the limiter of the app serving the request.
"""

from __future__ import annotations

import functools
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, current_app
from flask_limiter import ExemptionScope, Limiter, RouteLimit

from .._compat import flask as compat_flask
from ..core.state import EXTENSION_KEY

if TYPE_CHECKING:
    from flask.sansio.app import App
    from flask.sansio.blueprints import BlueprintSetupState

    from ..core.state import Extension

__all__ = ["DEFAULT_EXEMPTION", "DeferredDecorators", "ViewBinding", "for_blueprint"]

DEFERRED_ATTR = "_gateway_obs_deferred_limits"
EXEMPT_ATTR = "_gateway_obs_exempt"  # exemption flags of a view function, for every app
BLUEPRINT_ATTR = "_gateway_obs_rate_limits"  # what a blueprint asks of each app's limiter
DEFAULT_EXEMPTION = ExemptionScope.APPLICATION | ExemptionScope.DEFAULT | ExemptionScope.META

_NO_VIEWS: dict[Any, Any] = {}


def limiter_of(app: App) -> Limiter | None:
    """The rate limiter of ``app`` (set up by the extension), if any."""
    limiter = getattr(app.extensions.get(EXTENSION_KEY), "limiter", None)
    return limiter if isinstance(limiter, Limiter) else None


class ViewBinding(Limiter):
    """What a limiter does with the views decorated through the extension: it wraps each
    in Flask-Limiter's own decorators once, and applies the exemptions marked on them."""

    _views: dict[_DeferredLimits, Callable[..., Any]]
    _view_count: int
    _views_lock: threading.RLock

    def _init_views(self) -> None:
        self._views = {}
        self._view_count = -1
        self._views_lock = threading.RLock()

    def _limits_changed(self) -> None:
        """A limit, an exemption or a route was added (the fast path drops its plans)."""

    def bind_views(self, app: Flask) -> None:
        """Bind the app's decorated views and apply the exemptions marked on its views."""
        with self._views_lock:
            for view in list(app.view_functions.values()):
                deferred = getattr(view, DEFERRED_ATTR, None)
                if isinstance(deferred, _DeferredLimits):
                    self.bound_view(deferred)
                flags = getattr(view, EXEMPT_ATTR, None)
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
                    deferred.limiters.add(self)
        return view

    def add_decoration(self, deferred: _DeferredLimits, decoration: _Decoration) -> None:
        """One more limit on a view this limiter has bound: Flask-Limiter's decorator on
        top (it registers the limit under the view's name; the inner wrapper checks it)."""
        with self._views_lock:
            view = self._views.get(deferred)
            if view is not None:
                self._views[deferred] = decoration.apply(self)(view)


class _Decoration:
    """``limit(...)`` or ``shared_limit(...)``: a decorator for views and blueprints, and a
    context manager inside a view, that finds the app's limiter when it is needed."""

    def __init__(
        self, obs: Extension | None, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
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
            for_blueprint(obj, lambda limiter: self.apply(limiter)(obj), self.obs)
            return None
        deferred = getattr(obj, DEFERRED_ATTR, None)
        if isinstance(deferred, _DeferredLimits):
            # Stacked decorators, or a limit added later: one wrapper, the limits applied
            # innermost first, at once in the apps that serve the view already.
            deferred.decorations.append(self)
            for limiter in list(deferred.limiters):
                limiter.add_decoration(deferred, self)
            return obj
        deferred = _DeferredLimits(obj, [self])

        @functools.wraps(obj)
        def view(*args: Any, **kwargs: Any) -> Any:
            ctx = compat_flask.app_ctx()
            if ctx is not None:  # the common case first: bound to this app's limiter already
                limiter = getattr(ctx.app.extensions.get(EXTENSION_KEY), "limiter", None)
                bound = getattr(limiter, "_views", _NO_VIEWS).get(deferred)
                if bound is not None:
                    return bound(*args, **kwargs)
            return deferred.call(args, kwargs)

        setattr(view, DEFERRED_ATTR, deferred)
        return view

    def __enter__(self) -> None:
        # Flask-Limiter's RouteLimit.__enter__, on the limiter of the app serving the
        # request, naming the block after the ``with`` line (the caller), not this frame.
        limiter = limiter_of(current_app)
        if limiter is None or not (limiter.enabled and limiter.initialized):
            return
        caller = traceback.extract_stack(limit=2)[0]
        # Flask-Limiter's own decorator on a no-op named after the block: it registers
        # the limit and the endpoint hint under that name and runs the same check.
        self.apply(limiter)(_block(caller.filename, caller.name, caller.lineno or 0))()

    def __exit__(self, *exc_info: object) -> None:
        return None


def _block(filename: str, name: str, line: int) -> Callable[[], None]:
    """A no-op whose qualified name is unique to one ``with`` block of a view."""

    def block() -> None:
        return None

    block.__module__, block.__name__, block.__qualname__ = filename, name, str(line)
    return block


class _DeferredLimits:
    """A view function and the limits declared on it, for whichever app serves it."""

    def __init__(self, original: Callable[..., Any], decorations: list[_Decoration]) -> None:
        self.original = original
        self.decorations = decorations
        #: The limiters that have bound the view (a later limit reaches them at once).
        self.limiters: weakref.WeakSet[ViewBinding] = weakref.WeakSet()

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the view as the current app's limiter decorates it (binding it if new)."""
        app = compat_flask.current_app_or_none() or current_app  # (outside: Flask's error)
        limiter = getattr(app.extensions.get(EXTENSION_KEY), "limiter", None)
        if isinstance(limiter, ViewBinding) and getattr(limiter, "initialized", False):
            return limiter.bound_view(self)(*args, **kwargs)
        return app.ensure_sync(self.original)(*args, **kwargs)


class DeferredDecorators:
    """``limit``, ``shared_limit`` and ``exempt`` that find the serving app's limiter at call
    time, so a decorated view counts in whichever app serves it."""

    _obs: Extension | None

    def limit(self, limit_value: str | Callable[[], str], **kwargs: Any) -> _Decoration:
        """Like :meth:`flask_limiter.Limiter.limit`, for a view, a blueprint or a block."""
        return _Decoration(self._obs, "limit", (limit_value,), kwargs)

    def shared_limit(
        self, limit_value: str | Callable[[], str], scope: str | Callable[[str], str], **kwargs: Any
    ) -> _Decoration:
        """Like :meth:`flask_limiter.Limiter.shared_limit`, for a view, a blueprint or a block."""
        return _Decoration(self._obs, "shared_limit", (limit_value, scope), kwargs)

    def exempt(self, obj: Any = None, *, flags: ExemptionScope = DEFAULT_EXEMPTION) -> Any:
        """Like :meth:`flask_limiter.Limiter.exempt`, in every app serving ``obj``."""
        if obj is None:
            return functools.partial(self.exempt, flags=flags)
        if isinstance(obj, Blueprint):
            bp = obj
            for_blueprint(bp, lambda limiter: Limiter.exempt(limiter, bp, flags=flags), self._obs)
            return obj
        setattr(obj, EXEMPT_ATTR, flags)
        for state in self._obs._states if self._obs is not None else ():
            if isinstance(state.limiter, ViewBinding):
                state.limiter._view_count = -1  # looks at its views again at the next request
        owner: object = self
        if isinstance(owner, Limiter) and owner.initialized:
            Limiter.exempt(owner, obj, flags=flags)
        return obj


def for_blueprint(
    bp: Blueprint, action: Callable[[Limiter], object], obs: Extension | None
) -> None:
    """Run ``action`` on the limiter of each app ``bp`` is registered on, now and later.

    The actions stay on the blueprint: an app gets them when the blueprint is registered
    on it (or, registered before the extension, from ``init_app``), and only then.
    """
    actions: list[Callable[[Limiter], object]] | None = bp.__dict__.get(BLUEPRINT_ATTR)
    if actions is None:
        actions = []
        setattr(bp, BLUEPRINT_ATTR, actions)
        known = actions

        def registered(setup: BlueprintSetupState) -> None:
            if setup.first_registration:
                limiter = limiter_of(setup.app)
                if isinstance(limiter, ViewBinding):
                    for known_action in known:
                        known_action(limiter)

        try:
            bp.record_once(registered)
        except AssertionError:
            # Flask closes a blueprint's setup methods once it is registered; apps that
            # register it later must still get its limits.
            bp.deferred_functions.append(registered)
    actions.append(action)
    for state in obs._states if obs is not None else ():
        limiter = state.limiter
        if isinstance(limiter, ViewBinding) and any(
            registered_bp is bp for registered_bp in state.app.blueprints.values()
        ):
            action(limiter)


def apply_blueprint_limits(app: Flask, limiter: Limiter) -> None:
    """Give a new limiter the limits and exemptions of blueprints registered before it."""
    for bp in list(app.blueprints.values()):
        for action in bp.__dict__.get(BLUEPRINT_ATTR, ()):
            action(limiter)
