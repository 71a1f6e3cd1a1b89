"""Real Redis deployments on 127.0.0.1 for the tests: a Sentinel set-up (a master, a
replica and three sentinels, every one a ``redis-server``) and a three-node Cluster.

Import the fixtures into a test module (``from ..redis_deployments import
redis_sentinel  # noqa: F401``). Each is module-scoped: started once for the module's
tests, stopped after them. Without ``redis-server`` / ``redis-cli`` they skip (and fail
in CI, through ``unavailable``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from .conftest import unavailable

SERVICE = "gwobs"
#: Sentinel timings that make a failover take a few seconds.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, bus: bool = False) -> list[int]:
    """``count`` free loopback ports (with ``bus``, each port + 10000 is free too, for the
    cluster bus), below the kernel's ephemeral range."""
    found: list[int] = []
    port = 21000 + (time.monotonic_ns() // 1000) % 8000
    while len(found) < count:
        port += 1
        if port >= 30000:
            port = 21000
        if _free(port) and (not bus or _free(port + 10000)):
            found.append(port)
    return found


def _answers(port: int, command: bytes = b"PING\r\n", expect: bytes = b"+PONG") -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
            sock.sendall(command)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


def wait_until(condition: Callable[[], Any], what: str, seconds: float = 30.0) -> Any:
    """Poll ``condition`` until it returns something true; fail with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Servers:
    """``redis-server`` processes started for a test module, stopped at its end."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed")
        self.binary = str(binary)
        self.workdir = workdir
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str, config: str | None = None) -> None:
        """Start one server on ``port`` and wait until it answers."""
        directory = self.workdir / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        command = [self.binary]
        if config is not None:
            path = directory / "sentinel.conf"
            path.write_text(config)
            command.append(str(path))
        command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
        command += ["--save", "", "--appendonly", "no", *args]
        self.processes[port] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: _answers(port), f"redis-server on port {port}", 10)

    def kill(self, port: int) -> None:
        """Kill the server on ``port`` at once (no shutdown, as a crash)."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)

    def pause(self, port: int) -> None:
        """Stop the server on ``port`` (SIGSTOP): it accepts connections and never answers."""
        os.kill(self.processes[port].pid, signal.SIGSTOP)

    def stop_all(self) -> None:
        for port in list(self.processes):
            self.kill(port)


class Sentinels:
    """A master, a replica and three sentinels watching them as service ``gwobs``."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.master, self.replica, *self.sentinels = free_ports(5)
        self.url = (
            "redis+sentinel://"
            + ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
            + f"/{SERVICE}"
        )

    def start(self) -> None:
        self.servers.start(self.master)
        self.servers.start(self.replica, "--replicaof", "127.0.0.1", str(self.master))
        config = (
            "protected-mode no\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        for port in self.sentinels:
            self.servers.start(port, "--sentinel", config=config)
        wait_until(self._ready, "the sentinels to know the replica and each other")

    def _ready(self) -> bool:
        import redis

        for port in self.sentinels:
            client = redis.Redis(port=port, socket_timeout=1)
            try:
                if len(client.sentinel_sentinels(SERVICE)) < 2:
                    return False
                replicas = client.sentinel_slaves(SERVICE)
                if not replicas or not replicas[0].get("is_slave") or replicas[0].get("is_sdown"):
                    return False
            finally:
                client.close()
        return True

    def master_port(self) -> int | None:
        """The master's port as a live sentinel says it now."""
        import redis

        for port in self.sentinels:
            client = redis.Redis(port=port, socket_timeout=1)
            try:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if address:
                return int(address[1])
        return None

    def break_replica(self) -> None:
        """Cut the replica off its master for good, while it still serves (stale) reads:
        it authenticates with a wrong password, which a master without one refuses."""
        import redis

        client = redis.Redis(port=self.replica, socket_timeout=1)
        try:
            client.config_set("masterauth", "wrong")
            client.client_kill_filter(_type="master")
            wait_until(
                lambda: client.info("replication")["master_link_status"] == "down",
                "the replica to lose its master",
                10,
            )
        finally:
            client.close()

    def kill_master(self) -> int:
        """Kill the current master (as a crash); return its port."""
        port = self.master_port()
        assert port is not None
        self.servers.kill(port)
        return port

    def wait_for_failover(self, old: int, seconds: float = 25.0) -> int:
        """The port of the new master, once the sentinels promoted one."""
        return int(
            wait_until(
                lambda: (p := self.master_port()) is not None and p != old and p,
                "the sentinels to promote the replica",
                seconds,
            )
        )


class Cluster:
    """Three masters (no replicas) sharing the 16384 slots; a node is deemed failed after
    ``node_timeout_ms`` without an answer."""

    def __init__(self, servers: Servers, node_timeout_ms: int = 2000) -> None:
        self.servers = servers
        self.node_timeout_ms = node_timeout_ms
        self.ports = free_ports(3, bus=True)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            unavailable("redis-cli is not installed")
        for port in self.ports:
            self.servers.start(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
            )
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [str(cli), "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        command = b"CLUSTER INFO\r\n"
        for port in self.ports:
            wait_until(
                lambda p=port: _answers(p, command, b"$") and self._ok(p),
                f"cluster node {port} to report cluster_state:ok",
            )

    def _ok(self, port: int) -> bool:
        return self.state(port) == "ok"

    def state(self, port: int) -> str | None:
        """``cluster_state`` as the node on ``port`` reports it (``None``: no answer)."""
        import redis

        client = redis.Redis(port=port, socket_timeout=1)
        try:
            return str(client.cluster("info")["cluster_state"])
        except redis.RedisError:
            return None
        finally:
            client.close()

    def owner(self, pattern: str) -> int:
        """The port of the node that holds a key matching ``pattern``."""
        import redis

        for port in self.ports:
            client = redis.Redis(port=port, socket_timeout=1)
            try:
                if client.keys(pattern):
                    return port
            finally:
                client.close()
        raise AssertionError(f"no node holds a key matching {pattern!r}")


class _Deployment(Protocol):
    def start(self) -> None: ...


_D = TypeVar("_D", bound=_Deployment)


def _running(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Servers], _D]
) -> Iterator[_D]:
    """A deployment started in a temporary folder of its own, stopped at the end."""
    servers = Servers(tmp_path_factory.mktemp(name))
    deployment = make(servers)
    try:
        deployment.start()
        yield deployment
    finally:
        servers.stop_all()


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sentinels]:
    """A running Sentinel set-up: ``.url`` is its ``redis+sentinel://`` URL."""
    yield from _running(tmp_path_factory, "sentinel", Sentinels)


@pytest.fixture
def fresh_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A three-node Redis Cluster of the test alone (to kill or stop nodes of), whose
    nodes deem a silent node failed after half a second."""
    yield from _running(tmp_path_factory, "cluster", lambda s: Cluster(s, node_timeout_ms=500))


@pytest.fixture
def fresh_redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sentinels]:
    """A Sentinel set-up of the test alone (to break its replica)."""
    yield from _running(tmp_path_factory, "sentinel", Sentinels)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running three-node Redis Cluster: ``.url`` is its ``redis+cluster://`` URL."""
    yield from _running(tmp_path_factory, "cluster", Cluster)
