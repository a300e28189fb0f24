"""The test helpers themselves: a server process that never starts fails its test in bounded
time instead of hanging the suite."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, uvicorn_started

HANGS_SILENTLY = "import time\ntime.sleep(600)\n"
HANGS_MID_LINE = ("import sys, time\nsys.stdout.write('loading the product app'); "
                  "sys.stdout.flush()\ntime.sleep(600)\n")


@pytest.mark.parametrize("source", [HANGS_SILENTLY, HANGS_MID_LINE],
                         ids=["silent", "mid-line"])
def test_start_of_a_server_that_hangs_fails_within_its_deadline(tmp_path: Path,
                                                                 source: str) -> None:
    """`captify-ws serve` stuck importing its --http-app (printing nothing, or half a line):
    start() fails at its deadline with the output so far and the process is killed (it used
    to block on readline forever)."""
    (tmp_path / "stuck_app.py").write_text(source)
    proc = ServerProcess(["--port", "0", "--store", "memory", "--app-dir", str(tmp_path),
                          "--http-app", "stuck_app:app"])
    # Long enough for the server to reach the import on a loaded machine (the mid-line case
    # checks that the half line is reported), far from the fault (forever).
    deadline = 2 if source is HANGS_SILENTLY else 10
    began = time.monotonic()
    with pytest.raises(AssertionError,
                       match=f"printed no 'listening on' line within {deadline} s") as failure:
        proc.start(timeout=deadline)
    assert time.monotonic() - began < deadline + 20
    assert proc.process is not None and proc.process.poll() is not None
    if source is HANGS_MID_LINE:
        assert "loading the product app" in str(failure.value)


def test_start_of_a_server_that_exits_fails_at_once_with_its_output(tmp_path: Path) -> None:
    """A server that exits while starting (an --http-app that does not import) fails start()
    as soon as its output ends, with the reason it printed, well before the deadline."""
    proc = ServerProcess(["--port", "0", "--store", "memory", "--app-dir", str(tmp_path),
                          "--http-app", "no_such_module_here:app"])
    began = time.monotonic()
    with pytest.raises(AssertionError, match=r"exited with status [1-9]") as failure:
        proc.start(timeout=60)
    assert time.monotonic() - began < 30
    assert "no_such_module_here" in str(failure.value)


def test_start_returns_the_port_and_keeps_reading_the_output() -> None:
    """A server that starts: its port from the start line, and later lines still collected
    (the pipe is drained, so a chatty server never blocks)."""
    proc = ServerProcess(["--port", "0", "--store", "memory"]).start()
    try:
        assert proc.port > 0 and proc.listening_lines() == 1
        assert f":{proc.port}" in proc.log
    finally:
        assert proc.stop() == 0
    assert "stopped" in proc.log


async def test_a_server_that_ends_before_listening_fails_at_once() -> None:
    """A uvicorn task that ended without listening fails the wait at once."""

    class Never:
        started = False

    async def ends() -> None:
        return None

    task = asyncio.get_running_loop().create_task(ends())
    began = time.monotonic()
    with pytest.raises(AssertionError, match="exited before it started"):
        await uvicorn_started(Never(), task, timeout=10)
    assert time.monotonic() - began < 5


async def test_a_server_that_never_listens_fails_at_the_deadline() -> None:
    """A server task that neither starts nor ends fails at the deadline, naming it."""

    class Never:
        started = False

    task = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    with pytest.raises(AssertionError, match="uvicorn to start"):
        await uvicorn_started(Never(), task, timeout=0.2)
    task.cancel()
