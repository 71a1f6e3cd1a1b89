"""What an error event on a span says: the exception's type, and its message scrubbed."""

from __future__ import annotations

from collections.abc import Iterable

from ..logs import REPORT_FRAGMENTS, Redactor, TextMasker

__all__ = ["MessageScrubber", "error_type_of"]

_MAX_MESSAGE = 1024


def error_type_of(error: BaseException) -> str:
    """``error.type`` of an exception: its fully qualified class name."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class MessageScrubber:
    """An exception's message as error events carry it, masked as Sentry masks event text
    (the same fragments: the logs', :data:`~flask_gateway_obs.logs.REPORT_FRAGMENTS` and
    the configured extra ones), then cut to a bounded length.

    :param fragments: the extra key fragments (``GATEWAY_OBS_LOG_REDACT_KEYS``, the Sentry
        denylist).
    """

    def __init__(self, fragments: Iterable[str] = ()) -> None:
        self.masker = TextMasker(Redactor((*REPORT_FRAGMENTS, *fragments)).fragments)

    def __call__(self, message: str) -> str:
        message = self.masker.mask(message)
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + "..."
        return message
