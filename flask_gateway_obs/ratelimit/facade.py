"""``obs.limiter``: the app's own :class:`flask_limiter.Limiter` where there is one app to
speak of, else a stand-in whose decorators apply to every app of the ``GatewayObs``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from flask import current_app, has_app_context
from flask_limiter import Limiter

from .decorators import DeferredDecorators, limiter_of

if TYPE_CHECKING:
    from ..core.state import Extension
    from .identity import KeyFunc

__all__ = ["DeferredLimiter", "InertLimiter", "limiter_for"]


class InertLimiter(DeferredDecorators, Limiter):  # type: ignore[misc]
    """The app's limiter with ``GATEWAY_OBS_RATELIMIT_ENABLED`` off: counts nothing. Its
    decorators are the extension's, so a view still counts in another app that limits."""

    def __init__(self, key_func: KeyFunc, obs: Extension | None) -> None:
        super().__init__(key_func, enabled=False)
        self._obs = obs


class DeferredLimiter(DeferredDecorators):
    """``obs.limiter`` before any app is set up, or with several: decorators for every app.

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
        return [s.limiter for s in states if isinstance(s.limiter, Limiter)]

    def _here(self, name: str) -> Limiter:
        """The limiter ``name`` is asked of: the current app's, else the only app's."""
        if has_app_context():
            limiter = limiter_of(current_app)
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

    def request_filter(self, fn: Callable[[], bool]) -> Callable[[], bool]:
        """Like :meth:`flask_limiter.Limiter.request_filter`: the current app's, or, outside
        an app context, every app's."""
        if has_app_context():
            limiter = limiter_of(current_app)
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
    """``obs.limiter``: the current app's limiter; outside an app context, the limiter of
    the one app ``obs`` set up; else (no app yet, or several) the deferred one."""
    if has_app_context():
        limiter = limiter_of(current_app)
        if limiter is not None:
            return limiter
    else:
        states = obs._states
        if len(states) == 1 and isinstance(states[0].limiter, Limiter):
            only: Limiter = states[0].limiter
            return only
    if obs._limiter_facade is None:
        obs._limiter_facade = DeferredLimiter(obs)
    # Offers the decorators of a Limiter (limit, shared_limit, exempt, request_filter).
    return cast(Limiter, obs._limiter_facade)
