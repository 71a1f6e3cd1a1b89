"""Built-in checks against real Redis and PostgreSQL, and the disk check (the memory check
has a module of its own)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flask_gateway_obs.health import DEGRADED, HEALTHY, UNHEALTHY
from flask_gateway_obs.health.checks import (
    DiskCheck,
    PostgresCheck,
    RedisCheck,
)

from ..conftest import free_port
from .conftest import FreezingProxy

GIB = 1024**3

# --- Redis ---------------------------------------------------------------------------------


def test_redis_check_pings_the_real_server(redis_url: str) -> None:
    """PING against the local Redis is healthy and names its target."""
    result = RedisCheck(url=redis_url, timeout=1.0)()
    assert result.status == HEALTHY
    assert result.details["url"] == redis_url


def test_redis_check_uses_a_client_given_to_it(redis_url: str) -> None:
    """A client the application built is used as it is."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=1)
    try:
        result = RedisCheck(client=client, timeout=1.0)()
    finally:
        client.close()
    assert result.status == HEALTHY
    assert result.details == {"client": "Redis"}


def test_redis_check_masks_the_password_of_its_url() -> None:
    """The target shown in details never carries the password of the URL."""
    check = RedisCheck(url="redis://:s3cret@127.0.0.1:6379/0", timeout=1.0)
    assert "s3cret" not in str(check.target)
    assert check.target["url"] == "redis://:***@127.0.0.1:6379/0"


