"""Log schemas besides the default: Elastic Common Schema and the OpenTelemetry log data model.

``GATEWAY_OBS_LOG_SCHEMA=ecs`` writes the layout of Elastic's ``ecs-logging``
(``@timestamp``, ``log.level`` and ``message`` first, ``ecs.version``, ``log.logger``,
``log.origin``, ``process.*``, ``error.*``) plus the request's fields under their ECS
names (``http.*``, ``url.path``, ``event.duration`` in nanoseconds, ``trace.id``,
``span.id``, ``service.name``); the route, which ECS has no field for, goes under the
custom namespace ``gateway``.

``GATEWAY_OBS_LOG_SCHEMA=otel`` writes the OpenTelemetry log data model as JSON:
``timestamp`` (ns), ``severity_text``, ``severity_number``, ``body``, ``attributes``
(semantic-convention names), ``trace_id``, ``span_id``, ``resource`` and
``instrumentation_scope`` (the logger's name).

Both build on :class:`~flask_gateway_obs.logs.formatters.JsonFormatter`: the same
redaction, one record per line, and an access line written without a ``LogRecord``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from ..core.context import RequestContext, current_request
from .formatters import (
    _ENCODER,
    AccessFields,
    JsonFormatter,
    _esc,
    _level_name,
    _opt,
    access_message,
)
from .lines import ECS_VERSION, ecs_process, ecs_template, otel_pid, otel_template, otel_thread
from .loggers import ACCESS_LOGGER_NAME
from .redaction import _safe_repr, mask_url_credentials

__all__ = ["ECS_VERSION", "SCHEMAS", "EcsFormatter", "OtelFormatter", "formatter_class"]

_ECS_ENCODER = json.JSONEncoder(default=_safe_repr, allow_nan=False, separators=(",", ":"))
#: What the access line's fields are called in each schema.
_ECS_ACCESS = {
    "method": ("http", "request", "method"),
    "path": ("url", "path"),
    "route": ("gateway", "route"),
    "status": ("http", "response", "status_code"),
    "remote_addr": ("client", "address"),
    "user_agent": ("user_agent", "original"),
    "response_size": ("http", "response", "body", "bytes"),
}
_OTEL_ACCESS = {
    "method": "http.request.method",
    "path": "url.path",
    "route": "http.route",
    "status": "http.response.status_code",
    "remote_addr": "client.address",
    "user_agent": "user_agent.original",
    "response_size": "http.response.body.size",
}


def _duration_ns(duration_ms: Any) -> int | None:
    return None if duration_ms is None else round(float(duration_ms) * 1_000_000)


def _put(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _merge_extra(doc: dict[str, Any], key: str, value: Any, taken: frozenset[str]) -> None:
    """An extra or bound field, nested at its dots like ecs-logging does; one whose first
    part is a field of the schema's own (or of an earlier extra) stays flat as ``<key>_``."""
    path = tuple(key.split("."))
    if "" in path or path[0] in taken or (path[0] in doc and not isinstance(doc[path[0]], dict)):
        doc[f"{key}_"] = value
        return
    node = doc
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            doc[f"{key}_"] = value
            return
        node = child
    if path[-1] in node:
        doc[f"{key}_"] = value
    else:
        node[path[-1]] = value


_ECS_TAKEN = frozenset(
    {
        "@timestamp", "log.level", "message", "ecs.version", "log", "process", "service",
        "http", "url", "gateway", "client", "user_agent", "event", "trace", "span", "error",
    }
)  # fmt: skip


