"""The one Redis URL -> client helper: the URL forms, bad URLs as one clear ConfigError,
clients that connect only when used, the process's shared clients and their reset."""

from __future__ import annotations

import pytest

from flask_gateway_obs import ConfigError, GatewayObs
from flask_gateway_obs import resilience as resilience_module
from flask_gateway_obs.config import Keys
from flask_gateway_obs.config.redis import parse_redis_url
from flask_gateway_obs.core import redis as core_redis
from flask_gateway_obs.testing import capture_logs, reset

from ..conftest import MakeApp, free_port


def test_each_deployment_is_parsed_from_its_url() -> None:
    """One server, Sentinel (sentinels and service) and Cluster (nodes), credentials decoded."""
    single = parse_redis_url("rediss://:pw@cache.internal:6380/2")
    sentinel = parse_redis_url("redis+sentinel://user:p%40ss@10.0.0.1:26379,10.0.0.2:26380/main")
    cluster = parse_redis_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001")
    assert (single.kind, single.password) == ("single", "pw")
    assert (sentinel.kind, sentinel.service, sentinel.username, sentinel.password) == (
        "sentinel",
        "main",
        "user",
        "p@ss",
    )
    assert sentinel.nodes == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (cluster.kind, cluster.nodes) == ("cluster", (("10.0.0.1", 7000), ("10.0.0.2", 7001)))
    assert "p@ss" not in repr(sentinel)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:hunter2@127.0.0.1:26379",  # no service
        "redis+sentinel://:hunter2@127.0.0.1/main",  # no port
        "redis+cluster://:hunter2@127.0.0.1:7000/3",  # a db
        "memcached://:hunter2@127.0.0.1:11211",
    ],
)
def test_a_bad_redis_url_is_a_config_error_without_its_password(
    make_app: MakeApp, url: str
) -> None:
    """GATEWAY_OBS_REDIS_URL of another form fails init_app, naming the key and the forms."""
    app = make_app({Keys.REDIS_URL: url}, init=False)
    with pytest.raises(ConfigError) as caught:
        GatewayObs(app)
    assert [problem[0] for problem in caught.value.problems] == [Keys.REDIS_URL]
    assert "redis+sentinel://host:port" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_clients_connect_only_when_used() -> None:
    """Making a client of any kind talks to nobody; a cluster nobody answers fails at its
    first command with redis' ConnectionError (a RedisError)."""
    import redis

    dead = free_port()
    single = core_redis.client(f"redis://127.0.0.1:{dead}/0", timeout=0.2)
    sentinel = core_redis.client(f"redis+sentinel://127.0.0.1:{dead}/main", timeout=0.2)
    cluster = core_redis.client(f"redis+cluster://127.0.0.1:{dead}", timeout=0.2)
    assert isinstance(single, redis.Redis)
    assert isinstance(sentinel, redis.Redis)
    assert core_redis.is_cluster(cluster)
    assert not core_redis.is_cluster(single)
    with pytest.raises(redis.ConnectionError):
        cluster.ping()
    with pytest.raises(redis.ConnectionError):
        sentinel.ping()


def test_shared_clients_are_one_per_url_until_reset() -> None:
    """shared() hands out one client per URL and options; testing.reset() forgets them."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    first = core_redis.shared(url, timeout=0.2)
    assert core_redis.shared(url, timeout=0.2) is first
    assert core_redis.shared(url, timeout=0.3) is not first
    reset()
    assert core_redis.shared(url, timeout=0.2) is not first


@pytest.mark.parametrize("scheme", ["redis+sentinel", "redis+cluster"])
def test_an_unreachable_deployment_never_stops_the_breakers(make_app: MakeApp, scheme: str) -> None:
    """Redis breaker storage on a Sentinel set-up or a cluster that is down: init_app
    succeeds and the breaker works on its local state, with the usual warning."""
    dead = free_port()
    app = make_app(
        {
            Keys.REDIS_URL: f"{scheme}://127.0.0.1:{dead}"
            + ("/main" if "sentinel" in scheme else ""),
            Keys.BREAKER_STORAGE: "redis",
            Keys.SERVICE_NAME: "orders",
            Keys.BREAKER_REDIS_TIMEOUT: 0.2,
            # limits' own cluster client connects as it is made: not this test's subject.
            Keys.RATELIMIT_ENABLED: False,
        }
    )
    breakers = resilience_module.of_state(app.extensions["gateway_obs"]).breakers
    with capture_logs("flask_gateway_obs.breaker") as logs:
        cb = breakers.get("payments", fail_max=1)
        assert cb.call(lambda: "ok") == "ok"
    assert logs.find(message="breaker state storage unavailable; using local state")
