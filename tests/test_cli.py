"""`captify-ws serve`: help, start, health, a taken port, shutdown."""

from __future__ import annotations

import socket
import subprocess

import httpx

from captify_ws.config import Settings
from tests.helpers import VENV_BIN, ServerProcess


def test_help_documents_every_option() -> None:
    """--help lists every setting with its environment variable."""
    output = subprocess.run([str(VENV_BIN / "captify-ws"), "serve", "--help"],
                            capture_output=True, text=True, check=True).stdout
    for option in Settings.options():
        assert "--" + option.name.replace("_", "-") in output
        assert Settings.env_name(option.name) in output


def test_serve_answers_health_and_stops_on_sigterm() -> None:
    """The server starts on the given port, answers /healthz and exits 0 on SIGTERM."""
    proc = ServerProcess(["--port", "0", "--store", "memory"]).start()
    try:
        response = httpx.get(f"{proc.http}/healthz", timeout=5)
        assert response.json() == {"status": "ok"}
    finally:
        assert proc.stop() == 0


def test_port_in_use_is_one_line() -> None:
    """A taken port gives one line naming the port, exit status 1, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([str(VENV_BIN / "captify-ws"), "serve", "--port", str(port),
                                 "--store", "memory"], capture_output=True, text=True,
                                timeout=30)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("captify-ws:")]
    assert lines == [f"captify-ws: cannot listen on 127.0.0.1:{port}: the port is already in "
                     "use; stop the other server or pick another port with --port or "
                     "CAPTIFY_WS_PORT"]
    assert "Traceback" not in result.stderr


def test_bad_config_is_one_line() -> None:
    """A bad setting exits 2 with one line naming it."""
    result = subprocess.run([str(VENV_BIN / "captify-ws"), "serve", "--port", "0"],
                            capture_output=True, text=True, timeout=30,
                            env={"CAPTIFY_WS_TRANSPORT": "smoke-signals", "PATH": "/usr/bin"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("captify-ws: transport must be 'native' or 'asgi', "
                                     "not 'smoke-signals'")


def test_asgi_transport_serves_too() -> None:
    """--transport asgi runs the same app under uvicorn."""
    proc = ServerProcess(["--port", "0", "--store", "memory", "--transport", "asgi"]).start()
    try:
        assert httpx.get(f"{proc.http}/healthz", timeout=5).status_code == 200
    finally:
        assert proc.stop() == 0
