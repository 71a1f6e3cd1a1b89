"""Logger names, :func:`get_logger` and the keyword-argument logger it returns."""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Mapping, MutableMapping
from typing import Any

LOGGER_NAME = "flask_gateway_obs"
ACCESS_LOGGER_NAME = "flask_gateway_obs.access"

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_LOG_KWARGS = frozenset({"exc_info", "stack_info", "stacklevel", "extra"})


class BoundLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose records carry a fixed context; keyword arguments become fields.

    ``log.info("charged", amount=12)`` logs ``amount`` as a field. ``child(**more)``
    returns a logger with the context extended.
    """

    def __init__(self, logger: logging.Logger, context: Mapping[str, Any]) -> None:
        super().__init__(logger, _safe_context(context))

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        fields = dict(self.extra or {})
        for key in [k for k in kwargs if k not in _LOG_KWARGS]:
            fields[key] = kwargs.pop(key)
        given = kwargs.get("extra")
        if given:
            fields.update(given)
        kwargs["extra"] = _safe_context(fields)
        return msg, kwargs

    def child(self, **more: Any) -> BoundLogger:
        """A logger with this one's context plus ``more``."""
        return BoundLogger(self.logger, {**(self.extra or {}), **more})

    def fatal(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Alias of :meth:`critical`."""
        self.critical(msg, *args, **kwargs)


def _safe_context(context: Mapping[str, Any]) -> dict[str, Any]:
    # LogRecord refuses extra keys that shadow its own attributes; keep them, renamed.
    return {(f"{k}_" if k in _RESERVED else k): v for k, v in context.items()}


def get_logger(name: str | None = None, **context: Any) -> BoundLogger:
    """A :class:`BoundLogger` named ``name`` (default: the extension's) with ``context``.

    Inside a request every record also carries ``request_id``.
    """
    return BoundLogger(logging.getLogger(name or LOGGER_NAME), context)


def emit(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """Log without the caller lookup of ``Logger.info`` (for hot paths)."""
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(logger.name, level, "(gateway)", 0, msg, (), None, extra=fields)
    logger.handle(record)
