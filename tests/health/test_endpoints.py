"""Health endpoints over real Redis and PostgreSQL: bodies, statuses, the detail policy,
paths, methods, and what probes feed."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import CheckResult, ConfigError, HealthReport
from flask_gateway_obs.config import Keys
from flask_gateway_obs.core.state import EXTENSION_KEY
from flask_gateway_obs.health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
)
from flask_gateway_obs.testing import capture_logs

from ..conftest import MakeApp, free_port
from .conftest import (
    QUIET,
    RecordingRecorder,
    build,
    runner_of,
)

# --- real dependencies -------------------------------------------------------------------------


def test_real_redis_and_postgres_are_healthy_with_response_times(
    make_app: MakeApp, redis_url: str, database_url: str
) -> None:
    """Against this machine's Redis and PostgreSQL every check is healthy and timed."""
    app = make_app({Keys.REDIS_URL: redis_url, Keys.DATABASE_URL: database_url})
    response = app.test_client().get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == HEALTHY
    assert set(body["checks"]) == {"redis", "postgres", "memory", "disk"}
    for check in body["checks"].values():
        assert check["status"] == HEALTHY
        assert check["response_time_ms"] > 0


def test_default_body_has_status_and_response_times_only(make_app: MakeApp, redis_url: str) -> None:
    """Without details each check shows its status and response time, nothing else."""
    app = make_app({Keys.REDIS_URL: redis_url, Keys.SERVICE_VERSION: "1.4.2"})
    response = app.test_client().get("/health")
    body = response.get_json()
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert set(body) == {"status", "checks", "timestamp", "uptime_seconds", "version"}
    assert body["version"] == "1.4.2"
    assert body["uptime_seconds"] >= 0
    assert body["timestamp"].endswith("+00:00")
    for check in body["checks"].values():
        assert set(check) == {"status", "response_time_ms"}


def test_ready_runs_the_dependencies_and_health_runs_everything(
    make_app: MakeApp, redis_url: str, database_url: str
) -> None:
    """/health/ready has the ready group (Redis, PostgreSQL); /health adds memory and disk."""
    app = make_app({Keys.REDIS_URL: redis_url, Keys.DATABASE_URL: database_url})
    client = app.test_client()
    assert set(client.get("/health/ready").get_json()["checks"]) == {"redis", "postgres"}
    assert set(client.get("/health").get_json()["checks"]) == {
        "redis",
        "postgres",
        "memory",
        "disk",
    }


def test_live_never_runs_a_dependency_check(make_app: MakeApp) -> None:
    """/health/live answers 200 from the process alone while every dependency is down."""
    app, obs = build(
        make_app,
        {
            Keys.REDIS_URL: f"redis://127.0.0.1:{free_port()}/0",
            Keys.DATABASE_URL: f"postgresql://u@127.0.0.1:{free_port()}/db",
        },
    )
    calls = []
    app.extensions[EXTENSION_KEY].recorder = recorder = RecordingRecorder()

    @obs.health_check("counted")
    def counted() -> None:
        calls.append(1)

    response = app.test_client().get("/health/live")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {}
    assert calls == []
    assert recorder.statuses == []


# --- detail policy --------------------------------------------------------------------------------


def _app_with_secrets(make_app: MakeApp, **config: Any) -> Flask:
    return make_app(
        {
            **QUIET,
            Keys.REDIS_URL: f"redis://:r3dis-pass@127.0.0.1:{free_port()}/0",
            Keys.DATABASE_URL: f"postgresql://app:pg-pass@127.0.0.1:{free_port()}/orders",
            **config,
        }
    )


def test_default_body_carries_no_error_text_host_or_password(make_app: MakeApp) -> None:
    """Failing checks show only their status: no reason, error, host, DSN or password."""
    app = _app_with_secrets(make_app)
    response = app.test_client().get("/health")
    assert response.status_code == 503
    text = response.get_data(as_text=True)
    for leak in ("r3dis-pass", "pg-pass", "127.0.0.1", "refused", "reason", "error", "redis://"):
        assert leak not in text


