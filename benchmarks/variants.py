"""The apps under test: bare Flask, the peers a user would wire by hand, and ours.

Every variant serves the same view (``GET /items/<int:item_id>`` answering a small
JSON object) and differs only in what is installed around it. Our variants are
built from config keys alone; a variant whose keys this build does not know yet
(a feature still to come) is reported as unavailable instead of failing the run,
and so is a peer whose package is not installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request

from benchmarks.roundtrip import REDIS_URL, redis_unavailable

__all__ = [
    "VARIANTS",
    "Built",
    "Variant",
    "build",
    "closed_port_dsn",
    "unavailable_reason",
]

#: The one request every in-process variant is driven with.
REQUEST_PATH = "/items/42"
REQUEST_HEADERS = {"User-Agent": "bench-client/1.0", "Accept": "application/json"}
#: A limit no benchmark run reaches: the limiter does all its work and never refuses.
UNREACHED_LIMIT = "100000000 per hour"


@dataclasses.dataclass
class Built:
    """An app ready to drive, and what to run between two measured slices."""

    app: Flask
    between_slices: Callable[[], None] | None = None


Installer = Callable[[Flask], "Callable[[], None] | None"]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One app set-up: what it is, how it is installed, what it needs."""

    name: str
    label: str
    group: str  # "baseline" | "peer" | "ours"
    install: Installer
    #: Importable modules the variant needs (peers).
    modules: tuple[str, ...] = ()
    #: Config keys the variant needs; unknown keys mean the feature is not built yet.
    config: tuple[tuple[str, Any], ...] = ()
    #: Keys applied only when this build knows them (turning a feature off).
    config_if_known: tuple[tuple[str, Any], ...] = ()
    #: Our modules the variant needs (``flask_gateway_obs.x``).
    ours: tuple[str, ...] = ()
    description: str = ""
    #: Servers the variant needs running (``"redis"``: :data:`benchmarks.roundtrip.REDIS_URL`).
    services: tuple[str, ...] = ()


def closed_port_dsn() -> str:
    """A Sentry DSN on a loopback port nobody listens on (events would fail fast)."""
    dsn = os.environ.get("BENCH_SENTRY_DSN")
    if dsn:
        return dsn
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://public@127.0.0.1:{port}/1"


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


# --- the view all variants serve ---------------------------------------------------


def base_app() -> Flask:
    """A bare Flask app with the one route every variant serves."""
    app = Flask("bench_app")

    @app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, "name": "keyboard", "price": 42.5}

    return app


# --- peers ---------------------------------------------------------------------------


def _prometheus_flask_exporter(app: Flask) -> None:
    from prometheus_client import CollectorRegistry

    if _multiprocess():
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        GunicornInternalPrometheusMetrics(app, group_by="url_rule")
        return
    from prometheus_flask_exporter import PrometheusMetrics

    # Own registry, so two apps never collide; labels by URL rule, bounded like ours.
    PrometheusMetrics(app, registry=CollectorRegistry(auto_describe=True), group_by="url_rule")


def _sentry(app: Flask) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration

    # Tracing off (no traces_sample_rate): errors only, like ours.
    sentry_sdk.init(dsn=closed_port_dsn(), integrations=[FlaskIntegration()])


def _json_formatter() -> logging.Formatter:
    try:
        from pythonjsonlogger.json import JsonFormatter
    except ImportError:  # python-json-logger < 3.1
        from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[no-redef,attr-defined,unused-ignore]
    formatter: logging.Formatter = JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
    )
    return formatter


def _json_access_log(app: Flask) -> None:
    """The access log a user writes with python-json-logger: request ID, timing, one line."""
    logger = logging.getLogger("bench.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_json_formatter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False

    @app.before_request
    def start_timer() -> None:
        incoming = request.headers.get("X-Request-ID")
        g.request_id = incoming if incoming and len(incoming) <= 128 else str(uuid.uuid4())
        g.start = time.perf_counter()

    @app.after_request
    def log_request(response: Response) -> Response:
        duration = time.perf_counter() - g.start
        rule = request.url_rule
        logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "request_id": g.request_id,
                "method": request.method,
                "path": request.path,
                "route": rule.rule if rule is not None else None,
                "status": response.status_code,
                "duration_ms": round(duration * 1000.0, 3),
                "remote_addr": request.remote_addr,
                "user_agent": request.headers.get("User-Agent"),
                "response_size": response.content_length,
            },
        )
        response.headers["X-Request-ID"] = g.request_id
        return response


