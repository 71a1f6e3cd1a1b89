"""Fixtures of the resilience tests: an app with the extension, fake clocks."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_gateway_obs import GatewayObs

from ..conftest import MakeApp
from .helpers import Clock, Time


@pytest.fixture
def clock() -> Clock:
    """Wall-clock seconds that the test moves by hand."""
    return Clock()


@pytest.fixture
def fake() -> Time:
    """A monotonic clock and a sleep that moves it."""
    return Time()


@pytest.fixture
def bare_app(make_app: MakeApp) -> Flask:
    """An app without the extension (the extension holds its apps weakly: this keeps it)."""
    return make_app(init=False)


@pytest.fixture
def obs(bare_app: Flask) -> GatewayObs:
    """The extension, set up on ``bare_app``."""
    extension = GatewayObs()
    extension.init_app(bare_app)
    return extension


@pytest.fixture
def app(obs: GatewayObs, bare_app: Flask) -> Flask:
    """The app with the extension set up."""
    return bare_app
