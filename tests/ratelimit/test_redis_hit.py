"""A fixed-window hit on Redis on the limiter's own connections: counted once, whatever the
connection went through (closed by the server, a flushed script cache, threads, a fork)."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from flask_gateway_obs.config import Keys
from flask_gateway_obs.ratelimit.redis_hit import RedisHit

from .helpers import (
    CLIENT,
    add_routes,
    count_commands,
    delete_keys,
    limiter_of,
    redis_counts,
    statuses,
    unique_service,
    written_commands,
)

pytestmark = pytest.mark.redis

SCRIPT = b"""
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("ttl", KEYS[1])}
"""


def limited_app(make_app: Any, url: str, service: str, limit: str = "1000/minute") -> Any:
    return add_routes(
        make_app({Keys.REDIS_URL: url, Keys.SERVICE_NAME: service, "RATELIMIT_DEFAULT": limit})
    )


def admin(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=2)


def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_outage(
    make_app, redis_url, monkeypatch
) -> None:
    """CLIENT KILL on every limiter connection: the next hit reconnects once and is counted."""
    service = unique_service()
    app = limited_app(make_app, redis_url, service)
    client = app.test_client()
    try:
        assert statuses(client, "/free", 2) == [200, 200]
        server = admin(redis_url)
        killed = server.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        sent = written_commands(monkeypatch, limiter_of(app))
        responses = [client.get("/free", environ_base=CLIENT) for _ in range(2)]
        assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["997", "996"]
        assert not limiter_of(app).storage_down
        assert sent == ["EVALSHA"] * 3  # the one on the closed connection, once more, the next
        assert list(redis_counts(redis_url, service).values()) == [(4, True)]
    finally:
        delete_keys(redis_url, service)


def test_a_flushed_script_cache_loads_the_script_again_without_an_outage(
    make_app, redis_url
) -> None:
    """SCRIPT FLUSH (as on a new master): the hit loads its script and is counted once."""
    service = unique_service()
    app = limited_app(make_app, redis_url, service)
    client = app.test_client()
    try:
        assert statuses(client, "/free", 1) == [200]
        admin(redis_url).script_flush()
        response = client.get("/free", environ_base=CLIENT)
        assert response.status_code == 200 and response.headers["X-RateLimit-Remaining"] == "998"
        assert not limiter_of(app).storage_down
        assert list(redis_counts(redis_url, service).values()) == [(2, True)]
    finally:
        delete_keys(redis_url, service)


def test_threads_count_every_hit_on_no_more_connections_than_run_at_once(
    make_app, redis_server
) -> None:
    """8 threads x 25 requests: 200 counts in Redis, on at most 8 connections of the limiter."""
    service = unique_service()
    app = limited_app(make_app, redis_server.url, service, limit="100000/minute")
    server = admin(redis_server.url)
    before = int(server.info("clients")["connected_clients"])
    failures: list[Any] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        client = app.test_client()
        barrier.wait()
        codes = statuses(client, "/free", 25)
        if codes != [200] * 25:
            failures.append(codes)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures
    assert list(redis_counts(redis_server.url, service).values()) == [(200, True)]
    opened = int(server.info("clients")["connected_clients"]) - before
    assert 1 <= opened <= 8 + 1  # the hits' connections, and the client's own pool's one
    assert not limiter_of(app).storage_down


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_counts_on_its_own_connection_not_its_parents(make_app, redis_url) -> None:
    """Parent hits, forks; child and parent hit 200 times each at once, as two clients:
    each sees exactly its own counts (no reply read by the other process)."""
    service = unique_service()
    app = limited_app(make_app, redis_url, service, limit="100000/minute")
    client = app.test_client()

    def own_counts(address: str, first: int) -> bool:
        environ = {"REMOTE_ADDR": address}
        seen = [
            client.get("/free", environ_base=environ).headers.get("X-RateLimit-Remaining")
            for _ in range(200)
        ]
        return seen == [str(100000 - n) for n in range(first, first + 200)]

    try:
        assert statuses(client, "/free", 1) == [200]  # a connection kept before the fork
        pid = os.fork()
        if pid == 0:  # the child: never back into pytest
            code = 1
            try:
                code = 0 if own_counts("192.0.2.8", 1) and not limiter_of(app).storage_down else 2
            finally:
                os._exit(code)
        assert own_counts(CLIENT["REMOTE_ADDR"], 2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not limiter_of(app).storage_down
        assert sorted(redis_counts(redis_url, service).values()) == [(200, True), (201, True)]
    finally:
        delete_keys(redis_url, service)


def test_a_password_and_database_in_the_url_are_used_by_the_hits(make_app, redis_server) -> None:
    """A server with a password, limits in db 3: the hits authenticate and count in db 3."""
    server = admin(redis_server.url)
    server.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{redis_server.port}/3"
    service = unique_service()
    app = limited_app(make_app, url, service)
    assert statuses(app.test_client(), "/free", 3) == [200] * 3
    assert not limiter_of(app).storage_down
    assert list(redis_counts(url, service).values()) == [(3, True)]


def test_a_blocking_pool_keeps_the_clients_own_script_call(redis_url) -> None:
    """A client on a BlockingConnectionPool (its own bound): hits go through the client."""
    import redis

    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=2)
    client = redis.Redis(connection_pool=pool)
    key = f"rl-test-hit-{unique_service()}"
    try:
        hit = RedisHit(client, SCRIPT)
        assert not hit.direct
        replies = [hit(key, 60, 2) for _ in range(3)]
        assert [int(count) for count, _ in replies] == [2, 4, 6]
        assert all(0 < int(ttl) <= 60 for _, ttl in replies)
    finally:
        client.delete(key)
        client.close()


def test_a_hit_on_a_key_of_another_type_is_a_storage_error_and_the_connection_stays(
    redis_url,
) -> None:
    """WRONGTYPE comes back as redis-py's ResponseError; the next hit works on."""
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"rl-test-hit-{unique_service()}"
    try:
        hit = RedisHit(client, SCRIPT)
        assert hit.direct
        client.rpush(key, "not a counter")
        with pytest.raises(redis.ResponseError):
            hit(key, 60, 1)
        client.delete(key)
        assert int(hit(key, 60, 1)[0]) == 1
    finally:
        hit.close()
        client.delete(key)
        client.close()


def test_a_stopped_server_fails_the_hit_within_one_request(make_app, redis_server, monkeypatch):
    """The server gone: the request is served on the stand-in; one attempt, not one per request."""
    service = unique_service()
    app = limited_app(make_app, redis_server.url, service, limit="3/minute")
    client = app.test_client()
    assert statuses(client, "/free", 1) == [200]
    redis_server.stop()
    sent = count_commands(monkeypatch, limiter_of(app))
    assert statuses(client, "/free", 4) == [200, 200, 200, 429]  # counted in memory from zero
    assert sent == ["EVALSHA"] and limiter_of(app).storage_down
