"""Flask internals read on the hot path: the current request and app contexts, without a proxy.

Verified with Flask 3.0 and 3.1 (``flask.globals._cv_request`` and ``_cv_app``). Outside
them the public proxies serve (a few hundred nanoseconds more per call); the concern
that uses this module says so once. Callers use the
functions through the module (``compat_flask.request_ctx()``), so :func:`select` can switch
the path at run time (tests run both).
"""

from __future__ import annotations

import functools
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import flask
from flask import has_app_context, has_request_context

if TYPE_CHECKING:
    from collections.abc import Callable

    from flask.ctx import AppContext, RequestContext

__all__ = [
    "VERIFIED",
    "VERIFIED_SERIES",
    "app_ctx",
    "current_app_or_none",
    "request_ctx",
    "request_environ",
    "select",
]

#: Flask releases (major, minor) whose context variables this module was checked against.
VERIFIED_SERIES = ((3, 0), (3, 1))


def series(text: str) -> tuple[int, int]:
    """The (major, minor) of a version string; (0, 0) when it has none."""
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


#: Whether the installed Flask is one of the verified series.
VERIFIED = series(version("flask")) in VERIFIED_SERIES


# --- the public path -----------------------------------------------------------------------


def _public_request_ctx() -> RequestContext | None:
    if not has_request_context():
        return None
    ctx: RequestContext = flask.globals.request_ctx._get_current_object()  # type: ignore[attr-defined]
    return ctx


def _public_app_ctx() -> AppContext | None:
    if not has_app_context():
        return None
    ctx: AppContext = flask.globals.app_ctx._get_current_object()  # type: ignore[attr-defined]
    return ctx


def _public_app() -> flask.Flask | None:
    if not has_app_context():
        return None
    app: flask.Flask = flask.current_app._get_current_object()  # type: ignore[attr-defined]
    return app


def _public_environ() -> dict[str, Any]:
    if not has_request_context():
        return {}
    environ: dict[str, Any] = flask.request.environ
    return environ


# --- the fast path -------------------------------------------------------------------------

_fast: tuple[Callable[[], Any], ...] | None = None
if VERIFIED:
    from flask.globals import _cv_app, _cv_request

    # The context variables' own ``get``, bound: no Python frame per call.
    _fast_request_ctx = functools.partial(_cv_request.get, None)
    _fast_app_ctx = functools.partial(_cv_app.get, None)

    def _fast_app() -> flask.Flask | None:
        ctx = _cv_app.get(None)
        return ctx.app if ctx is not None else None

    def _fast_environ() -> dict[str, Any]:
        ctx = _cv_request.get(None)
        environ: dict[str, Any] = ctx.request.environ if ctx is not None else {}
        return environ

    _fast = (_fast_request_ctx, _fast_app_ctx, _fast_app, _fast_environ)

#: The current request context, or None outside a request.
request_ctx: Callable[[], RequestContext | None] = _public_request_ctx
#: The current app context, or None outside one.
app_ctx: Callable[[], AppContext | None] = _public_app_ctx
#: The app of the current app context, or None outside one.
current_app_or_none: Callable[[], flask.Flask | None] = _public_app
#: The WSGI environ of the current request (empty outside one).
request_environ: Callable[[], dict[str, Any]] = _public_environ


def select(fast: bool) -> bool:
    """Use the context variables (``fast``, when verified) or the public proxies; returns
    whether the fast path is now in use."""
    global request_ctx, app_ctx, current_app_or_none, request_environ
    if fast and _fast is not None:
        request_ctx, app_ctx, current_app_or_none, request_environ = _fast
        return True
    request_ctx, app_ctx, current_app_or_none, request_environ = (
        _public_request_ctx,
        _public_app_ctx,
        _public_app,
        _public_environ,
    )
    return False


select(True)
