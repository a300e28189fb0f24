"""One place maps errors to what a client sees: close codes and, before the upgrade, HTTP."""

from __future__ import annotations

import pytest

from captify_ws.errors import CloseCode, Reject, close_code_for, http_status_for

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("code", "status"), [
    (CloseCode.POLICY, 403), (CloseCode.FORBIDDEN, 403), (CloseCode.GOING_AWAY, 503),
    (CloseCode.OVERLOADED, 503), (CloseCode.RATE_LIMITED, 503)])
def test_a_refused_upgrade_has_one_status_on_both_transports(code: int, status: int) -> None:
    """An origin or a right refused is 403; a server that cannot take the connection, 503;
    the close code the same refusal would have after the upgrade stays the Reject's."""
    refusal = Reject(code, "no")
    assert http_status_for(refusal) == status
    assert close_code_for(refusal) == code
