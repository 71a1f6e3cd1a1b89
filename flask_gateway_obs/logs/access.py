"""The access line: one per request, written on a fast path when only our handler listens."""

from __future__ import annotations

import logging
import logging.handlers

from .formatters import AccessFields, access_fields, access_message
from .handlers import _StdoutHandler
from .loggers import ACCESS_LOGGER_NAME, LOGGER_NAME, emit
from .schemas import SCHEMAS

#: Formatters whose ``access_line`` writes what their ``format`` would (exact types:
#: a subclass may change ``format``, so it takes the ordinary path).
FAST_FORMATTERS = frozenset(SCHEMAS.values())


class AccessLog:
    """Writes the access line of each request.

    When the only thing listening is the extension's own JSON stdout handler (the
    usual production set-up), the line is serialised and written directly, without
    building a ``LogRecord``: that is most of the per-request cost of logging.
    Any other handler, filter or level set-up takes the ordinary logging path.
    """

    def __init__(self, fast_handler: logging.Handler | None = None) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER_NAME)
        self._parent = logging.getLogger(LOGGER_NAME)
        self._root = logging.getLogger()
        self._fast = fast_handler if isinstance(fast_handler, _StdoutHandler) else None

    def write(self, entry: AccessFields) -> None:
        """Log one request's access line at info."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        fast = self._fast
        if fast is not None:  # our handler alone, as it left it: the line, directly
            root_handlers = self._root.handlers
            parent = self._parent
            if (
                len(root_handlers) == 1
                and root_handlers[0] is fast
                and not logger.handlers
                and not parent.handlers
                and logger.propagate
                and parent.propagate
                and not logger.filters
                and not parent.filters
                and not fast.filters
                and fast.level <= logging.INFO
                and type(fast.formatter) in FAST_FORMATTERS
            ):
                fast.write_line(fast.formatter.access_line(entry))  # type: ignore[union-attr]
                return
        emit(logger, logging.INFO, access_message(entry), access_fields(entry))
