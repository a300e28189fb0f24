"""README.md runs as written: every code block is executed (tests/readme_blocks.py says how a
block is marked, tests/readme_run.py runs it), every setting is documented, and the examples
that once failed for a newcomer each have a test of their own."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from captify_ws.config import Settings
from tests import readme_run
from tests.helpers import ROOT, VENV_BIN, ServerProcess, running_server
from tests.readme_blocks import Block, file_path, how_to_mark, output_matches, parse
from tests.services import fresh_database, require_redis

README = (ROOT / "README.md").read_text()
BLOCKS = parse(README)
RUNNABLE = [block for block in BLOCKS
            if block.mode not in (None, "none", "file", "output") and block.problem is None]
#: Blocks that cannot run on the test machine; the issue allows "few".
MAX_NOT_RUN = 3


def test_every_block_is_marked() -> None:
    """Each fenced block has a valid `<!-- test: … -->` marker right above it."""
    problems = [f"README.md line {block.line}: ```{block.lang} block: "
                f"{block.problem or 'no test marker'}"
                for block in BLOCKS if block.mode is None or block.problem is not None]
    assert not problems, "\n".join(problems) + "\n\n" + how_to_mark()


def test_few_blocks_are_not_run() -> None:
    """Blocks marked `none` are the exception, each with its reason."""
    skipped = [f"line {block.line}: {block.reason}" for block in BLOCKS if block.mode == "none"]
    assert len(skipped) <= MAX_NOT_RUN, skipped


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reader's own folder, holding the files the README asks them to create."""
    folder = tmp_path_factory.mktemp("reader")
    for block in BLOCKS:
        if block.mode == "file":
            path = folder / file_path(block)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.code)
    return folder


def _serve(cwd: Path, *args: str) -> ServerProcess:
    cwd.mkdir(exist_ok=True)
    env = readme_run.reader_env(CAPTIFY_WS_API_KEY=readme_run.API_KEY)
    return ServerProcess(["--port", "0", *args], env=env, cwd=cwd).start()


@pytest.fixture(scope="module")
def readme_server(scratch: Path) -> Iterator[ServerProcess]:
    """`captify-ws serve` on its defaults (SQLite in the reader's folder), with the API key
    of the README's examples: one server for every shell block."""
    server = _serve(scratch)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_server(scratch: Path) -> Iterator[ServerProcess]:
    """The same with the Redis broker, for the blocks that publish to Redis."""
    require_redis()
    server = _serve(scratch / "with-redis", "--broker", "redis://127.0.0.1:6379/0")
    yield server
    server.stop()


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.id)
async def test_readme_example(block: Block, request: pytest.FixtureRequest,
                              scratch: Path) -> None:
    """The block runs as written (see its marker in README.md for how)."""
    def server() -> ServerProcess:
        name = "redis_server" if block.options.get("server") == "redis" else "readme_server"
        process: ServerProcess = request.getfixturevalue(name)
        return process

    output = ""
    if block.mode == "shell":
        cwd = ROOT if block.options.get("cwd") == "repo" else scratch
        output = readme_run.run_shell(block, server().port, cwd)
    elif block.mode == "serve":
        if block.options.get("store") == "postgres":
            with fresh_database() as url:
                output = readme_run.run_serve(block, scratch, url)
        else:
            output = readme_run.run_serve(block, scratch, None)
    elif block.mode == "transcript":
        readme_run.run_transcript(block, server().port)
    elif block.mode == "python":
        output = readme_run.run_python(block, server().port, scratch)
    elif block.mode == "in-server":
        await readme_run.run_in_server(block)
    elif block.mode == "asgi":
        readme_run.run_asgi(block, scratch)
    elif block.mode == "node":
        output = readme_run.run_node(block, server().port)
    elif block.mode in ("browser", "html"):
        await readme_run.run_browser(block, server().port)
    else:
        pytest.fail(f"no runner for mode {block.mode!r}")
    assert block.options.get("expect", "") in output, output
    if block.mode != "serve":  # run_serve checks its output with the port it used
        for line in block.output:
            assert output_matches(line, output), f"the README shows {line!r}; got:\n{output}"


PYTHON_FILES = [block for block in BLOCKS if block.mode == "file" and block.problem is None
                and file_path(block).suffix == ".py"]


