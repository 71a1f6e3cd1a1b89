"""Pieces of the ECS and OpenTelemetry lines that repeat from line to line: the process
and thread fields (once per thread, forgotten in a forked child) and the access lines'
per-(method, status, service, route) templates."""

from __future__ import annotations

import os
import sys
import threading

from .formatters import _esc, _opt
from .loggers import ACCESS_LOGGER_NAME

__all__ = ["ECS_VERSION", "ecs_process", "ecs_template", "otel_pid", "otel_template", "otel_thread"]

#: The ECS version Elastic's ecs-logging (2.x) declares on every line.
ECS_VERSION = "1.6.0"


def _process_name() -> str:
    """``LogRecord.processName`` as logging computes it."""
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        try:
            return str(mp.current_process().name)
        except Exception:
            pass
    return "MainProcess"


#: JSON of this process and thread, by thread: built once per thread, not per line.
#: Emptied in a forked child, whose pid differs.
_ECS_PROCESS: dict[tuple[int | None, str], str] = {}
_OTEL_THREAD: dict[tuple[int | None, str], str] = {}
_OTEL_PID: list[int] = []


def _forget_process() -> None:
    _ECS_PROCESS.clear()
    _OTEL_THREAD.clear()
    _OTEL_PID.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_process)


def ecs_process() -> str:
    """``"process": {...}`` of the ECS line, as ``LogRecord`` attributes would give it."""
    thread = threading.current_thread()
    key = (thread.ident, thread.name)
    text = _ECS_PROCESS.get(key)
    if text is None:
        if len(_ECS_PROCESS) >= 1024:
            _ECS_PROCESS.clear()
        text = (
            f'"process":{{"name":{_esc(_process_name())},"pid":{os.getpid():d},'
            f'"thread":{{"id":{thread.ident or 0:d},"name":{_esc(thread.name)}}}}}'
        )
        _ECS_PROCESS[key] = text
    return text


def otel_thread() -> str:
    """``"thread.id": ..., "thread.name": ...`` of the OpenTelemetry line."""
    thread = threading.current_thread()
    key = (thread.ident, thread.name)
    text = _OTEL_THREAD.get(key)
    if text is None:
        if len(_OTEL_THREAD) >= 1024:
            _OTEL_THREAD.clear()
        text = f'"thread.id": {thread.ident or 0:d}, "thread.name": {_esc(thread.name)}'
        _OTEL_THREAD[key] = text
    return text


def otel_pid() -> int:
    if not _OTEL_PID:
        _OTEL_PID.append(os.getpid())
    return _OTEL_PID[0]


def ecs_template(key: tuple[str, int, str, str | None]) -> tuple[str, ...]:
    method, status, service, route = key
    verb = _esc(method)
    template = (
        f'","log.level":"info","message":"{verb[1:-1]} ',
        f' {status:d}","ecs.version":"{ECS_VERSION}",'
        f'"log":{{"logger":"{ACCESS_LOGGER_NAME}","original":"{verb[1:-1]} ',
        f' {status:d}"}},',
        f',"service":{{"name":{_esc(service)}}},"http":{{"request":{{"id":"',
        f'","method":{verb}}},"response":{{',
        f'"status_code":{status:d}}}}}',
        "}" if route is None else f'}},"gateway":{{"route":{_esc(route)}}}',
    )
    return template


def otel_template(key: tuple[str, int, str, str | None]) -> tuple[str, ...]:
    method, status, service, route = key
    verb = _esc(method)
    template = (
        f', "severity_text": "INFO", "severity_number": 9, "body": "{verb[1:-1]} ',
        f' {status:d}", "attributes": {{"http.request.id": "',
        f'", "http.request.method": {verb}, "url.path": ',
        ("" if route is None else f', "http.route": {_esc(route)}')
        + f', "http.response.status_code": {status:d}',
        f', "resource": {{"service.name": {_opt(service)}, "process.pid": ',
    )
    return template