def test_details_are_shown_only_with_the_right_token(make_app: MakeApp) -> None:
    """when_authorized: Bearer or the token header unlocks details; a wrong token does not."""
    app = _app_with_secrets(
        make_app,
        **{Keys.HEALTH_SHOW_DETAILS: "when_authorized", Keys.HEALTH_TOKEN: "t0ken-abc"},
    )
    client = app.test_client()

    def detailed(headers: dict[str, str]) -> bool:
        return "reason" in client.get("/health", headers=headers).get_json()["checks"]["redis"]

    assert not detailed({})
    assert not detailed({"Authorization": "Bearer wrong"})
    assert not detailed({"Authorization": "Basic t0ken-abc"})
    assert not detailed({"X-Health-Token": "t0ken-ab"})
    assert not detailed({"X-Health-Token": "t0ken-abc\u00e9"})
    assert detailed({"Authorization": "Bearer t0ken-abc"})
    assert detailed({"Authorization": "bearer t0ken-abc"})
    assert detailed({"X-Health-Token": "t0ken-abc"})


def test_details_mask_passwords_and_show_the_failure(make_app: MakeApp) -> None:
    """With details: reason, error and target, and still no password."""
    app = _app_with_secrets(make_app, **{Keys.HEALTH_SHOW_DETAILS: "always"})
    response = app.test_client().get("/health")
    text = response.get_data(as_text=True)
    assert "r3dis-pass" not in text and "pg-pass" not in text
    checks = response.get_json()["checks"]
    assert checks["redis"]["reason"] == "ConnectionError"
    assert "refused" in checks["redis"]["error"].lower()
    assert checks["redis"]["details"]["url"].startswith("redis://:***@127.0.0.1:")
    assert checks["postgres"]["details"]["dsn"].startswith("postgresql://app:***@127.0.0.1:")
    assert checks["postgres"]["critical"] is True


def test_reason_and_nested_details_are_masked_in_body_api_and_log(make_app: MakeApp) -> None:
    """Passwords in a check's reason and in details at any depth (dicts, lists, tuples)
    are masked in the body, the Python API and the status-change log line."""
    app, obs = build(make_app, {**QUIET, Keys.HEALTH_SHOW_DETAILS: "always"})

    @obs.health_check("orders_db")
    def orders_db() -> CheckResult:
        return CheckResult.unhealthy(
            "could not connect to postgresql://app:hunter2@db/orders",
            replica={"dsn": "postgresql://app:hunter2@replica/orders", "port": 5432},
            fallbacks=["redis://:hunter2@cache:6379/0", ("host=db password=hunter2",)],
        )

    with capture_logs("flask_gateway_obs.health") as logs:
        response = app.test_client().get("/health")
    assert "hunter2" not in response.get_data(as_text=True)
    check = response.get_json()["checks"]["orders_db"]
    assert check["reason"] == "could not connect to postgresql://app:***@db/orders"
    assert check["details"] == {
        "replica": {"dsn": "postgresql://app:***@replica/orders", "port": 5432},
        "fallbacks": ["redis://:***@cache:6379/0", ["host=db password=***"]],
    }
    assert obs.check_health().checks["orders_db"].reason == check["reason"]
    assert "hunter2" not in "".join(logs.lines)
    assert [r["reason"] for r in logs.records] == [check["reason"]]


def test_custom_token_header(make_app: MakeApp) -> None:
    """GATEWAY_OBS_HEALTH_TOKEN_HEADER names the header that carries the token."""
    app, obs = build(
        make_app,
        {
            **QUIET,
            Keys.HEALTH_SHOW_DETAILS: "when_authorized",
            Keys.HEALTH_TOKEN: "abc",
            Keys.HEALTH_TOKEN_HEADER: "X-Probe-Key",
        },
    )
    obs.health_check("bad")(lambda: CheckResult.degraded("slow"))
    client = app.test_client()
    assert (
        "reason"
        not in client.get("/health", headers={"X-Health-Token": "abc"}).get_json()["checks"]["bad"]
    )
    body = client.get("/health", headers={"X-Probe-Key": "abc"}).get_json()
    assert body["checks"]["bad"]["reason"] == "slow"


