"""Switching tracing on and off: imports, config errors, endpoint and resource defaults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import flask_gateway_obs
from flask_gateway_obs.config import ConfigError
from flask_gateway_obs.tracing import DEFAULT_ENDPOINT, otlp_endpoint

from ..conftest import MakeApp
from .conftest import TracedApp, flush
from .receiver import OtlpReceiver

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(flask_gateway_obs.__file__)))


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": PACKAGE_ROOT},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_tracing_off_imports_no_opentelemetry() -> None:
    """An app with every default concern (and metrics) serving a request has loaded no
    opentelemetry module."""
    out = _python(
        """
        import sys
        from flask import Flask
        from flask_gateway_obs import GatewayObs
        app = Flask("off")
        app.config["GATEWAY_OBS_METRICS_ENABLED"] = True
        GatewayObs(app)
        app.test_client().get("/metrics")
        app.test_client().get("/nowhere")
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    assert out == "[]"


def test_tracing_on_without_the_extra_is_a_clear_error() -> None:
    """Tracing on without OpenTelemetry installed fails at init_app naming the extra."""
    out = _python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the [otel] extra were not installed
        from flask import Flask
        from flask_gateway_obs import GatewayObs
        from flask_gateway_obs.config import ConfigError
        app = Flask("no-otel")
        app.config["GATEWAY_OBS_TRACING_ENABLED"] = True
        try:
            GatewayObs(app)
        except ConfigError as error:
            print(repr(str(error)))
        """
    )
    assert "GATEWAY_OBS_TRACING_ENABLED" in out
    assert "flask-gateway-obs[otel]" in out


def test_bad_tracing_values_are_named_in_one_error(make_app: MakeApp) -> None:
    """Every bad tracing key is named with what it accepts."""
    with pytest.raises(ConfigError) as raised:
        make_app(
            {
                "GATEWAY_OBS_TRACING_ENABLED": "maybe",
                "GATEWAY_OBS_TRACING_SAMPLE_RATE": 1.5,
                "GATEWAY_OBS_TRACING_OTLP_ENDPOINT": "ftp://collector",
                "GATEWAY_OBS_TRACING_EXPORTER": "zipkin",
                "GATEWAY_OBS_TRACING_QUEUE_SIZE": 10**9,
            }
        )
    keys = {problem[0] for problem in raised.value.problems}
    assert keys == {
        "GATEWAY_OBS_TRACING_ENABLED",
        "GATEWAY_OBS_TRACING_SAMPLE_RATE",
        "GATEWAY_OBS_TRACING_OTLP_ENDPOINT",
        "GATEWAY_OBS_TRACING_EXPORTER",
        "GATEWAY_OBS_TRACING_QUEUE_SIZE",
    }


def test_endpoint_defaults_follow_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key wins; else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; else OTEL_EXPORTER_OTLP_ENDPOINT
    plus /v1/traces; else the local collector on 4318."""
    assert otlp_endpoint(None) == DEFAULT_ENDPOINT == "http://localhost:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert otlp_endpoint(None) == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/custom")
    assert otlp_endpoint(None) == "http://traces:4318/custom"
    assert otlp_endpoint("http://mine:4318/v1/traces") == "http://mine:4318/v1/traces"


def test_environment_endpoint_is_used(
    make_app: MakeApp, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the key unset, spans go to OTEL_EXPORTER_OTLP_ENDPOINT's /v1/traces."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
    app = make_app({"GATEWAY_OBS_TRACING_ENABLED": True})
    app.test_client().get("/nowhere")
    flush(app)
    assert len(receiver.wait_for(1)) == 1


def test_resource_honours_the_standard_variables(
    traced_app: TracedApp, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_RESOURCE_ATTRIBUTES is on the resource; OTEL_SERVICE_NAME names the service
    unless GATEWAY_OBS_SERVICE_NAME is set."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging,team=edge")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    named = traced_app()  # GATEWAY_OBS_SERVICE_NAME="gateway"
    unnamed = traced_app({"GATEWAY_OBS_SERVICE_NAME": None})
    named.test_client().get("/items/1")
    unnamed.test_client().get("/items/2")
    flush(named)
    flush(unnamed)
    spans = receiver.wait_for(2)
    services = sorted(s.resource["service.name"] for s in spans)
    assert services == ["from-env", "gateway"]
    assert all(s.resource["deployment.environment"] == "staging" for s in spans)
    assert all(s.resource["team"] == "edge" for s in spans)
