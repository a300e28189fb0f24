"""Shared fixtures. Real servers on free ports; real npm clients from tests/js."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import JS


def pytest_configure(config: pytest.Config) -> None:
    # The fast tier (make test-fast: -m "unit and not services") needs no npm clients.
    if config.option.markexpr.startswith("unit"):
        return
    if not (JS / "node_modules" / "y-websocket").is_dir() or shutil.which("node") is None:
        raise pytest.UsageError("the npm test clients are missing: run `make test` (it runs "
                                "`npm ci --prefix tests/js`)")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast tier imports only the test files that hold unit tests (importing the others,
    with their npm and browser helpers, took a third of its time)."""
    if config.option.markexpr.startswith("unit") and collection_path.suffix == ".py" and \
            collection_path.name.startswith("test_"):
        return "pytest.mark.unit" not in collection_path.read_text(encoding="utf-8")
    return None


@pytest.fixture(params=["native", "asgi"])
def transport(request: pytest.FixtureRequest) -> str:
    """Run a test on both transports: native (picows) and ASGI (uvicorn)."""
    value: str = request.param
    return value
