"""Fixtures of the Sentry tests: a real envelope sink on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..sentry_sink import SentrySink


@pytest.fixture
def sink() -> Iterator[SentrySink]:
    """A running envelope sink; its DSN is ``sink.dsn``."""
    server = SentrySink().start()
    yield server
    server.stop()