def _flask_limiter(app: Flask) -> None:
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    Limiter(
        get_remote_address,
        app=app,
        default_limits=[UNREACHED_LIMIT],
        storage_uri="memory://",
    )


def closed_port_traces_url() -> str:
    """An OTLP/HTTP traces URL on a loopback port nobody listens on (exports fail fast)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/traces"


def _opentelemetry(app: Flask) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The exporter ours uses: OTLP/HTTP batched on a background thread, here to a
    # closed local port (exports fail; the queue drops what does not fit).
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(closed_port_traces_url())))
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)


def _hand_wired(app: Flask) -> None:
    _prometheus_flask_exporter(app)
    _sentry(app)
    _json_access_log(app)
    _flask_limiter(app)


# --- ours -------------------------------------------------------------------------------


def _ours(app: Flask) -> None:
    from flask_gateway_obs import GatewayObs

    GatewayObs(app)


def _traced(flags: str) -> Installer:
    """Ours, every request arriving with a W3C ``traceparent`` with these trace flags
    (``01`` sampled: the duration histogram keeps it as an exemplar; ``00`` not)."""
    header = f"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"

    def install(app: Flask) -> None:
        _ours(app)
        inner = app.wsgi_app

        def with_traceparent(environ: dict[str, Any], start_response: Any) -> Any:
            environ["HTTP_TRACEPARENT"] = header
            return inner(environ, start_response)

        app.wsgi_app = with_traceparent  # type: ignore[method-assign]

    return install


def _nothing(app: Flask) -> None:
    return None


_K = "GATEWAY_OBS_"
_COMMON: tuple[tuple[str, Any], ...] = (
    (_K + "SERVICE_NAME", "bench"),
    (_K + "LOG_FORMAT", "json"),
)
_RATELIMIT = (
    (_K + "RATELIMIT_ENABLED", True),
    ("RATELIMIT_STORAGE_URI", "memory://"),
    ("RATELIMIT_DEFAULT", UNREACHED_LIMIT),
)
_RATELIMIT_REDIS = (
    (_K + "RATELIMIT_ENABLED", True),
    ("RATELIMIT_STORAGE_URI", REDIS_URL),
    ("RATELIMIT_DEFAULT", UNREACHED_LIMIT),
)
_SENTRY_DSN = "<closed local port>"  # replaced by closed_port_dsn() at build time
_TRACES_URL = "<closed local traces port>"  # replaced by closed_port_traces_url()
_OFF = (
    (_K + "METRICS_ENABLED", False),
    (_K + "RATELIMIT_ENABLED", False),
)

_PEER_MODULES = {
    "pfe": ("prometheus_flask_exporter",),
    "sentry": ("sentry_sdk",),
    "pjl": ("pythonjsonlogger",),
    "limiter": ("flask_limiter",),
    "otel": (
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.proto.http",
        "opentelemetry.instrumentation.flask",
    ),
}

VARIANTS: tuple[Variant, ...] = (
    Variant("bare", "bare Flask", "baseline", _nothing, description="the view alone"),
    Variant(
        "peer-prometheus",
        "prometheus-flask-exporter",
        "peer",
        _prometheus_flask_exporter,
        modules=_PEER_MODULES["pfe"],
        description="own registry, labels by URL rule",
    ),
    Variant(
        "peer-sentry",
        "sentry-sdk (Flask integration)",
        "peer",
        _sentry,
        modules=_PEER_MODULES["sentry"],
        description="tracing off, DSN on a closed local port",
    ),
    Variant(
        "peer-jsonlog",
        "python-json-logger access log",
        "peer",
        _json_access_log,
        modules=_PEER_MODULES["pjl"],
        description="request ID, timing, one JSON line per request",
    ),
    Variant(
        "peer-limiter",
        "Flask-Limiter (memory)",
        "peer",
        _flask_limiter,
        modules=_PEER_MODULES["limiter"],
        description=f"default limit {UNREACHED_LIMIT}, fixed window",
    ),
    Variant(
        "peer-otel",
        "OpenTelemetry Flask instrumentation",
        "peer",
        _opentelemetry,
        modules=_PEER_MODULES["otel"],
        description="SDK tracer, batched OTLP/HTTP exporter to a closed local port",
    ),
    Variant(
        "peer-stack",
        "hand-wired stack",
        "peer",
        _hand_wired,
        modules=_PEER_MODULES["pfe"]
        + _PEER_MODULES["sentry"]
        + _PEER_MODULES["pjl"]
        + _PEER_MODULES["limiter"],
        description="prometheus-flask-exporter + sentry-sdk + python-json-logger + Flask-Limiter",
    ),
    Variant(
        "ours-min",
        "ours: request ID + errors",
        "ours",
        _ours,
        config=(*_COMMON, (_K + "LOG_ACCESS", False)),
        config_if_known=_OFF,
        description="access log, metrics, rate limit and Sentry off: the WSGI step alone",
    ),
    Variant(
        "ours-log",
        "ours: request ID + access log + errors",
        "ours",
        _ours,
        config=_COMMON,
        config_if_known=_OFF,
        description="metrics, rate limit and Sentry off",
    ),
    *(
        Variant(
            f"ours-log-{schema}",
            f"ours: request ID + access log ({label}) + errors",
            "ours",
            _ours,
            config=(*_COMMON, (_K + "LOG_SCHEMA", schema)),
            config_if_known=_OFF,
            description=f"as the access-log variant, lines in the {label} schema",
        )
        for schema, label in (("ecs", "ECS"), ("otel", "OpenTelemetry"))
    ),
    Variant(
        "ours-metrics",
        "ours: metrics only",
        "ours",
        _ours,
        config=(*_COMMON, (_K + "METRICS_ENABLED", True), (_K + "LOG_ACCESS", False)),
        config_if_known=((_K + "RATELIMIT_ENABLED", False),),
        ours=("metrics",),
        description="access log off; compare with prometheus-flask-exporter",
    ),
    Variant(
        "ours-core",
        "ours: core",
        "ours",
        _ours,
        config=(*_COMMON, (_K + "METRICS_ENABLED", True)),
        config_if_known=((_K + "RATELIMIT_ENABLED", False),),
        ours=("metrics",),
        description="request ID + JSON access log + metrics + error handling",
    ),
    Variant(
        "ours-core-unsampled",
        "ours: core, unsampled traceparent",
        "ours",
        _traced("00"),
        config=(*_COMMON, (_K + "METRICS_ENABLED", True)),
        config_if_known=((_K + "RATELIMIT_ENABLED", False),),
        ours=("metrics",),
        description="core; each request carries a traceparent with flags 00 (no exemplar)",
    ),
    Variant(
        "ours-core-sampled",
        "ours: core, sampled traceparent",
        "ours",
        _traced("01"),
        config=(*_COMMON, (_K + "METRICS_ENABLED", True)),
        config_if_known=((_K + "RATELIMIT_ENABLED", False),),
        ours=("metrics",),
        description="core; each request carries a sampled traceparent (an exemplar each)",
    ),
    Variant(
        "ours-defaults",
        "ours: defaults",
        "ours",
        _ours,
        config=_COMMON,
        description="GatewayObs(app) with no settings (JSON log format pinned)",
    ),
    Variant(
        "ours-ratelimit",
        "ours: core + rate limit (memory)",
        "ours",
        _ours,
        config=(*_COMMON, (_K + "METRICS_ENABLED", True), *_RATELIMIT),
        ours=("metrics", "ratelimit"),
        description=f"default limit {UNREACHED_LIMIT}",
    ),
    Variant(
        "ours-ratelimit-redis",
        "ours: core + rate limit (Redis)",
        "ours",
        _ours,
        config=(*_COMMON, (_K + "METRICS_ENABLED", True), *_RATELIMIT_REDIS),
        ours=("metrics", "ratelimit"),
        services=("redis",),
        description=f"default limit {UNREACHED_LIMIT} counted on the local Redis "
        "(one script round trip per request)",
    ),
    Variant(
        "ours-sentry",
        "ours: core + Sentry (errors only)",
        "ours",
        _ours,
        config=(*_COMMON, (_K + "METRICS_ENABLED", True), (_K + "SENTRY_DSN", _SENTRY_DSN)),
        config_if_known=((_K + "RATELIMIT_ENABLED", False),),
        ours=("metrics", "sentry"),
        description="DSN on a closed local port, tracing off",
    ),
    Variant(
        "ours-tracing",
        "ours: core + tracing (sampled)",
        "ours",
        _ours,
        config=(
            *_COMMON,
            (_K + "METRICS_ENABLED", True),
            (_K + "TRACING_ENABLED", True),
            (_K + "TRACING_SAMPLE_RATE", 1.0),
            (_K + "TRACING_OTLP_ENDPOINT", _TRACES_URL),
        ),
        config_if_known=((_K + "RATELIMIT_ENABLED", False),),
        modules=_PEER_MODULES["otel"][:2],
        ours=("metrics", "tracing"),
        description="every request sampled; OTLP/HTTP to a closed local port, as the peer",
    ),
    Variant(
        "ours-tracing-unsampled",
        "ours: core + tracing (not sampled)",
        "ours",
        _ours,
        config=(
            *_COMMON,
            (_K + "METRICS_ENABLED", True),
            (_K + "TRACING_ENABLED", True),
            (_K + "TRACING_SAMPLE_RATE", 0.0),
            (_K + "TRACING_OTLP_ENDPOINT", _TRACES_URL),
        ),
        config_if_known=((_K + "RATELIMIT_ENABLED", False),),
        modules=_PEER_MODULES["otel"][:2],
        ours=("metrics", "tracing"),
        description="tracing on, sample rate 0: IDs on logs, nothing recorded",
    ),
    Variant(
        "ours-tracing-unsampled-parent",
        "ours: core + tracing, unsampled traceparent",
        "ours",
        _traced("00"),
        config=(
            *_COMMON,
            (_K + "METRICS_ENABLED", True),
            (_K + "TRACING_ENABLED", True),
            (_K + "TRACING_SAMPLE_RATE", 1.0),
            (_K + "TRACING_OTLP_ENDPOINT", _TRACES_URL),
        ),
        config_if_known=((_K + "RATELIMIT_ENABLED", False),),
        modules=_PEER_MODULES["otel"][:2],
        ours=("metrics", "tracing"),
        description="each request carries a traceparent with flags 00: the parent's decision "
        "wins over rate 1, nothing recorded (compare with ours-core-unsampled)",
    ),
    Variant(
        "ours-all",
        "ours: everything on",
        "ours",
        _ours,
        config=(
            *_COMMON,
            (_K + "METRICS_ENABLED", True),
            *_RATELIMIT,
            (_K + "SENTRY_DSN", _SENTRY_DSN),
        ),
        ours=("metrics", "ratelimit", "sentry"),
        description="core + rate limit (memory) + Sentry errors-only + health endpoints",
    ),
    Variant(
        "ours-all-no-limit-headers",
        "ours: everything on, X-RateLimit-* headers off",
        "ours",
        _ours,
        config=(
            *_COMMON,
            (_K + "METRICS_ENABLED", True),
            *_RATELIMIT,
            ("RATELIMIT_HEADERS_ENABLED", False),
            (_K + "SENTRY_DSN", _SENTRY_DSN),
        ),
        ours=("metrics", "ratelimit", "sentry"),
        description="as everything on, with RATELIMIT_HEADERS_ENABLED = False: what the three "
        "headers cost (a server validates and writes each one)",
    ),
)

BY_NAME = {variant.name: variant for variant in VARIANTS}


def _known_keys() -> set[str]:
    from flask_gateway_obs.config import all_keys

    return set(all_keys())


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def unavailable_reason(variant: Variant) -> str | None:
    """Why ``variant`` can't run in this build and environment, or ``None``."""
    missing = [name for name in variant.modules if not _module_present(name)]
    if missing:
        return (
            f"peer not installed ({', '.join(missing)}); pip install -r benchmarks/requirements.txt"
        )
    if "redis" in variant.services:
        reason = redis_unavailable()
        if reason is not None:
            return reason
    missing = [m for m in variant.ours if not _module_present(f"flask_gateway_obs.{m}")]
    if missing:
        return f"flask_gateway_obs.{missing[0]} is not in this build yet"
    known = _known_keys()
    ours_keys = [key for key, _ in variant.config if key.startswith(_K)]
    unknown = [key for key in ours_keys if key not in known]
    if unknown:
        return f"{', '.join(unknown)} not in this build yet"
    return None


def config_for(variant: Variant) -> dict[str, Any]:
    """The ``app.config`` entries of ``variant`` for this build."""
    known = _known_keys() if variant.group == "ours" else set()
    config = {key: value for key, value in variant.config_if_known if key in known}
    config.update(variant.config)
    for key, value in config.items():
        if value == _SENTRY_DSN:
            config[key] = closed_port_dsn()
        elif value == _TRACES_URL:
            config[key] = closed_port_traces_url()
    return config


def build(name: str) -> Built:
    """Build the app of variant ``name`` (raises ``LookupError`` if it can't run here)."""
    variant = BY_NAME[name]
    reason = unavailable_reason(variant)
    if reason is not None:
        raise LookupError(reason)
    app = base_app()
    app.config.update(config_for(variant))
    between = variant.install(app)
    return Built(app, between)


def wsgi_app_from_env() -> Flask:
    """The app of the variant named by ``BENCH_VARIANT`` (for the gunicorn runs)."""
    return build(os.environ.get("BENCH_VARIANT", "bare")).app
