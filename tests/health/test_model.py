"""The result model: aggregation, argument checks, masking of secrets."""

from __future__ import annotations

from typing import Any

import pytest

from flask_gateway_obs import CheckResult, GatewayObs
from flask_gateway_obs.health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    CheckOutcome,
    aggregate,
    mask_secrets,
)


def _outcome(status: str, critical: bool = True) -> CheckOutcome:
    return CheckOutcome("c", status, 1.0, critical)


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([], HEALTHY),
        ([_outcome(HEALTHY), _outcome(HEALTHY, False)], HEALTHY),
        ([_outcome(HEALTHY), _outcome(DEGRADED)], DEGRADED),
        ([_outcome(UNHEALTHY, False)], DEGRADED),
        ([_outcome(DEGRADED), _outcome(UNHEALTHY, False)], DEGRADED),
        ([_outcome(UNHEALTHY), _outcome(DEGRADED)], UNHEALTHY),
        ([_outcome(UNHEALTHY, False), _outcome(UNHEALTHY)], UNHEALTHY),
    ],
)
def test_aggregation(outcomes: list[CheckOutcome], expected: str) -> None:
    """Critical unhealthy -> unhealthy; non-critical unhealthy or any degraded -> degraded."""
    assert aggregate(outcomes) == expected


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": ""}, "non-empty name"),
        ({"name": "x", "timeout": 0}, "timeout"),
        ({"name": "x", "timeout": -1.0}, "timeout"),
        ({"name": "x", "timeout": True}, "timeout"),
        ({"name": "x", "groups": ("",)}, "groups"),
    ],
)
def test_bad_check_arguments_are_rejected(kwargs: dict[str, Any], error: str) -> None:
    """A check's name, timeout and groups are validated when it is registered."""
    obs = GatewayObs()
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=error):
        obs.health_check(name, **kwargs)(lambda: None)


def test_check_result_rejects_an_unknown_status() -> None:
    """CheckResult accepts healthy, degraded and unhealthy only."""
    with pytest.raises(ValueError, match="status must be"):
        CheckResult("fine")


# --- masking ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://app:hunter2@db/x", "hunter2"),
        ("redis://:hunter2@cache:6379/0", "hunter2"),
        ("host=db password=hunter2 user=app", "hunter2"),
        ("host=db password='hunter 2' user=app", "hunter 2"),
        ("FATAL: password authentication failed; PASSWORD=hunter2", "hunter2"),
    ],
)
def test_mask_secrets_hides_passwords(text: str, secret: str) -> None:
    """Passwords in URLs and key=value DSNs never survive masking."""
    assert secret not in mask_secrets(text)