def test_statuses_answer_200_200_503_by_default(make_app: MakeApp) -> None:
    """healthy 200, degraded 200 (a non-critical failure), unhealthy 503 (a critical one)."""
    app, obs = build(make_app, QUIET)
    state = {"optional": True, "critical": True}
    obs.health_check("optional", critical=False)(lambda: state["optional"])
    obs.health_check("critical")(lambda: state["critical"])
    client = app.test_client()
    assert client.get("/health").status_code == 200
    state["optional"] = False
    runner_of(app).ttl = 0
    response = client.get("/health")
    assert (response.status_code, response.get_json()["status"]) == (200, DEGRADED)
    state["critical"] = False
    response = client.get("/health")
    assert (response.status_code, response.get_json()["status"]) == (503, UNHEALTHY)


def test_http_status_mapping_is_configurable(make_app: MakeApp) -> None:
    """GATEWAY_OBS_HEALTH_HTTP_STATUS_* change the codes."""
    app, obs = build(
        make_app,
        {
            **QUIET,
            Keys.HEALTH_HTTP_STATUS_DEGRADED: 207,
            Keys.HEALTH_HTTP_STATUS_UNHEALTHY: "500",
        },
    )
    obs.health_check("optional", critical=False, groups=("ready",))(lambda: False)
    obs.health_check("critical", groups=("mine",))(lambda: False)
    client = app.test_client()
    assert client.get("/health/ready").status_code == 207
    assert client.get("/health").status_code == 500


@pytest.mark.parametrize("unhealthy", [200, 500])
def test_draining_answers_503_whatever_the_configured_unhealthy_status(
    make_app: MakeApp, unhealthy: int
) -> None:
    """While draining, /health/ready and /health answer 503 even when unhealthy is mapped to
    another status; /health/live keeps answering 200."""
    app, obs = build(make_app, {**QUIET, Keys.HEALTH_HTTP_STATUS_UNHEALTHY: unhealthy})
    client = app.test_client()
    obs.begin_drain()
    for path in ("/health/ready", "/health"):
        response = client.get(path)
        body = response.get_json()
        assert (response.status_code, body["status"], body["draining"]) == (503, UNHEALTHY, True)
    assert client.get("/health/live").status_code == 200


# --- endpoints -----------------------------------------------------------------------------------


def test_endpoints_ignore_query_strings_and_bodies_and_answer_head(make_app: MakeApp) -> None:
    """GET with any query or body is the same probe; HEAD gets the status without a body."""
    app = make_app(QUIET)
    client = app.test_client()
    plain = client.get("/health").get_json()
    noisy = client.get("/health?details=true&group=x", data=b"\x00junk").get_json()
    assert noisy["checks"] == plain["checks"] and noisy["status"] == plain["status"]
    head = client.head("/health/ready")
    assert head.status_code == 200 and head.data == b""


def test_wrong_method_is_a_problem_json_405(make_app: MakeApp) -> None:
    """POST to a health endpoint answers through the error handler."""
    response = make_app(QUIET).test_client().post("/health/ready")
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "method_not_allowed"


