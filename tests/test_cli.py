"""`captify-ws serve`: help, start, health, logs, a taken port, the import path, shutdown."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from captify_ws.config import Settings
from tests.helpers import ROOT, VENV_BIN, ServerProcess, free_port
from tests.polling import eventually_sync

CLI = str(VENV_BIN / "captify-ws")
PORT_IN_USE = ("cannot listen on 127.0.0.1:{port}: the port is already in use; stop the other "
               "server or pick another port with --port or CAPTIFY_WS_PORT")


def _help() -> str:
    return subprocess.run([CLI, "serve", "--help"], capture_output=True, text=True,
                          check=True).stdout


def test_help_documents_every_option() -> None:
    """--help lists every setting with its environment variable."""
    output = _help()
    for option in Settings.options():
        assert Settings.flag_name(option.name) in output
        assert Settings.env_name(option.name) in output


def test_help_shows_real_defaults_only() -> None:
    """No argparse `(default: None)`; sizes as written in the README, the auth default in
    words, toggles as --demo/--no-demo."""
    output = " ".join(_help().split())
    assert "(default:" not in output
    assert "None" not in output
    assert "[CAPTIFY_WS_MAX_MESSAGE_SIZE; default: 16m]" in output
    assert "[CAPTIFY_WS_PORT; default: 3000]" in output
    assert "[CAPTIFY_WS_SHUTDOWN_TIMEOUT_S; default: 10]" in output
    assert "[CAPTIFY_WS_AUTH; default: none on a loopback bind; required on any other " \
           "address]" in output
    assert "--demo, --no-demo" in output


@pytest.mark.parametrize(("args", "env", "line"), [
    (["--max-message-size", "16x"], {},
     "--max-message-size 16x: 16x is not a size (use 16m, 512k, 1g)"),
    ([], {"CAPTIFY_WS_SEND_BUDGET": "lots"},
     "CAPTIFY_WS_SEND_BUDGET=lots: lots is not a size (use 16m, 512k, 1g)"),
    (["--port", "eighty"], {}, "--port eighty: eighty is not a whole number"),
    (["--room-grace-s", "soon"], {}, "--room-grace-s soon: soon is not a number"),
    (["--reuse-port", "maybe"], {},
     "--reuse-port maybe: maybe is not true or false (use true, false, 1, 0, on, off)"),
    ([], {"CAPTIFY_WS_TRANSPORT": "smoke-signals"},
     "transport must be 'native' or 'asgi', not 'smoke-signals'"),
])
def test_bad_value_is_one_line(args: list[str], env: dict[str, str], line: str) -> None:
    """A bad flag or variable: exit 2 and one line naming it, nothing on stdout."""
    result = subprocess.run([CLI, "serve", "--port", "0", *args], capture_output=True,
                            text=True, timeout=30, env={"PATH": "/usr/bin", **env})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"captify-ws: {line}\n"


def test_serve_answers_health_and_stops_on_sigterm() -> None:
    """The server starts on the given port, answers /healthz and exits 0 on SIGTERM."""
    proc = ServerProcess(["--port", "0", "--store", "memory"]).start()
    try:
        response = httpx.get(f"{proc.http}/healthz", timeout=5)
        assert response.json() == {"status": "ok"}
    finally:
        assert proc.stop() == 0


@contextmanager
def _taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("extra", [
    ["--transport", "native"],
    ["--transport", "asgi"],
    ["--workers", "2", "--broker", "redis://127.0.0.1:6379/0", "--store",
     "sqlite:///never-created.db"],
], ids=["native", "asgi", "workers"])
def test_port_in_use_is_one_line(extra: list[str], tmp_path: Path) -> None:
    """A taken port: exit 1 and one line naming the port, nothing started or stopped before
    it, no traceback, whatever the transport and with --workers."""
    with _taken_port() as port:
        result = subprocess.run([CLI, "serve", "--port", str(port), "--store", "memory",
                                 *extra], capture_output=True, text=True, timeout=30,
                                cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"captify-ws: {PORT_IN_USE.format(port=port)}\n"
    assert not (tmp_path / "never-created.db").exists()


def test_port_in_use_in_json_is_one_json_line() -> None:
    """With --log-format json the same line is one JSON object."""
    with _taken_port() as port:
        result = subprocess.run([CLI, "serve", "--port", str(port), "--store", "memory",
                                 "--log-format", "json"], capture_output=True, text=True,
                                timeout=30)
    assert (result.returncode, result.stdout) == (1, "")
    (line,) = result.stderr.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["message"]) == ("error", PORT_IN_USE.format(port=port))


class _Captured:
    """`captify-ws serve` with stdout and stderr kept apart."""

    def __init__(self, args: list[str], cwd: Path | None = None) -> None:
        self.process = subprocess.Popen([CLI, "serve", *args], cwd=cwd, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout: list[str] = []
        self.stderr = ""
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout.append(line)

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        def printed() -> bool:
            if self.process.poll() is not None:  # exited: fail at once with what it printed
                raise RuntimeError("".join(self.stdout) + self._rest())
            assert any(text in line for line in self.stdout), self.stdout
            return True

        eventually_sync(printed, f"{text!r} to be printed", timeout)

    def _rest(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=20)
        self._reader.join(timeout=5)
        self.stderr = self._rest()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        return code


def test_json_logs_every_line_on_stdout() -> None:
    """--log-format json: every line on stdout is JSON — the start line, a library's import
    warning and its log line included; nothing on stderr; no httpx line per session check."""
    port = free_port()
    server = _Captured(["--port", str(port), "--store", "memory", "--log-format", "json",
                        "--http-app", "tests.outside.noisy_app:app", "--auth", "session-proxy",
                        "--auth-session-url", f"http://127.0.0.1:{port}/api/session"],
                       cwd=ROOT)
    try:
        server.wait_for("listening on")
        url = f"ws://127.0.0.1:{port}/ws/fabric?documentId=logs"
        with connect(url, additional_headers={"Cookie": "session=good"}) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "connected"
        with connect(url, additional_headers={"Cookie": "session=other"}) as ws, \
                pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4401
    finally:
        assert server.stop() == 0
    assert server.stderr == ""
    entries = [json.loads(line) for line in server.stdout]
    messages = [entry["message"] for entry in entries]
    start = next(entry for entry in entries if "listening on" in entry["message"])
    assert start["url"] == f"http://127.0.0.1:{port}"
    assert any("noisylib: the 'colour' option is deprecated" in m for m in messages)
    assert any(entry["logger"] == "py.warnings" for entry in entries)
    assert "noisylib: connected to nothing in particular" in messages
    assert not [m for m in messages if "HTTP Request" in m], messages


def test_text_logs_go_to_stdout_and_start_line_survives_warning_level() -> None:
    """Text logs are on stdout too; --log-level warning still prints where it listens."""
    server = _Captured(["--port", "0", "--store", "memory", "--log-level", "warning"])
    try:
        server.wait_for("listening on http://127.0.0.1:")
    finally:
        assert server.stop() == 0
    assert server.stderr == ""
    assert not any(" INFO " in line and "listening" not in line and "demo:" not in line
                   for line in server.stdout), server.stdout


def _project(tmp_path: Path) -> Path:
    """A newcomer's folder: myapp/realtime.py (a handler) and plainapp.py (an ASGI app)."""
    (tmp_path / "myapp").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "outside" / "echo_handler.py",
                tmp_path / "myapp" / "realtime.py")
    shutil.copy(ROOT / "tests" / "outside" / "plainapp.py", tmp_path / "plainapp.py")
    return tmp_path


