"""Whether opentelemetry-instrumentation-flask traces an app (so the extension adopts
its SERVER span instead of starting a second one).

Private path (verified with opentelemetry-instrumentation-flask 0.56b0 and 0.66b1; taken
for 0.56 to 0.66): the ``_is_instrumented_by_opentelemetry`` flag that
``FlaskInstrumentor.instrument_app(app)`` and the instrumented ``Flask`` class set on the
app. Public path (any other version): ``FlaskInstrumentor().is_instrumented_by_opentelemetry``,
which knows of ``FlaskInstrumentor().instrument()`` only; an app instrumented on its own
with ``instrument_app`` then gets the extension's SERVER span with the instrumentation's
span as an INTERNAL child (one server span still, logs still correlated).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

__all__ = ["VERIFIED", "detector", "force_public_path"]

#: Minor versions (0.N) whose private flag was checked.
VERIFIED = range(56, 67)
_DISTRIBUTION = "opentelemetry-instrumentation-flask"
_MODULE = "opentelemetry.instrumentation.flask"
_log = logging.getLogger("flask_gateway_obs.tracing")
_forced_public = False


def force_public_path(public: bool = True) -> None:
    """Take the public path whatever the version (the tests run both paths)."""
    global _forced_public
    _forced_public = public


def _minor(version: str) -> int | None:
    match = re.match(r"0\.(\d+)", version)
    return int(match[1]) if match else None


def _never(app: Any) -> bool:
    return False


def _private(app: Any) -> bool:
    return getattr(app, "_is_instrumented_by_opentelemetry", False) is True


def _public(app: Any) -> bool:
    module = sys.modules.get(_MODULE)
    if module is None:
        return False
    return bool(module.FlaskInstrumentor().is_instrumented_by_opentelemetry)


def detector() -> Callable[[Any], bool]:
    """``instrumented(app) -> bool`` for the installed version (checked per request: the
    app may be instrumented after ``init_app``)."""
    try:
        version = metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return _never
    minor = _minor(version)
    if not _forced_public and minor is not None and minor in VERIFIED:
        return _private
    _log.info(
        "%s %s: the public path detects FlaskInstrumentor().instrument() only",
        _DISTRIBUTION,
        version,
    )
    return _public
