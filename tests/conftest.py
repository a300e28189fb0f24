"""Shared fixtures. Real servers on free ports; real npm clients from tests/js."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import JS


def pytest_configure(config: pytest.Config) -> None:
    # The fast tier (make test-fast: -m "unit and not services") needs no npm clients.
    if config.option.markexpr.startswith("unit"):
        return
    if not (JS / "node_modules" / "y-websocket").is_dir() or shutil.which("node") is None:
        raise pytest.UsageError("the npm test clients are missing: run `make test` (it runs "
                                "`npm ci --prefix tests/js`)")


@pytest.fixture(params=["native", "asgi"])
def transport(request: pytest.FixtureRequest) -> str:
    """Run a test on both transports: native (picows) and ASGI (uvicorn)."""
    value: str = request.param
    return value
