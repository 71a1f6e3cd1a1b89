"""The AppError family and one renderer of every error as RFC 9457 problem details.

Every error response, 404 and 405 included, is ``application/problem+json`` with
``type``, ``title``, ``status``, ``detail``, ``instance``, ``request_id`` and ``code``.
A 5xx caused by a programming error never carries the exception's text.

The handler reports each error exactly once to the listeners registered on the
app's state (metrics and Sentry use this), then logs it and renders it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request
from werkzeug.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    HTTPException,
    InternalServerError,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    UnprocessableEntity,
)
from werkzeug.wrappers import Request as WerkzeugRequest

from .core.context import get_request_id
from .core.contracts import ErrorInfo, ErrorListener
from .logs import LOGGER_NAME

if TYPE_CHECKING:
    from .core.state import ObsState

__all__ = [
    "AppError",
    "BadRequestError",
    "BulkheadFullError",
    "CircuitOpenError",
    "ConflictError",
    "ErrorInfo",
    "ErrorListener",
    "ForbiddenError",
    "NotFoundError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "ValidationError",
]

PROBLEM_JSON = "application/problem+json"
GENERIC_DETAIL = "An internal error occurred."


class AppError(Exception):
    """An error the application raises on purpose, rendered as problem details.

    :param message: the ``detail`` shown to the client (for operational errors).
    :param status_code: the HTTP status.
    :param code: a stable machine-readable code, e.g. ``"payment_declined"``.
    :param details: extra JSON-ready data, e.g. field errors (shown as ``errors``).
    :param is_operational: ``True`` for expected failures (bad input, a dependency
        down); ``False`` for bugs, which are logged with a stack and whose text is
        hidden from the client.
    """

    status_code: int = 500
    default_code: str | None = None
    #: Mirrors ``status_code`` for werkzeug, which finds ``errorhandler(404)`` by it.
    code: int | None = None

    def __init__(
        self,
        message: str = "",
        status_code: int | None = None,
        *,
        code: str | None = None,
        details: Any = None,
        is_operational: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            if not 400 <= int(status_code) <= 599:
                raise ValueError(f"status_code must be 400-599, got {status_code!r}")
            self.status_code = int(status_code)
        self.error_code = code or self.default_code
        self.details = details
        self.is_operational = is_operational
        # For subclasses that are also werkzeug HTTPExceptions, super().__init__ set
        # ``description`` and ``response``; Flask finds ``errorhandler(404)`` by ``code``.
        self.code = self.status_code

    def __str__(self) -> str:
        return self.message

    def headers(self) -> dict[str, str]:
        """Headers to add to the response."""
        return {}


class BadRequestError(AppError, BadRequest):
    """400: the request is malformed."""

    status_code = code = 400
    default_code = "bad_request"


class UnauthorizedError(AppError, Unauthorized):
    """401: authentication is missing or wrong."""

    status_code = code = 401
    default_code = "unauthorized"


class ForbiddenError(AppError, Forbidden):
    """403: authenticated but not allowed."""

    status_code = code = 403
    default_code = "forbidden"


class NotFoundError(AppError, NotFound):
    """404: the resource does not exist."""

    status_code = code = 404
    default_code = "not_found"


class ConflictError(AppError, Conflict):
    """409: the request conflicts with the resource's state."""

    status_code = code = 409
    default_code = "conflict"


class ValidationError(AppError, UnprocessableEntity):
    """422: the request is well-formed but its content is invalid."""

    status_code = code = 422
    default_code = "validation_error"


class ServiceUnavailableError(AppError, ServiceUnavailable):
    """503: a dependency is unavailable; ``retry_after`` seconds become ``Retry-After``."""

    status_code = code = 503
    default_code = "service_unavailable"

    def __init__(
        self,
        message: str = "Service temporarily unavailable.",
        status_code: int | None = None,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        details: Any = None,
        is_operational: bool = True,
    ) -> None:
        super().__init__(
            message, status_code, code=code, details=details, is_operational=is_operational
        )
        #: Whole seconds (rounded up), as ``Retry-After`` carries them.
        self.retry_after = None if retry_after is None else max(1, math.ceil(retry_after))

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}


