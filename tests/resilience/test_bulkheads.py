"""Bulkheads: a cap on concurrent calls (threads and coroutines), waiting up to max_wait,
503 problem+json when full, gauges and counters, config, and their place in resilient()."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from flask import Flask

from flask_gateway_obs import BulkheadFullError, ConfigError, GatewayObs, bulkhead
from flask_gateway_obs import resilience as resilience_module
from flask_gateway_obs.config import Keys
from flask_gateway_obs.resilience.bulkheads import Bulkhead
from flask_gateway_obs.testing import metric_value

from ..conftest import MakeApp
from .helpers import Flaky, Time


def make_bulkhead(app: Flask, name: str = "payments", **options: Any) -> Bulkhead:
    """The app's bulkhead ``name``."""
    return resilience_module.of_state(app.extensions["gateway_obs"]).bulkheads.get(name, **options)


class Gate:
    """An upstream that holds every call until released, and counts calls inside at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.inside = self.most = self.done = 0
        self.arrived = threading.Semaphore(0)

    def __call__(self) -> str:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        self.arrived.release()
        self.release.wait(10)
        with self.lock:
            self.inside -= 1
            self.done += 1
        return "ok"


def run_threads(target: Any, count: int) -> tuple[list[threading.Thread], list[Any]]:
    """Start ``count`` threads calling ``target``; results (or exceptions) go in a list."""
    results: list[Any] = []

    def worker() -> None:
        try:
            results.append(target())
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def wait_for(condition: Any) -> None:
    """Poll ``condition`` (a state change made by other threads), for at most 10 s."""
    event = threading.Event()
    for _ in range(1000):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError("condition never became true")


def test_eight_threads_into_two_without_waiting(app: Flask) -> None:
    """max_wait 0: two calls run, the six others are refused at once; the gauge ends at 0."""
    bh = make_bulkhead(app, max_concurrent=2, max_wait=0)
    gate = Gate()
    threads, results = run_threads(lambda: bh.call(gate), 8)
    wait_for(lambda: len(results) == 6)
    assert bh.in_use == 2
    assert metric_value(app, "bulkhead_in_use", bulkhead="payments") == 2
    gate.release.set()
    for thread in threads:
        thread.join(10)
    refused = [r for r in results if isinstance(r, BulkheadFullError)]
    assert (len(refused), results.count("ok"), gate.most) == (6, 2, 2)
    assert refused[0].status_code == 503
    assert refused[0].retry_after == 1
    assert metric_value(app, "bulkhead_rejected_total", bulkhead="payments") == 6
    assert metric_value(app, "bulkhead_in_use", bulkhead="payments") == 0


def test_eight_threads_into_two_waiting_take_turns(app: Flask) -> None:
    """max_wait > 0: the six others wait, each gets room as one ends; never more than two."""
    bh = make_bulkhead(app, max_concurrent=2, max_wait=30)
    gate = Gate()
    threads, results = run_threads(lambda: bh.call(gate), 8)
    wait_for(lambda: bh.waiting == 6)
    assert (gate.inside, bh.in_use) == (2, 2)
    gate.release.set()
    for thread in threads:
        thread.join(20)
    assert (results, gate.most) == (["ok"] * 8, 2)
    assert metric_value(app, "bulkhead_in_use", bulkhead="payments") == 0
    assert metric_value(app, "bulkhead_rejected_total", bulkhead="payments") == 0


def test_a_wait_that_runs_out_is_refused(app: Flask) -> None:
    """Room that does not come free within max_wait: BulkheadFullError, and no waiter left."""
    bh = make_bulkhead(app, max_concurrent=1, max_wait=0.05)
    gate = Gate()
    threads, _ = run_threads(lambda: bh.call(gate), 1)
    assert gate.arrived.acquire(timeout=5)
    with pytest.raises(BulkheadFullError):
        bh.call(lambda: "never")
    assert bh.waiting == 0
    gate.release.set()
    threads[0].join(5)
    assert bh.call(lambda: "later") == "later"


def test_a_full_bulkhead_through_a_route_is_a_503_problem(app: Flask) -> None:
    """BulkheadFullError reaches the error handler: 503 problem+json with Retry-After."""
    bh = make_bulkhead(app, max_concurrent=1)

    @app.get("/pay")
    def pay() -> Any:
        return {"result": bh.call(lambda: "paid")}

    with bh:  # the only room is taken
        response = app.test_client().get("/pay")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "bulkhead_full"
    assert response.headers["Retry-After"] == "1"
    assert app.test_client().get("/pay").get_json() == {"result": "paid"}


def test_coroutines_share_the_cap_and_wait_without_blocking(app: Flask) -> None:
    """async def: a second coroutine is refused with max_wait 0; with max_wait > 0 it gets
    the room when the first ends (on the same loop, without blocking it)."""
    strict = make_bulkhead(app, "strict", max_concurrent=1, max_wait=0)
    patient = make_bulkhead(app, "patient", max_concurrent=1, max_wait=30)

    async def scenario(bh: Bulkhead) -> list[Any]:
        hold = asyncio.Event()

        async def first() -> str:
            async with bh:
                await hold.wait()
                return "first"

        async def second() -> str:
            await asyncio.sleep(0)  # first is inside by now
            try:
                return await bh.call_async(asyncio.sleep, 0, "second")
            except BulkheadFullError:
                return "refused"

        async def release() -> None:
            while bh.waiting == 0 and bh is patient:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0)
            hold.set()

        return list(await asyncio.gather(first(), second(), release()))[:2]

    assert asyncio.run(scenario(strict)) == ["first", "refused"]
    assert asyncio.run(scenario(patient)) == ["first", "second"]
    assert (strict.in_use, patient.in_use) == (0, 0)


def test_async_views_go_through_the_import_time_decorator(make_app: MakeApp) -> None:
    """@bulkhead on an async function called by an async view: refused while a thread holds
    the only room, served once it is free."""
    app = make_app({Keys.BULKHEADS: {"search": {"max_concurrent": 1}}})

    @bulkhead("search")
    async def search() -> str:
        await asyncio.sleep(0)
        return "found"

    @app.get("/search")
    async def view() -> Any:
        return {"result": await search()}

    client = app.test_client()
    with make_bulkhead(app, "search"):
        assert client.get("/search").status_code == 503
    assert client.get("/search").get_json() == {"result": "found"}


def test_config_defaults_per_name_and_options(make_app: MakeApp) -> None:
    """GATEWAY_OBS_BULKHEADS[name] over GATEWAY_OBS_BULKHEAD_*; options at creation over both;
    one name is one bulkhead."""
    app = make_app(
        {
            Keys.BULKHEAD_MAX_CONCURRENT: 5,
            Keys.BULKHEAD_MAX_WAIT: 0.5,
            Keys.BULKHEADS: '{"payments": {"max_concurrent": 2, "max_wait": 0}}',
        }
    )
    payments, other = make_bulkhead(app).settings, make_bulkhead(app, "other").settings
    assert (payments.max_concurrent, payments.max_wait) == (2, 0)
    assert (other.max_concurrent, other.max_wait) == (5, 0.5)
    assert make_bulkhead(app, "tuned", max_concurrent=7).settings.max_concurrent == 7
    with pytest.raises(ValueError, match="already exists"):
        make_bulkhead(app, "tuned", max_concurrent=8)


def test_bad_bulkhead_config_is_one_error(make_app: MakeApp, app: Flask) -> None:
    """Bad defaults and per-name values name each part; bad options at creation too."""
    bad = make_app(
        {Keys.BULKHEAD_MAX_CONCURRENT: 0, Keys.BULKHEADS: {"p": {"max_wait": -1, "cap": 2}}},
        init=False,
    )
    with pytest.raises(ConfigError) as caught:
        GatewayObs(bad)
    assert {p[0] for p in caught.value.problems} == {
        Keys.BULKHEAD_MAX_CONCURRENT,
        f"{Keys.BULKHEADS}['p'].max_wait",
        f"{Keys.BULKHEADS}['p'].cap",
    }
    with pytest.raises(ConfigError, match="max_concurrent"):
        make_bulkhead(app, "x", max_concurrent="many")


def test_obs_bulkhead_and_the_process_defaults() -> None:
    """obs.bulkhead(name, ...) in an app; @bulkhead outside any app uses the defaults."""
    app = Flask("bulkheads")
    obs = GatewayObs(app, GATEWAY_OBS_LOG_CONFIGURE=False)
    with app.app_context():
        bh = obs.bulkhead("rates", max_concurrent=3, max_wait=0.1)
        assert obs.bulkhead("rates") is bh
    assert (bh.settings.max_concurrent, bh.settings.max_wait) == (3, 0.1)

    @bulkhead("outside")
    def ping() -> str:
        return "pong"

    assert ping() == "pong"
    assert resilience_module.default().bulkheads.get("outside").settings.max_concurrent == 10


def test_resilient_puts_the_bulkhead_inside_the_retry_outside_the_breaker(
    obs: GatewayObs, app: Flask, fake: Time
) -> None:
    """A full bulkhead is neither retried nor counted against the breaker; the fallback
    answers for it."""
    flaky = Flaky()
    fetch = obs.resilient(
        "quotes",
        retry={"sleep": fake.sleep, "clock": fake.clock},
        breaker={"fail_max": 1},
        bulkhead={"max_concurrent": 1},
        fallback=lambda error: type(error).__name__,
    )(flaky)
    with app.app_context():
        assert fetch() == "ok"
        with obs.bulkhead("quotes"):
            assert fetch() == "BulkheadFullError"
        assert obs.circuit_breaker("quotes").state == "closed"
    assert (flaky.calls, fake.sleeps) == (1, [])