class EcsFormatter(JsonFormatter):
    """One ECS JSON document per record, in the layout of Elastic's ``ecs-logging``."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            return self._dump(self.to_ecs(self.build(record), record))
        except Exception:
            return self._dump(
                {
                    "@timestamp": self._timestamps.format(record.created),
                    "log.level": _level_name(record.levelno),
                    "message": "unformattable log record",
                    "ecs.version": ECS_VERSION,
                    "log": {"logger": record.name},
                    "service": {"name": self.service},
                }
            )

    def _dump(self, doc: dict[str, Any]) -> str:
        try:
            return _ECS_ENCODER.encode(doc)
        except (TypeError, ValueError):
            return _ECS_ENCODER.encode(self.redactor.redact(doc))

    def to_ecs(self, payload: dict[str, Any], record: logging.LogRecord) -> dict[str, Any]:
        """The default fields of :meth:`build` (``payload``, consumed) under ECS names."""
        access = record.name == ACCESS_LOGGER_NAME
        message = payload.pop("message")
        doc: dict[str, Any] = {
            "@timestamp": payload.pop("timestamp"),
            "log.level": payload.pop("level"),
            "message": message,
            "ecs.version": ECS_VERSION,
            "log": {"logger": payload.pop("logger"), "original": message},
            "process": {
                "name": record.processName,
                "pid": record.process,
                "thread": {"id": record.thread, "name": record.threadName},
            },
            "service": {"name": payload.pop("service")},
        }
        if not access:  # like ecs-logging, each part that is known
            origin: dict[str, Any] = {"file": {"line": record.lineno, "name": record.filename}}
            if record.funcName is not None:
                origin["function"] = record.funcName
            doc["log"]["origin"] = origin
        request_id = payload.pop("request_id", None)
        if request_id is not None:
            _put(doc, ("http", "request", "id"), request_id)
        trace_id, span_id = payload.pop("trace_id", None), payload.pop("span_id", None)
        if trace_id is not None:
            doc["trace"] = {"id": trace_id}
        if span_id is not None:
            doc["span"] = {"id": span_id}
        if access:
            for name, path in _ECS_ACCESS.items():
                value = payload.pop(name, None)
                if value is not None:
                    _put(doc, path, value)
            duration = _duration_ns(payload.pop("duration_ms", None))
            if duration is not None:
                doc["event"] = {"duration": duration}
        error = {
            "type": payload.pop("exc_type", None),
            "message": payload.pop("exc_message", None),
            "stack_trace": payload.pop("stack", None) or payload.pop("stack_info", None),
        }
        if any(v is not None for v in error.values()):
            doc["error"] = {k: v for k, v in error.items() if v is not None}
        for key, value in payload.items():
            if value is not None:
                _merge_extra(doc, key, value, _ECS_TAKEN)
        return doc

    def access_line(self, entry: AccessFields) -> str:
        """The ECS document of an access record, without a ``LogRecord``: the same fields
        as :meth:`format` gives for the record the ordinary path would log (what repeats
        from request to request comes from a template, as in the default schema)."""
        ctx = current_request.get()
        e = entry
        path = e.path
        if ctx is None or "@" in path or "@" in e.method:  # no request, or credentials
            return self._ecs_line(e, ctx)
        key = (e.method, e.status, ctx.service, e.route)
        template = self._templates.get(key)
        if template is None:
            template = self._store(key, ecs_template(key))
        opening, between, after_message, service, method, status, route = template
        escaped = _esc(path)
        inner = escaped[1:-1]
        trace_id, size = ctx.trace_id, e.response_size
        remote, agent, bound = e.remote_addr, e.user_agent, ctx.bound
        return "".join(
            (
                '{"@timestamp":"',
                self._timestamps.format(time.time()),
                opening,
                inner,
                between,
                inner,
                after_message,
                ecs_process(),
                service,
                ctx.request_id,
                method,
                "" if size is None else f'"body":{{"bytes":{size}}},',
                status,
                "" if trace_id is None else f',"trace":{{"id":"{trace_id}"}}',
                ""
                if trace_id is None or ctx.span_id is None
                else f',"span":{{"id":"{ctx.span_id}"}}',
                ',"url":{"path":',
                escaped,
                route,
                "" if remote is None else f',"client":{{"address":{self._texts[remote]}}}',
                "" if agent is None else f',"user_agent":{{"original":{self._texts[agent]}}}',
                ',"event":{"duration":',
                str(int(e.duration * 1_000_000_000)),
                "}",
                self._bound_ecs(bound) if bound else "",
                "}",
            )
        )

    def _ecs_line(self, entry: AccessFields, ctx: RequestContext | None) -> str:
        # The general case: no template, the message masked as in format().
        e = entry
        message = _esc(mask_url_credentials(access_message(e)))
        if ctx is not None:
            service, bound = ctx.service, ctx.bound
            request = f'"id":{_esc(ctx.request_id)},"method":{_esc(e.method)}'
            trace = "" if ctx.trace_id is None else f',"trace":{{"id":{_esc(ctx.trace_id)}}}'
            span = (
                "" if ctx.span_id is None or not trace else f',"span":{{"id":{_esc(ctx.span_id)}}}'
            )
        else:
            service, bound, trace, span = self.service, None, "", ""
            request = f'"method":{_esc(e.method)}'
        body = "" if e.response_size is None else f'"body":{{"bytes":{e.response_size:d}}},'
        route = "" if e.route is None else f',"gateway":{{"route":{_esc(e.route)}}}'
        client = "" if e.remote_addr is None else f',"client":{{"address":{_esc(e.remote_addr)}}}'
        agent = "" if e.user_agent is None else f',"user_agent":{{"original":{_esc(e.user_agent)}}}'
        return (
            f'{{"@timestamp":"{self._timestamps.format(time.time())}","log.level":"info",'
            f'"message":{message},"ecs.version":"{ECS_VERSION}",'
            f'"log":{{"logger":"{ACCESS_LOGGER_NAME}","original":{message}}},'
            f'{ecs_process()},"service":{{"name":{_esc(service)}}},'
            f'"http":{{"request":{{{request}}},"response":{{{body}"status_code":{e.status:d}}}}}'
            f"{trace}{span}"
            f',"url":{{"path":{_esc(e.path)}}}{route}{client}{agent}'
            f',"event":{{"duration":{round(e.duration * 1_000_000_000):d}}}'
            f"{self._bound_ecs(bound) if bound else ''}}}"
        )

    def _bound_ecs(self, bound: Mapping[str, Any]) -> str:
        fields: dict[str, Any] = {}
        self._add_bound(fields, bound)
        nested: dict[str, Any] = {}
        for key, value in fields.items():
            _merge_extra(nested, key, value, _ECS_TAKEN)
        text = _ECS_ENCODER.encode(nested)
        return "," + text[1:-1] if len(text) > 2 else ""


def severity_number(levelno: int) -> int:
    """The OpenTelemetry severity number of a logging level (DEBUG 5, INFO 9, WARNING 13,
    ERROR 17, CRITICAL 21; the levels between take the next steps; below DEBUG 0,
    unspecified), as OpenTelemetry's own logging handler maps them."""
    if levelno < logging.DEBUG:
        return 0  # UNSPECIFIED
    if levelno >= logging.CRITICAL:
        return 21 + min(levelno - logging.CRITICAL, 3)
    return 5 + 4 * (levelno // 10 - 1) + min(levelno % 10, 3)


_OTEL_TAKEN = frozenset(
    {
        "http.request.id", "thread.id", "thread.name", "code.file.path", "code.function.name",
        "code.line.number", "exception.type", "exception.message", "exception.stacktrace",
        "http.server.request.duration", *_OTEL_ACCESS.values(),
    }
)  # fmt: skip


class OtelFormatter(JsonFormatter):
    """One OpenTelemetry log record (the log data model) as JSON per record."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            return self._dump(self.to_otel(self.build(record), record))
        except Exception:
            return self._dump(
                {
                    "timestamp": int(record.created * 1e9),
                    "severity_text": record.levelname,
                    "severity_number": severity_number(record.levelno),
                    "body": "unformattable log record",
                    "attributes": {},
                    "resource": {"service.name": self.service},
                    "instrumentation_scope": {"name": record.name},
                }
            )

    def _dump(self, doc: dict[str, Any]) -> str:
        try:
            return _ENCODER.encode(doc)
        except (TypeError, ValueError):
            return _ENCODER.encode(self.redactor.redact(doc))

    def to_otel(self, payload: dict[str, Any], record: logging.LogRecord) -> dict[str, Any]:
        """The default fields of :meth:`build` (``payload``, consumed) as a log record."""
        access = record.name == ACCESS_LOGGER_NAME
        for name in ("timestamp", "level", "logger"):
            payload.pop(name)
        attributes: dict[str, Any] = {}
        request_id = payload.pop("request_id", None)
        if request_id is not None:
            attributes["http.request.id"] = request_id
        if access:
            for name, attribute in _OTEL_ACCESS.items():
                value = payload.pop(name, None)
                if value is not None:
                    attributes[attribute] = value
            duration = payload.pop("duration_ms", None)
            if duration is not None:
                attributes["http.server.request.duration"] = float(duration) / 1000.0
        elif record.funcName is not None:  # emit() of a hot path has none
            attributes["code.file.path"] = record.pathname
            attributes["code.function.name"] = record.funcName
            attributes["code.line.number"] = record.lineno
        attributes["thread.id"] = record.thread
        attributes["thread.name"] = record.threadName
        for source, attribute in (
            ("exc_type", "exception.type"),
            ("exc_message", "exception.message"),
            ("stack", "exception.stacktrace"),
        ):
            value = payload.pop(source, None)
            if value is not None:
                attributes[attribute] = value
        trace_id, span_id = payload.pop("trace_id", None), payload.pop("span_id", None)
        service = payload.pop("service")
        body = payload.pop("message")
        for key, value in payload.items():
            attributes[f"{key}_" if key in _OTEL_TAKEN else key] = value
        doc: dict[str, Any] = {
            "timestamp": int(record.created * 1e9),
            "severity_text": record.levelname,
            "severity_number": severity_number(record.levelno),
            "body": body,
            "attributes": attributes,
        }
        if trace_id is not None:
            doc["trace_id"] = trace_id
        if span_id is not None:
            doc["span_id"] = span_id
        doc["resource"] = {"service.name": service, "process.pid": record.process}
        doc["instrumentation_scope"] = {"name": record.name}
        return doc

    def access_line(self, entry: AccessFields) -> str:
        """The log record of an access line, without a ``LogRecord``: the same fields as
        :meth:`format` gives for the record the ordinary path would log (what repeats
        from request to request comes from a template, as in the default schema)."""
        ctx = current_request.get()
        e = entry
        path = e.path
        if ctx is None or "@" in path or "@" in e.method:  # no request, or credentials
            return self._otel_line(e, ctx)
        key = (e.method, e.status, ctx.service, e.route)
        template = self._templates.get(key)
        if template is None:
            template = self._store(key, otel_template(key))
        opening, after_body, method, status, resource = template
        escaped = _esc(path)
        trace_id, size = ctx.trace_id, e.response_size
        remote, agent, bound = e.remote_addr, e.user_agent, ctx.bound
        if trace_id is None:
            trace = ""
        elif ctx.span_id is None:
            trace = f', "trace_id": "{trace_id}"'
        else:
            trace = f', "trace_id": "{trace_id}", "span_id": "{ctx.span_id}"'
        return "".join(
            (
                '{"timestamp": ',
                str(time.time_ns()),
                opening,
                escaped[1:-1],
                after_body,
                ctx.request_id,
                method,
                escaped,
                status,
                "" if remote is None else f', "client.address": {self._texts[remote]}',
                "" if agent is None else f', "user_agent.original": {self._texts[agent]}',
                "" if size is None else f', "http.response.body.size": {size}',
                ', "http.server.request.duration": ',
                repr(e.duration),
                ", ",
                otel_thread(),
                self._bound_otel(bound) if bound else "",
                "}",
                trace,
                resource,
                str(otel_pid()),
                f'}}, "instrumentation_scope": {{"name": "{ACCESS_LOGGER_NAME}"}}}}',
            )
        )

    def _otel_line(self, entry: AccessFields, ctx: RequestContext | None) -> str:
        # The general case: no template, the body masked as in format().
        e = entry
        if ctx is not None:
            service, bound = ctx.service, ctx.bound
            request_id = f'"http.request.id": {_esc(ctx.request_id)}, '
            trace = "" if ctx.trace_id is None else f', "trace_id": {_esc(ctx.trace_id)}'
            if ctx.span_id is not None and trace:
                trace = f'{trace}, "span_id": {_esc(ctx.span_id)}'
        else:
            service, bound, request_id, trace = self.service, None, "", ""
        size = (
            "" if e.response_size is None else f', "http.response.body.size": {e.response_size:d}'
        )
        route = "" if e.route is None else f', "http.route": {_esc(e.route)}'
        client = "" if e.remote_addr is None else f', "client.address": {_esc(e.remote_addr)}'
        agent = "" if e.user_agent is None else f', "user_agent.original": {_esc(e.user_agent)}'
        return (
            f'{{"timestamp": {time.time_ns():d}, "severity_text": "INFO", '
            f'"severity_number": 9, "body": {_esc(mask_url_credentials(access_message(e)))}, '
            f'"attributes": {{{request_id}"http.request.method": {_esc(e.method)}, '
            f'"url.path": {_esc(e.path)}{route}, "http.response.status_code": {e.status:d}'
            f"{client}{agent}{size}, "
            f'"http.server.request.duration": {float(e.duration)!r}, '
            f"{otel_thread()}"
            f"{self._bound_otel(bound) if bound else ''}}}{trace}, "
            f'"resource": {{"service.name": {_opt(service)}, "process.pid": {otel_pid():d}}}, '
            f'"instrumentation_scope": {{"name": "{ACCESS_LOGGER_NAME}"}}}}'
        )

    def _bound_otel(self, bound: Mapping[str, Any]) -> str:
        fields: dict[str, Any] = {}
        self._add_bound(fields, bound)
        renamed = {f"{k}_" if k in _OTEL_TAKEN else k: v for k, v in fields.items()}
        text = _ENCODER.encode(renamed)
        return ", " + text[1:-1] if len(text) > 2 else ""


#: ``GATEWAY_OBS_LOG_SCHEMA`` -> the formatter class writing it.
SCHEMAS: dict[str, type[JsonFormatter]] = {
    "default": JsonFormatter,
    "ecs": EcsFormatter,
    "otel": OtelFormatter,
}


def formatter_class(schema: str) -> type[JsonFormatter]:
    """The JSON formatter of ``schema`` (``default``, ``ecs`` or ``otel``)."""
    return SCHEMAS[schema]
