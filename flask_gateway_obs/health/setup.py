"""Setting up an app's health checks: the built-in ones from the settings, the ones and
the clients given to the ``GatewayObs`` object, and the endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask

from ..core.state import current_state
from .model import HealthCheck
from .runner import HealthRunner, runner_of

if TYPE_CHECKING:
    from ..core.state import ObsState

__all__ = ["HealthSetup", "init_app", "unchecked_builtins"]


class HealthSetup:
    """Checks and clients given to a ``GatewayObs`` object, before or after ``init_app``.

    What is given before ``init_app`` applies to every app set up afterwards. What is
    given later applies to the current app inside an app context, and otherwise to
    every app the object has set up and will set up.
    """

    def __init__(self) -> None:
        self.checks: dict[str, HealthCheck] = {}
        self.redis_client: Any = None
        self.postgres: Any = None

    def add_check(self, check: HealthCheck, states: list[ObsState]) -> None:
        targets = _targets(states)
        if targets is None:
            existing = self.checks.get(check.name)
            if existing is not None and not existing.same_definition(check):
                raise ValueError(
                    f"a health check named {check.name!r} is already registered; "
                    "give this one another name"
                )
            self.checks[check.name] = check
            targets = states
        for state in targets:
            runner_of(state).register(check)

    def set_redis_client(self, client: Any, states: list[ObsState]) -> None:
        targets = _targets(states)
        if targets is None:
            self.redis_client = client
            targets = states
        for state in targets:
            _install_redis(state, runner_of(state), client)

    def set_postgres(self, pool_or_dsn: Any, states: list[ObsState]) -> None:
        if isinstance(pool_or_dsn, str) and not pool_or_dsn.strip():
            raise ValueError("set_postgres_pool() got an empty DSN")
        targets = _targets(states)
        if targets is None:
            self.postgres = pool_or_dsn
            targets = states
        for state in targets:
            _install_postgres(state, runner_of(state), pool_or_dsn)


def _targets(states: list[ObsState]) -> list[ObsState] | None:
    """The one app of the current app context if it is one of ``states``; else ``None``."""
    found = current_state()
    if found is not None and any(found is s for s in states):
        return [found]
    return None


def _install_redis(state: ObsState, runner: HealthRunner, client: Any) -> None:
    from .checks import RedisCheck

    settings = state.settings
    if not settings.health_check_redis:
        return
    if client is not None:
        check = RedisCheck(client=client, timeout=settings.health_timeout)
    elif settings.redis_url is not None:
        check = RedisCheck(url=settings.redis_url, timeout=settings.health_timeout)
    else:
        runner.unregister("redis")
        return
    runner.register(HealthCheck("redis", check, target=check.target), replace=True)


def _install_postgres(state: ObsState, runner: HealthRunner, pool_or_dsn: Any) -> None:
    from .checks import PostgresCheck

    settings = state.settings
    if not settings.health_check_postgres:
        return
    if isinstance(pool_or_dsn, str):
        check = PostgresCheck(dsn=pool_or_dsn, timeout=settings.health_timeout)
    elif pool_or_dsn is not None:
        check = PostgresCheck(pool=pool_or_dsn, timeout=settings.health_timeout)
    elif settings.database_url is not None:
        check = PostgresCheck(dsn=settings.database_url, timeout=settings.health_timeout)
    else:
        runner.unregister("postgres")
        return
    runner.register(HealthCheck("postgres", check, target=check.target), replace=True)


def init_app(app: Flask, state: ObsState, setup: HealthSetup) -> None:
    """Create the app's runner with the built-in and registered checks; serve the endpoints."""
    from .checks import DiskCheck, MemoryCheck

    settings = state.settings
    runner = HealthRunner(state)
    state.health = runner
    _install_redis(state, runner, setup.redis_client)
    _install_postgres(state, runner, setup.postgres)
    if settings.health_check_memory:
        memory = MemoryCheck(
            settings.health_memory_degraded_percent, settings.health_memory_unhealthy_percent
        )
        runner.register(HealthCheck("memory", memory, groups=frozenset()))
    if settings.health_check_disk:
        disk = DiskCheck(
            settings.health_disk_path,
            settings.health_disk_degraded_percent,
            settings.health_disk_unhealthy_percent,
        )
        runner.register(HealthCheck("disk", disk, groups=frozenset()))
    for check in setup.checks.values():
        runner.register(check)
    if settings.health_enabled:
        from .endpoints import register

        register(app, state)


def unchecked_builtins(state: ObsState) -> list[tuple[str, str]]:
    """The built-in checks this app does not run, each with why (for ``flask obs health``)."""
    settings = state.settings
    checks = runner_of(state).checks
    missing: list[tuple[str, str]] = []
    sources = (
        ("redis", settings.health_check_redis, "REDIS_URL", "client"),
        ("postgres", settings.health_check_postgres, "DATABASE_URL", "pool"),
        ("memory", settings.health_check_memory, None, None),
        ("disk", settings.health_check_disk, None, None),
    )
    for name, on, url_key, given in sources:
        if name in checks:
            continue
        if not on:
            missing.append((name, f"off: GATEWAY_OBS_HEALTH_CHECK_{name.upper()}"))
        elif url_key is not None:
            missing.append((name, f"no GATEWAY_OBS_{url_key} in app.config, no {given} given"))
    return missing
