"""Every metrics test runs twice: on the fast path and on prometheus_client's public path."""

from __future__ import annotations

import pytest

from flask_gateway_obs._compat.prometheus_client import PUBLIC_PATH_ENV
from flask_gateway_obs.testing import reset


@pytest.fixture(autouse=True, params=["fast", "public"])
def prometheus_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``fast``: prometheus_client's internals are read (verified versions); ``public``:
    its public API only, forced through the environment (so servers started by the test
    take it too)."""
    if request.param == "public":
        monkeypatch.setenv(PUBLIC_PATH_ENV, "prometheus_client")
    else:
        monkeypatch.delenv(PUBLIC_PATH_ENV, raising=False)
    reset()  # the choice is made once per process: make it again
    return str(request.param)