def test_an_internal_failure_is_a_problem_json_500(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the runner itself fail, the endpoint answers a generic problem+json 500."""
    app = make_app(QUIET)

    def broken(*args: Any, **kwargs: Any) -> HealthReport:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(runner_of(app), "run", broken)
    response = app.test_client().get("/health")
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    assert "secret internals" not in response.get_data(as_text=True)


def test_health_paths_are_internal_and_out_of_the_access_log(make_app: MakeApp) -> None:
    """The three paths are registered as internal and write no access-log line."""
    app = make_app(QUIET)
    app.add_url_rule("/items", "items", lambda: {"items": []})
    assert {"/health", "/health/live", "/health/ready"} <= app.extensions[
        EXTENSION_KEY
    ].internal_paths
    client = app.test_client()
    with capture_logs() as logs:
        for path in ("/health", "/health/live", "/health/ready", "/items"):
            client.get(path)
    paths = [r.get("path") for r in logs.records if r.get("logger") == "flask_gateway_obs.access"]
    assert paths == ["/items"]


def test_paths_are_configurable(make_app: MakeApp) -> None:
    """GATEWAY_OBS_HEALTH_*_PATH move the endpoints."""
    app = make_app(
        {
            **QUIET,
            Keys.HEALTH_PATH: "/status",
            Keys.HEALTH_LIVE_PATH: "/livez",
            Keys.HEALTH_READY_PATH: "/readyz/",
        }
    )
    client = app.test_client()
    for path in ("/status", "/livez", "/readyz"):
        assert client.get(path).status_code == 200
    assert client.get("/health").status_code == 404
    assert {"/status", "/livez", "/readyz"} <= app.extensions[EXTENSION_KEY].internal_paths


def test_disabled_endpoints_leave_the_python_api(make_app: MakeApp) -> None:
    """GATEWAY_OBS_HEALTH_ENABLED=False serves no endpoint; check_health still works."""
    app, obs = build(make_app, {**QUIET, Keys.HEALTH_ENABLED: False})
    assert app.test_client().get("/health").status_code == 404
    assert (
        not {"/health", "/health/live", "/health/ready"}
        & app.extensions[EXTENSION_KEY].internal_paths
    )
    assert obs.check_health().status == HEALTHY


@pytest.mark.parametrize(
    ("config", "bad_key"),
    [
        ({Keys.HEALTH_SHOW_DETAILS: "when_authorized"}, Keys.HEALTH_TOKEN),
        ({Keys.HEALTH_SHOW_DETAILS: "sometimes"}, Keys.HEALTH_SHOW_DETAILS),
        ({Keys.HEALTH_TIMEOUT: 0}, Keys.HEALTH_TIMEOUT),
        ({Keys.HEALTH_CACHE_TTL: -1}, Keys.HEALTH_CACHE_TTL),
        ({Keys.HEALTH_MAX_WORKERS: 0}, Keys.HEALTH_MAX_WORKERS),
        ({Keys.HEALTH_HTTP_STATUS_UNHEALTHY: 700}, Keys.HEALTH_HTTP_STATUS_UNHEALTHY),
        ({Keys.HEALTH_HTTP_STATUS_DEGRADED: 199}, Keys.HEALTH_HTTP_STATUS_DEGRADED),
        ({Keys.HEALTH_PATH: "health"}, Keys.HEALTH_PATH),
        ({Keys.HEALTH_READY_PATH: "/health"}, Keys.HEALTH_READY_PATH),
        ({Keys.HEALTH_MEMORY_UNHEALTHY_PERCENT: 101}, Keys.HEALTH_MEMORY_UNHEALTHY_PERCENT),
        (
            {Keys.HEALTH_MEMORY_DEGRADED_PERCENT: 96, Keys.HEALTH_MEMORY_UNHEALTHY_PERCENT: 95},
            Keys.HEALTH_MEMORY_DEGRADED_PERCENT,
        ),
        ({Keys.HEALTH_DISK_DEGRADED_PERCENT: 99}, Keys.HEALTH_DISK_DEGRADED_PERCENT),
        ({Keys.HEALTH_DISK_PATH: "  "}, Keys.HEALTH_DISK_PATH),
    ],
)
def test_bad_health_config_fails_at_init_app(
    make_app: MakeApp, config: dict[str, Any], bad_key: str
) -> None:
    """Every bad health value is a ConfigError that names the key."""
    with pytest.raises(ConfigError) as caught:
        make_app(config)
    assert bad_key in {key for key, _, _ in caught.value.problems}


@pytest.mark.parametrize(
    ("config", "clash"),
    [
        ({Keys.METRICS_PATH: "/health"}, (Keys.METRICS_PATH, Keys.HEALTH_PATH)),
        ({Keys.HEALTH_LIVE_PATH: "/metrics"}, (Keys.METRICS_PATH, Keys.HEALTH_LIVE_PATH)),
        ({Keys.METRICS_PATH: "/health/ready/"}, (Keys.METRICS_PATH, Keys.HEALTH_READY_PATH)),
        ({Keys.HEALTH_PATH: "/health/live"}, (Keys.HEALTH_LIVE_PATH, Keys.HEALTH_PATH)),
    ],
)
def test_two_endpoints_on_one_path_are_a_config_error(
    make_app: MakeApp, config: dict[str, Any], clash: tuple[str, str]
) -> None:
    """The extension's endpoint paths (health, live, ready, metrics) must be distinct: one
    ConfigError names the clash, instead of one endpoint silently hiding another."""
    with pytest.raises(ConfigError) as caught:
        make_app({**QUIET, **config})
    assert [key for key, _, _ in caught.value.problems] == [clash[0]]
    assert clash[1] in str(caught.value)


def test_paths_of_endpoints_that_are_off_may_coincide(make_app: MakeApp) -> None:
    """With metrics off (or its endpoint off), /health may be any path; the same for health."""
    app = make_app({**QUIET, Keys.METRICS_ENABLED: False, Keys.METRICS_PATH: "/health"})
    assert app.test_client().get("/health").get_json()["status"] == HEALTHY
    app = make_app({**QUIET, Keys.METRICS_ENDPOINT: False, Keys.METRICS_PATH: "/health"})
    assert app.test_client().get("/health").get_json()["status"] == HEALTHY
    app = make_app({**QUIET, Keys.HEALTH_ENABLED: False, Keys.HEALTH_LIVE_PATH: "/metrics"})
    assert app.test_client().get("/metrics").mimetype == "text/plain"


@pytest.mark.parametrize("path", ["/metrics/<x>", "/h<int:n>", "/m<", "/a>b", "/h?x=1", "/h#top"])
@pytest.mark.parametrize("key", [Keys.HEALTH_PATH, Keys.HEALTH_READY_PATH, Keys.METRICS_PATH])
def test_a_path_with_rule_syntax_is_a_config_error(make_app: MakeApp, key: str, path: str) -> None:
    """URL rule syntax (or a query, a fragment) in an endpoint path is refused at init_app,
    not a 500 at the first probe or werkzeug's ValueError."""
    with pytest.raises(ConfigError) as caught:
        make_app({**QUIET, key: path})
    assert [k for k, _, _ in caught.value.problems] == [key]


def test_health_endpoints_are_never_rate_limited(make_app: MakeApp) -> None:
    """With a default limit of 2 per minute, probes keep answering 200; other routes get 429."""
    app = make_app(
        {
            **QUIET,
            Keys.RATELIMIT_ENABLED: True,
            "RATELIMIT_DEFAULT": "2 per minute",
            "RATELIMIT_STORAGE_URI": "memory://",
        }
    )
    app.add_url_rule("/items", "items", lambda: {"items": []})
    client = app.test_client()
    for path in ("/health", "/health/live", "/health/ready"):
        assert [client.get(path).status_code for _ in range(5)] == [200] * 5
    assert [client.get("/items").status_code for _ in range(3)] == [200, 200, 429]


def test_probes_feed_health_metrics_and_are_not_counted_as_requests(make_app: MakeApp) -> None:
    """health_check_status and dependency_latency_seconds move; http_requests_total does not."""
    from flask_gateway_obs.testing import metric_value

    app, obs = build(make_app, QUIET)
    obs.health_check("ok")(lambda: None)
    obs.health_check("optional", critical=False)(lambda: CheckResult.degraded("slow"))
    client = app.test_client()
    for path in ("/health", "/health/live", "/health/ready"):
        client.get(path)
    assert metric_value(app, "health_check_status", check="ok") == 1.0
    assert metric_value(app, "health_check_status", check="optional") == 0.5
    assert (
        metric_value(app, "dependency_latency_seconds_count", dependency="ok", operation="health")
        == 1.0
    )
    assert metric_value(app, "http_requests_total") == 0.0
