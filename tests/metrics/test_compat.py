"""The fast path over prometheus_client's internals: taken only where verified, said once."""

from __future__ import annotations

import pytest

from flask_gateway_obs._compat.prometheus_client import PUBLIC_PATH_ENV, public_path_reason
from flask_gateway_obs.metrics import app_metrics
from flask_gateway_obs.testing import capture_logs, metric_value

from ..conftest import MakeApp
from .helpers import gateway


def test_the_path_in_use_is_the_one_asked_for(make_app: MakeApp, prometheus_path: str) -> None:
    """The fixture's path is the one the app's metrics take, and both count alike."""
    app = gateway(make_app)
    app.test_client().get("/items/1")
    metrics = app_metrics(app)
    assert metrics.fast_path is (prometheus_path == "fast")
    assert metrics.http.fast_path is (prometheus_path == "fast")
    assert metric_value(app, "http_requests_total", status=200) == 1


@pytest.mark.parametrize(
    ("version", "fast"),
    [("0.19.0", False), ("0.20.0", True), ("0.26.0", True), ("0.26.3", True), ("0.27.0", False)],
)
def test_only_verified_versions_take_the_fast_path(
    monkeypatch: pytest.MonkeyPatch, version: str, fast: bool
) -> None:
    """Releases 0.20 to 0.26 take the fast path; any other release the public one."""
    monkeypatch.delenv(PUBLIC_PATH_ENV, raising=False)
    reason = public_path_reason(version)
    assert (reason is None) is fast
    if not fast:
        assert reason is not None and "verified" in reason


def test_an_unknown_version_takes_the_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version that cannot be read, or one that is no release number, is not trusted."""
    monkeypatch.delenv(PUBLIC_PATH_ENV, raising=False)
    assert public_path_reason(None) is not None
    assert public_path_reason("dev") is not None


@pytest.mark.parametrize("value", ["prometheus_client", "all", "sentry_sdk, prometheus-client"])
def test_the_environment_forces_the_public_path(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """FGO_PUBLIC_PATH naming prometheus_client (or all) forces the public path."""
    monkeypatch.setenv(PUBLIC_PATH_ENV, value)
    assert public_path_reason("0.26.0") == f"{PUBLIC_PATH_ENV} asks for the public path"
    monkeypatch.setenv(PUBLIC_PATH_ENV, "sentry_sdk")
    assert public_path_reason("0.26.0") is None


def test_the_public_path_is_said_once_at_info_level(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking the public path logs one info line per process, however many apps."""
    monkeypatch.setenv(PUBLIC_PATH_ENV, "prometheus_client")
    with capture_logs("flask_gateway_obs.metrics") as logs:
        for _ in range(3):
            gateway(make_app)
    said = [r for r in logs.records if "public API" in r["message"]]
    assert len(said) == 1
    assert said[0]["level"] == "info"
