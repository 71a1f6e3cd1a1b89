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

    # The message and level are positional-only, so that fields named ``msg`` or
    # ``level`` are fields like any other instead of a TypeError.

    def log(self, level: int, msg: Any, /, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Log ``msg`` at ``level``; keyword arguments other than logging's own become fields."""
        self._log_at(level, msg, args, kwargs)

    def debug(self, msg: Any, /, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Log at debug."""
        self._log_at(logging.DEBUG, msg, args, kwargs)

    def info(self, msg: Any, /, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Log at info."""
        self._log_at(logging.INFO, msg, args, kwargs)

    def warning(self, msg: Any, /, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Log at warning."""
        self._log_at(logging.WARNING, msg, args, kwargs)

    def error(self, msg: Any, /, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Log at error."""
        self._log_at(logging.ERROR, msg, args, kwargs)

    def exception(self, msg: Any, /, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Log at error with the exception being handled."""
        kwargs.setdefault("exc_info", True)
        self._log_at(logging.ERROR, msg, args, kwargs)

    def critical(self, msg: Any, /, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Log at critical."""
        self._log_at(logging.CRITICAL, msg, args, kwargs)

    def fatal(self, msg: Any, /, *args: Any, **kwargs: Any) -> None:
        """Alias of :meth:`critical`."""
        self._log_at(logging.CRITICAL, msg, args, kwargs)

    def _log_at(self, level: int, msg: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.logger.isEnabledFor(level):
            return
        msg, processed = self.process(msg, kwargs)
        # The caller of debug()/info()/..., not this module, is the record's origin.
        processed["stacklevel"] = processed.get("stacklevel", 1) + 2
        self.logger.log(level, msg, *args, **processed)


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