class CircuitOpenError(ServiceUnavailableError):
    """503: a circuit breaker is open; calls fail fast until ``retry_after`` passes."""

    default_code = "circuit_open"

    def __init__(self, breaker: str, retry_after: float | None = None) -> None:
        super().__init__(
            f"The upstream '{breaker}' is unavailable; try again later.",
            retry_after=retry_after,
        )
        self.breaker = breaker


class BulkheadFullError(ServiceUnavailableError):
    """503: a bulkhead already runs its ``max_concurrent`` calls and no room came free
    within its ``max_wait``; the call was not made."""

    default_code = "bulkhead_full"

    def __init__(self, bulkhead: str, max_concurrent: int, retry_after: float = 1.0) -> None:
        super().__init__(
            f"Too many calls to '{bulkhead}' at once ({max_concurrent}); try again shortly.",
            retry_after=retry_after,
        )
        self.bulkhead = bulkhead
        self.max_concurrent = max_concurrent


# --- rendering --------------------------------------------------------------------------


_log = logging.getLogger(LOGGER_NAME)


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _default_code(status: int) -> str:
    return _status_phrase(status).lower().replace(" ", "_").replace("-", "_").replace("'", "")


def describe(error: BaseException) -> ErrorInfo:
    """Classify an error: its status, code and whether it is operational."""
    if isinstance(error, AppError):
        status = error.status_code
        code = error.error_code or _default_code(status)
        return ErrorInfo(error, status, code, error.is_operational)
    if isinstance(error, HTTPException) and error.code is not None:
        # ``abort(...)`` is deliberate; only a wrapped unhandled error is a bug.
        if getattr(error, "original_exception", None) is not None:
            return ErrorInfo(error, error.code, "internal_error", False)
        return ErrorInfo(error, error.code, _default_code(error.code), True)
    return ErrorInfo(error, 500, "internal_error", False)


def _detail(info: ErrorInfo) -> str:
    error = info.error
    if isinstance(error, AppError):
        if not error.is_operational and info.status >= 500:
            return GENERIC_DETAIL
        return error.message or _status_phrase(info.status)
    if isinstance(error, HTTPException) and info.status < 500:
        return error.description or _status_phrase(info.status)
    if isinstance(error, HTTPException) and error.code != 500:
        # werkzeug's own 5xx texts (501, 502, 503, ...) are generic, never the cause.
        return type(error).description or _status_phrase(info.status)
    return GENERIC_DETAIL


def _headers(error: BaseException) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(error, HTTPException) and not isinstance(error, AppError):
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                headers[name] = value
    if isinstance(error, AppError):
        headers.update(error.headers())
    return headers


def problem_body(
    info: ErrorInfo, type_base: str | None, request_id: str | None = None
) -> dict[str, Any]:
    """The RFC 9457 body for an error (without the listeners' extensions)."""
    body: dict[str, Any] = {
        "type": f"{type_base.rstrip('/')}/{info.code}" if type_base else "about:blank",
        "title": _status_phrase(info.status),
        "status": info.status,
        "detail": _detail(info),
        "instance": request.path if request else None,
        "request_id": request_id or get_request_id(),
        "code": info.code,
    }
    error = info.error
    if isinstance(error, AppError) and error.details is not None and info.operational:
        body["errors"] = error.details
    return body