def test_modules_import_from_the_working_directory(tmp_path: Path) -> None:
    """Like uvicorn and gunicorn: `--handlers myapp.realtime:…` and `--http-app plainapp:app`
    import from the folder the command runs in, with no PYTHONPATH."""
    folder = _project(tmp_path)
    proc = ServerProcess(["--port", "0", "--store", "memory", "--handlers",
                          "myapp.realtime:echo_handler", "--http-app", "plainapp:app"],
                         env={"PYTHONPATH": ""}, cwd=folder).start()
    try:
        assert httpx.get(f"{proc.http}/", timeout=5).text == "hello from plainapp"
        with connect(f"{proc.ws}/ws/echo") as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
            ws.send("ping")
            assert ws.recv(timeout=5) == "PING"
    finally:
        assert proc.stop() == 0


def test_app_dir_names_another_folder(tmp_path: Path) -> None:
    """--app-dir (CAPTIFY_WS_APP_DIR) puts another folder first on the import path."""
    folder = _project(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = ServerProcess(["--port", "0", "--store", "memory", "--app-dir", str(folder),
                          "--http-app", "plainapp:app"], env={"PYTHONPATH": ""},
                         cwd=elsewhere).start()
    try:
        assert httpx.get(f"{proc.http}/", timeout=5).text == "hello from plainapp"
    finally:
        assert proc.stop() == 0
    missing = subprocess.run([CLI, "serve", "--port", "0", "--http-app", "plainapp:app"],
                             cwd=elsewhere, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2
    assert missing.stderr == ("captify-ws: http_app 'plainapp:app': cannot import 'plainapp': "
                              "No module named 'plainapp'\n")


def test_make_serve_installs_the_runtime_only(tmp_path: Path) -> None:
    """On a fresh machine `make serve` installs captify-ws without the development tools;
    `make test` installs them (what make would run, with a virtualenv that does not exist)."""
    venv = tmp_path / "venv"
    serve = subprocess.run(["make", "-n", "serve", f"VENV={venv}"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert f"{venv}/bin/pip install -q -e .\n" in serve
    assert "[dev]" not in serve
    test = subprocess.run(["make", "-n", "test", f"VENV={venv}"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert '-e ".[dev]"' in test


def test_asgi_transport_serves_too() -> None:
    """--transport asgi runs the same app under uvicorn."""
    proc = ServerProcess(["--port", "0", "--store", "memory", "--transport", "asgi"]).start()
    try:
        assert httpx.get(f"{proc.http}/healthz", timeout=5).status_code == 200
    finally:
        assert proc.stop() == 0
