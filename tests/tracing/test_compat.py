"""The fast path over OpenTelemetry's context internals: taken only where verified, said once."""

from __future__ import annotations

import pytest
from opentelemetry import context, trace
from opentelemetry.context import Context

from flask_gateway_obs._compat import opentelemetry as compat
from flask_gateway_obs.testing import capture_logs, reset

from ..conftest import MakeApp
from .conftest import PUBLIC_PATH_ENV


def test_the_conftest_names_the_compat_modules_variable() -> None:
    """The fixture that runs both paths sets the variable the compat module reads."""
    assert compat.PUBLIC_PATH_ENV == PUBLIC_PATH_ENV


def test_the_path_in_use_is_the_one_asked_for(otel_path: str) -> None:
    """The fixture's path is the one the tracing concern gets."""
    path = compat.context_path()
    assert path.fast is (otel_path == "fast")
    assert (path.span_key is None) is (otel_path == "public")
    assert (path.parse_traceparent is None) is (otel_path == "public")


def test_both_paths_attach_as_the_public_api(otel_path: str) -> None:
    """attach, get_current and detach of either path are OpenTelemetry's own; a span
    set in a context made with the fast path's key is the one the public API finds."""
    path = compat.context_path()
    span = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
    made = (
        Context({path.span_key: span})
        if path.span_key is not None
        else trace.set_span_in_context(span, Context())
    )
    assert made == trace.set_span_in_context(span, Context())
    before = context.get_current()
    token = path.attach(made)
    assert context.get_current() is made and path.get_current() is made
    assert trace.get_current_span() is span
    path.detach(token)
    assert context.get_current() is before


@pytest.mark.parametrize(
    ("version", "fast"),
    [("1.34.1", False), ("1.35.0", True), ("1.40.0", True), ("1.45.1", True), ("1.46.0", False)],
)
def test_only_verified_versions_take_the_fast_path(
    monkeypatch: pytest.MonkeyPatch, version: str, fast: bool
) -> None:
    """Releases 1.35 to 1.45 take the fast path; any other release the public one."""
    monkeypatch.delenv(PUBLIC_PATH_ENV, raising=False)
    reason = compat.public_path_reason(version)
    assert (reason is None) is fast
    if not fast:
        assert reason is not None and "verified" in reason


def test_an_unknown_version_takes_the_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version that cannot be read, or one that is no release number, is not trusted."""
    monkeypatch.delenv(PUBLIC_PATH_ENV, raising=False)
    assert compat.public_path_reason(None) is not None
    assert compat.public_path_reason("dev") is not None


@pytest.mark.parametrize("value", ["opentelemetry", "all", "prometheus_client, opentelemetry-api"])
def test_the_environment_forces_the_public_path(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """FGO_PUBLIC_PATH naming opentelemetry (or all) forces the public path."""
    monkeypatch.setenv(PUBLIC_PATH_ENV, value)
    assert compat.public_path_reason("1.45.1") == f"{PUBLIC_PATH_ENV} asks for the public path"
    monkeypatch.setenv(PUBLIC_PATH_ENV, "prometheus_client")
    assert compat.public_path_reason("1.45.1") is None


def test_the_public_path_is_said_once_at_info_level(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking the public path logs one info line per process, however many apps."""
    monkeypatch.setenv(PUBLIC_PATH_ENV, "opentelemetry")
    reset()
    with capture_logs("flask_gateway_obs.tracing") as logs:
        for _ in range(3):
            make_app({"GATEWAY_OBS_TRACING_ENABLED": True, "GATEWAY_OBS_TRACING_EXPORTER": "none"})
    said = [r for r in logs.records if "public API" in r["message"]]
    assert len(said) == 1
    assert said[0]["level"] == "info"