def problem_response(
    body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> Response:
    """A ``application/problem+json`` response."""
    return Response(problem_json(body), status=status, mimetype=PROBLEM_JSON, headers=headers)


def problem_json(body: dict[str, Any]) -> str:
    """The body as strict JSON. What JSON cannot hold in ``details`` is rendered as
    text: NaN and Infinity become strings, keys that are not strings (a tuple) their
    ``str()``, other objects their ``str()``; the status and the rest stay."""
    try:
        return json.dumps(body, default=str, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_jsonable(body, 0), default=str)


def _jsonable(value: Any, depth: int) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if depth > 16:  # a self-containing structure
        return "..."
    if isinstance(value, dict):
        return {_key(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in value]
    return value


def _key(key: Any) -> str | int | float | bool | None:
    if key is None or isinstance(key, (str, int, bool)):
        return key
    if isinstance(key, float):
        return key if math.isfinite(key) else repr(key)
    return str(key)


def _log_error(info: ErrorInfo) -> None:
    try:
        error = info.error
        fields = {
            "error_code": info.code,
            "status": info.status,
            "error_type": type(error).__name__,
        }
        if not info.operational:
            if isinstance(error, InternalServerError) and error.original_exception is not None:
                return  # Flask's handle_exception has logged it, stack included, via app.logger
            _log.error("unhandled error", exc_info=error, extra=fields)
        elif isinstance(error, AppError):
            _log.warning("%s", error.message or info.code, extra=fields)
        elif info.status >= 500:
            _log.error("%s", _status_phrase(info.status), extra=fields)
        else:
            # werkzeug's 4xx (404 from scanners, 405) are in the access log already.
            _log.debug("%s", _status_phrase(info.status), extra=fields)
    except Exception:  # logging must never turn an error response into a crash
        pass


#: What a body that could not be read or parsed answers (the client's fault, not a bug).
UNREADABLE_BODY = "The request body could not be read: it is malformed or nested too deeply."


def unreadable_body(error: BaseException) -> BadRequest | None:
    """A 400 for an error that reading or parsing the request body raised, else None.

    Flask turns a body that is not JSON into a 400 but lets through what the stream or
    the parser raise otherwise: the server's error for a broken chunked encoding
    (werkzeug's ``OSError``, gunicorn's ``InvalidChunkSize``, raised in ``wsgi.input``),
    a ``RecursionError`` for JSON nested too deeply. Only errors raised inside the
    request's input stream or its ``get_json`` are taken; the same error raised by the
    app's own code stays a 500, and so does running out of memory.
    """
    if isinstance(error, (HTTPException, MemoryError)) or not isinstance(error, Exception):
        return None
    if not request:
        return None
    stream = request.environ.get("wsgi.input")
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        owner = frame.f_locals.get("self")
        if owner is not None and (
            owner is stream
            or (
                isinstance(error, RecursionError)
                and frame.f_code.co_name == "get_json"
                and isinstance(owner, WerkzeugRequest)
            )
        ):
            bad = BadRequest(UNREADABLE_BODY)
            bad.__cause__ = error
            return bad
        traceback = traceback.tb_next
    return None


def handle_error(state: ObsState, error: BaseException) -> Response | HTTPException:
    """Flask error handler for every exception: notify, log and render."""
    if isinstance(error, HTTPException) and error.response is not None:
        # ``abort(response)``: the view chose its own response.
        return error.response  # type: ignore[return-value]
    error = unreadable_body(error) or error
    headers = _headers(error)
    request_id = state.current_context().request_id if request else None
    info = describe(error)
    for listener in state.error_listeners:
        try:
            listener(info)
        except Exception:  # one broken listener must not hide the error from the others
            _log.debug("error listener failed", exc_info=True)
    _log_error(info)
    body = problem_body(info, state.settings.error_type_base, request_id)
    body.update(info.extensions)
    return problem_response(body, info.status, headers)


def escaped_problem(request_id: str, path: str) -> str:
    """The body for an error that escaped Flask's own handling (no request left)."""
    status = 500
    return problem_json(
        {
            "type": "about:blank",
            "title": _status_phrase(status),
            "status": status,
            "detail": GENERIC_DETAIL,
            "instance": path,
            "request_id": request_id,
            "code": "internal_error",
        }
    )


def report_escaped(state: ObsState, error: BaseException) -> None:
    """Tell the listeners and the log about an error that escaped Flask's handlers."""
    info = ErrorInfo(error, 500, "internal_error", False)
    for listener in state.error_listeners:
        try:
            listener(info)
        except Exception:
            _log.debug("error listener failed", exc_info=True)
    _log_error(info)


def register(app: Flask, state: ObsState) -> None:
    """Route every error of ``app`` to :func:`handle_error`."""

    handler = functools.partial(handle_error, state)
    app.register_error_handler(Exception, handler)
    app.register_error_handler(HTTPException, handler)