def test_redis_check_needs_exactly_one_source() -> None:
    """Neither or both of url and client is a programming error."""
    with pytest.raises(ValueError, match="exactly one"):
        RedisCheck(timeout=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        RedisCheck(url="redis://127.0.0.1", client=object(), timeout=1.0)


def test_redis_check_refused_connection_raises() -> None:
    """Nobody listening: the check raises a connection error at once (no retries)."""
    import redis

    check = RedisCheck(url=f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    with pytest.raises(redis.ConnectionError):
        check()


def test_redis_check_black_hole_gives_up_after_its_socket_timeout(
    black_hole: tuple[str, int],
) -> None:
    """A server that accepts and never answers costs the socket timeout, not forever."""
    import redis

    host, port = black_hole
    check = RedisCheck(url=f"redis://{host}:{port}/0", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        check()
    assert time.monotonic() - started < 0.3 + 1.0


# --- PostgreSQL ------------------------------------------------------------------------------


def test_postgres_check_selects_one_on_a_new_connection(database_url: str) -> None:
    """SELECT 1 over a fresh connection from the DSN is healthy."""
    result = PostgresCheck(dsn=database_url, timeout=2.0)()
    assert result.status == HEALTHY
    assert result.details == {"dsn": database_url}


def test_postgres_check_keeps_options_of_the_dsn(database_url: str) -> None:
    """``options`` already in the DSN survive next to the statement timeout."""
    import psycopg2

    dsn = f"{database_url}?options=-c%20search_path%3Dpublic"
    assert PostgresCheck(dsn=dsn, timeout=2.0)().status == HEALTHY
    psycopg2.connect(dsn, connect_timeout=2).close()


def test_postgres_check_masks_the_password_of_its_dsn() -> None:
    """Both URL and key=value DSNs show the password masked."""
    url_check = PostgresCheck(dsn="postgresql://app:pw123@db.internal/orders", timeout=1.0)
    kv_check = PostgresCheck(dsn="host=db.internal user=app password=pw123", timeout=1.0)
    assert url_check.target["dsn"] == "postgresql://app:***@db.internal/orders"
    assert kv_check.target["dsn"] == "host=db.internal user=app password=***"


class CountingPool:
    """A real psycopg2 pool that counts what is borrowed and returned."""

    def __init__(self, dsn: str) -> None:
        from psycopg2.pool import ThreadedConnectionPool

        self.pool = ThreadedConnectionPool(1, 1, dsn, connect_timeout=2)
        self.borrowed = 0
        self.returned: list[bool] = []

    def getconn(self) -> Any:
        self.borrowed += 1
        return self.pool.getconn()

    def putconn(self, conn: Any, close: bool = False) -> None:
        self.returned.append(close)
        self.pool.putconn(conn, close=close)

    def closeall(self) -> None:
        self.pool.closeall()


@pytest.fixture
def counting_pool(database_url: str) -> Any:
    """A one-connection pool on the real PostgreSQL."""
    pool = CountingPool(database_url)
    yield pool
    pool.closeall()


def test_postgres_check_returns_a_pooled_connection(counting_pool: CountingPool) -> None:
    """Each run borrows the pool's only connection and hands it back, kept open."""
    check = PostgresCheck(pool=counting_pool, timeout=2.0)
    for _ in range(3):
        assert check().status == HEALTHY
    assert counting_pool.borrowed == 3
    assert counting_pool.returned == [False, False, False]


def test_postgres_check_leaves_no_statement_timeout_on_a_pooled_connection(
    counting_pool: CountingPool,
) -> None:
    """The check's statement timeout is local to its rolled-back transaction."""
    PostgresCheck(pool=counting_pool, timeout=0.25)()
    conn = counting_pool.pool.getconn()
    try:
        from psycopg2.extensions import TRANSACTION_STATUS_IDLE

        assert conn.get_transaction_status() == TRANSACTION_STATUS_IDLE
        with conn.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone() == ("0",)
    finally:
        conn.rollback()
        counting_pool.pool.putconn(conn)


def test_postgres_check_keeps_autocommit_of_a_pooled_connection(
    counting_pool: CountingPool,
) -> None:
    """An autocommit connection is checked in a transaction and handed back in autocommit."""
    conn = counting_pool.pool.getconn()
    conn.autocommit = True
    counting_pool.pool.putconn(conn)
    assert PostgresCheck(pool=counting_pool, timeout=1.0)().status == HEALTHY
    conn = counting_pool.pool.getconn()
    try:
        assert conn.autocommit is True
    finally:
        counting_pool.pool.putconn(conn)


def test_postgres_check_returns_a_broken_connection_closed(
    counting_pool: CountingPool, database_url: str
) -> None:
    """A connection killed under the pool is handed back closed; the next run gets a new one."""
    import psycopg2

    conn = counting_pool.pool.getconn()
    pid = conn.get_backend_pid()
    counting_pool.pool.putconn(conn)
    killer = psycopg2.connect(database_url, connect_timeout=2)
    try:
        killer.autocommit = True
        with killer.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        killer.close()
    check = PostgresCheck(pool=counting_pool, timeout=2.0)
    with pytest.raises(psycopg2.Error):
        check()
    assert counting_pool.returned == [True]
    assert check().status == HEALTHY
    assert counting_pool.returned == [True, False]


def test_postgres_check_exhausted_pool_fails_at_once(counting_pool: CountingPool) -> None:
    """With every pooled connection in use the check fails (it does not wait for one)."""
    from psycopg2.pool import PoolError

    conn = counting_pool.pool.getconn()
    try:
        with pytest.raises(PoolError):
            PostgresCheck(pool=counting_pool, timeout=1.0)()
    finally:
        counting_pool.pool.putconn(conn)
    assert counting_pool.returned == []


def test_postgres_check_refuses_an_object_that_is_no_pool() -> None:
    """Anything but a DSN or a getconn/putconn pool is a clear TypeError."""
    with pytest.raises(TypeError, match="getconn"):
        PostgresCheck(pool=object(), timeout=1.0)


#: Scheduling allowance on a loaded 2-core machine, beyond a check's timeout.
MARGIN = 0.3


@pytest.mark.parametrize("fault", ["black_hole", "full_backlog"])
def test_postgres_check_that_never_gets_an_answer_ends_within_its_timeout(
    request: pytest.FixtureRequest, fault: str
) -> None:
    """A server that accepts and never answers the start-up, or never accepts: the thread
    is free at the check's timeout (libpq's connect_timeout would take whole seconds)."""
    host, port = request.getfixturevalue(fault)
    check = PostgresCheck(dsn=f"postgresql://u:pw@{host}:{port}/db", timeout=0.4)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.4 s"):
        check()
    assert time.monotonic() - started < 0.4 + MARGIN


def test_postgres_query_slower_than_the_timeout_is_cancelled_in_time(database_url: str) -> None:
    """A new connection whose query outlasts the timeout (pg_sleep on the real server)
    gives up within the timeout."""
    from psycopg2.extensions import QueryCanceledError

    check = PostgresCheck(dsn=database_url, timeout=0.4, query="SELECT pg_sleep(5)")
    started = time.monotonic()
    with pytest.raises((QueryCanceledError, TimeoutError)):  # the server or the clock
        check()
    assert time.monotonic() - started < 0.4 + MARGIN


def test_pooled_query_slower_than_the_timeout_is_cancelled_and_the_connection_kept(
    counting_pool: CountingPool,
) -> None:
    """On a pooled connection the server cancels the slow query before the deadline; the
    connection is handed back open and serves the next run."""
    from psycopg2.extensions import QueryCanceledError

    slow = PostgresCheck(pool=counting_pool, timeout=0.4, query="SELECT pg_sleep(5)")
    started = time.monotonic()
    with pytest.raises(QueryCanceledError):
        slow()
    assert time.monotonic() - started < 0.4 + MARGIN
    assert counting_pool.returned == [False]
    assert PostgresCheck(pool=counting_pool, timeout=1.0)().status == HEALTHY
    assert counting_pool.returned == [False, False]


def test_pooled_connection_whose_server_goes_silent_frees_the_thread_in_time(
    pg_proxy: FreezingProxy,
) -> None:
    """A pooled connection, established, whose server stops answering (what it is sent
    is acknowledged, nothing comes back): the check ends by its timeout, hands the
    connection back closed, and the next run gets a new one."""
    import psycopg2

    pool = CountingPool(f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/test")
    try:
        check = PostgresCheck(pool=pool, timeout=0.4)
        assert check().status == HEALTHY
        pg_proxy.freeze()
        outcome: dict[str, Any] = {}

        def run() -> None:
            started = time.monotonic()
            try:
                check()
            except Exception as exc:
                outcome["error"] = exc
            outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(0.4 + MARGIN + 2.0)  # a hung thread fails the test instead of hanging it
        assert not thread.is_alive(), "the check still blocks on the silent server"
        assert outcome["seconds"] < 0.4 + MARGIN
        assert isinstance(outcome["error"], psycopg2.OperationalError)
        assert pool.returned == [False, True]
        pg_proxy.thaw()
        assert check().status == HEALTHY
        assert pool.returned == [False, True, False]
    finally:
        pool.closeall()


# --- disk ------------------------------------------------------------------------------------


def _disk(used: int, free: int) -> DiskCheck:
    return DiskCheck("/data", 80.0, 90.0, usage=lambda path: (used + free + 5, used, free))


@pytest.mark.parametrize(
    ("used", "expected"),
    [(10, HEALTHY), (79, HEALTHY), (80, DEGRADED), (90, UNHEALTHY), (100, UNHEALTHY)],
)
def test_disk_check_thresholds(used: int, expected: str) -> None:
    """Share used of (used + free), against 80% and 90%."""
    result = _disk(used, 100 - used)()
    assert result.status == expected
    assert result.details["path"] == "/data"
    assert result.details["used_percent"] == float(used)


def test_disk_check_on_a_real_path(tmp_path: Path) -> None:
    """shutil.disk_usage of a real directory gives figures."""
    result = DiskCheck(str(tmp_path), 100.0, 100.0)()
    assert result.details["total_bytes"] > 0
    assert 0 <= result.details["used_percent"] <= 100


def test_disk_check_missing_path_raises(tmp_path: Path) -> None:
    """A path that does not exist fails the check (it is unhealthy, not skipped)."""
    with pytest.raises(FileNotFoundError):
        DiskCheck(str(tmp_path / "missing"))()


def test_disk_check_rejects_inverted_thresholds() -> None:
    """degraded above unhealthy is a programming error."""
    with pytest.raises(ValueError, match="degraded_percent"):
        DiskCheck("/", 95.0, 90.0)