@pytest.mark.parametrize("block", PYTHON_FILES, ids=lambda block: block.id)
def test_readme_python_file_imports(block: Block, scratch: Path) -> None:
    """A Python file the README has you write imports from its folder as written."""
    module = ".".join(file_path(block).with_suffix("").parts)
    result = subprocess.run([str(VENV_BIN / "python"), "-c", f"import {module}"], cwd=scratch,
                            env=readme_run.reader_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


# -- the examples a newcomer once saw fail (issue 14), each on its own ------------------------


def _block(mode: str, contains: str) -> Block:
    found = [block for block in BLOCKS if block.mode == mode and contains in block.code]
    assert found, f"README.md has no {mode} block with {contains!r}"
    return found[0]


def test_handler_example_runs_from_the_folder_holding_myapp(tmp_path: Path) -> None:
    """"Adding a handler": the README's file, its command as written from the folder that
    holds myapp/ (no PYTHONPATH), and the handler relays between two clients."""
    handler = _block("file", "class MyFeatureHandler")
    command = _block("serve", "myapp.realtime:my_feature_handler").code.splitlines()[0]
    assert command == "CAPTIFY_WS_HANDLERS=myapp.realtime:my_feature_handler captify-ws serve"
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "realtime.py").write_text(handler.code)
    port = readme_run.free_port()
    process = readme_run.Background(["bash", "-c", command], tmp_path,
                                    readme_run.reader_env(CAPTIFY_WS_PORT=str(port)))
    try:
        readme_run.wait_until(lambda: "listening on" in process.output
                              or process.process.poll() is not None, "the server")
        assert process.process.poll() is None, process.output
        url = f"ws://127.0.0.1:{port}/ws/my-feature"
        with connect(url) as ann, connect(url) as bob:
            readme_run.wait_until(lambda: "/ws/my-feature" in process.output, "the handler")
            ann.send("hello from ann")
            assert bob.recv(timeout=10) == "hello from ann"
    finally:
        assert process.interrupt() == 0, process.output


def test_quick_start_activates_the_virtualenv() -> None:
    """Every `captify-ws …` command assumes the virtualenv: the quick start says how, and a
    block runs the activation as written."""
    activation = _block("shell", "source .venv/bin/activate")
    assert activation.options.get("cwd") == "repo"


def test_scale_out_example_binds_beyond_loopback_with_auth() -> None:
    """The scale-out command binds 0.0.0.0, so it names an authenticator and runs as shown
    (the block itself runs in test_readme_example)."""
    block = _block("serve", "--workers 4")
    assert "--host 0.0.0.0" in block.code and "--auth " in block.code


def test_browser_snippets_are_marked_as_browser_code() -> None:
    """The Tiptap snippet is Tiptap 3 (CollaborationCaret, undoRedo) and runs in a browser;
    the y-websocket snippet also has a Node form with a WebSocket implementation."""
    tiptap = _block("browser", "@tiptap/core")
    assert "CollaborationCaret" in tiptap.code and "undoRedo: false" in tiptap.code
    assert "CollaborationCursor" not in README and "history: false" not in README
    node = _block("node", "y-websocket")
    assert "WebSocketPolyfill" in node.code


def test_close_code_table_tells_the_truth() -> None:
    """A refused origin is HTTP 403 on the upgrade, not close 1008; both tables agree."""
    assert re.search(r"origin.{0,80}HTTP 403", README, re.S)
    assert "| 1008 | policy (origin refused)" not in README


async def test_auth_off_warning_names_no_port_when_mounted(
        caplog: pytest.LogCaptureFixture) -> None:
    """Served by another ASGI server, the warning does not name port 3000."""
    with caplog.at_level(logging.WARNING, logger="captify_ws"):
        async with running_server(transport="asgi"):
            pass
    warnings = [r.getMessage() for r in caplog.records if "authentication is off" in r.message]
    assert warnings and not any("3000" in message for message in warnings), warnings


def test_every_setting_is_in_the_readme() -> None:
    """Each CAPTIFY_WS_* variable and flag appears in the README."""
    for option in Settings.options():
        assert f"`{Settings.env_name(option.name)}`" in README, option.name
        assert Settings.flag_name(option.name) in README, option.name


def test_quick_start_targets_exist() -> None:
    """`make serve` and `make test` are Makefile targets, and CI runs `make test`."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M)
    assert re.search(r"^test:", makefile, re.M)
    assert "make serve" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_marker_scheme_rejects_what_it_cannot_run() -> None:
    """The parser reports unmarked blocks, unknown modes and options, and `none` without a
    reason — with the explanation other contributors need."""
    text = "\n".join([
        "```bash", "echo unmarked", "```",
        "<!-- test: teleport -->", "```bash", "echo", "```",
        "<!-- test: shell colour=red -->", "```bash", "echo", "```",
        "<!-- test: none -->", "```bash", "echo", "```",
        "<!-- test: node after=nothing -->", "```js", "1", "```",
        "<!-- test: shell -->", "", "```bash", "echo fine", "```",
    ])
    blocks = parse(text)
    assert [block.mode for block in blocks] == [None, "teleport", "shell", "none", "node",
                                                "shell"]
    assert [block.problem is None for block in blocks] == [True, False, False, False, False,
                                                           True]
    assert "<!-- test: shell -->" in how_to_mark()
    assert json.dumps(blocks[-1].code) == json.dumps("echo fine\n")
    assert shutil.which("bash")
