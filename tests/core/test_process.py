"""Process-wide registries and their one reset, as users' tests use them."""

from __future__ import annotations

from flask_gateway_obs import testing
from flask_gateway_obs.core import process
from flask_gateway_obs.core.context import RequestContext, current_request


def test_a_registry_is_made_once_and_shared() -> None:
    """The same name gives the same object until a reset."""
    first = process.registry("test.things", dict)
    first["a"] = 1
    assert process.registry("test.things", dict) is first


def test_lookup_finds_a_registry_without_making_one() -> None:
    """lookup() is None until registry() made the object, then that object."""
    assert process.lookup("test.looked-up") is None
    made = process.registry("test.looked-up", dict)
    assert process.lookup("test.looked-up") is made
    testing.reset()
    assert process.lookup("test.looked-up") is None


def test_reset_forgets_every_registry_and_runs_the_clean_ups() -> None:
    """testing.reset() empties the registries, runs each clean-up once, clears the request."""
    calls: list[str] = []
    before = process.registry("test.things", dict)
    process.on_reset("test.cleanup", lambda: calls.append("cleaned"))
    current_request.set(RequestContext("rid", "svc", 0.0))
    testing.reset()
    assert calls == ["cleaned"]
    assert process.registry("test.things", dict) is not before
    assert current_request.get() is None
    testing.reset()
    assert calls == ["cleaned"]


def test_a_failing_clean_up_does_not_stop_the_others() -> None:
    """One broken clean-up is contained; the next still runs."""
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    process.on_reset("test.broken", broken)
    process.on_reset("test.fine", lambda: calls.append("fine"))
    testing.reset()
    assert calls == ["fine"]
