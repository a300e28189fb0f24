"""The code blocks of README.md and how each one is run (tests/test_readme.py runs them).

Every fenced code block in README.md carries a marker on the line right above its opening
fence, an HTML comment that GitHub does not show::

    <!-- test: MODE [OPTION ...] -->

MODES tells what each mode does with the block. Options are ``key=value`` (quote values that
hold spaces, ``expect="listening on"``). The only change made to a block before it runs: the
port ``3000`` in ``localhost:3000`` / ``127.0.0.1:3000`` becomes the port of the server the
test started (suites run side by side on one machine), and ``store=postgres`` (below).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

#: mode → what the test does with the block.
MODES: Final = {
    "shell": "bash (set -euo pipefail; curl fails on HTTP errors) from a scratch folder, "
             "against a running `captify-ws serve` with CAPTIFY_WS_API_KEY=change-me",
    "serve": "a command that starts the server: run from the scratch folder on a free port, "
             "/healthz checked, then Ctrl+C (SIGINT) must stop it cleanly",
    "transcript": "a wscat session in a terminal: the first line is the command, `> ` lines "
                  "are typed, `< ` lines must arrive (compared as JSON)",
    "file": "a file the reader creates; its first line is a comment starting with its path "
            "(`# myapp/realtime.py`); written to the scratch folder before anything runs; a "
            "Python file must import there",
    "python": "a Python script run in the scratch folder with the virtualenv's python",
    "in-server": "Python with top-level await, run inside a started server's process",
    "output": "what the block above prints: each line must appear in its output, `…` "
              "standing for anything",
    "asgi": "a module whose `app=NAME` is an ASGI app: served by uvicorn; /healthz and a "
            "/ws/fabric connection must work through it",
    "node": "an ES module run by Node 20 with the npm packages pinned in tests/js",
    "browser": "browser JavaScript: bundled by esbuild with the pinned npm packages and run "
               "in headless Chromium on a page with <div id=\"editor\">; no page errors",
    "html": "an HTML page, served from a loopback web server of its own and opened in "
            "headless Chromium (imports from the server need its CORS); no page errors",
    "none": "not run; say why after `none` (e.g. needs a Docker engine) — keep these few",
}

#: option → meaning (which modes take it is checked in ``_check``).
OPTIONS: Final = {
    "name": "name this block so that a later block can say after=NAME",
    "after": "run the named earlier block's code first, in the same process or page",
    "cwd": "`repo`: run from the repository root instead of the scratch folder",
    "server": "`redis`: the server runs with --broker redis://127.0.0.1:6379/0",
    "store": "`postgres`: every postgresql:// URL in the block becomes a fresh database",
    "expect": "text the block's output must contain",
    "connects": "a document id: the block must open a connection to it on the server",
    "console": "text the page must log to its console",
    "app": "the ASGI app's attribute in an asgi block",
}
_ALLOWED: Final = {
    "shell": {"cwd", "server", "expect"},
    "serve": {"cwd", "store", "expect"},
    "transcript": {"cwd"},
    "file": set(),
    "python": {"expect"},
    "in-server": {"server"},
    "output": set(),
    "asgi": {"app", "name", "after"},
    "node": {"name", "after", "connects", "expect"},
    "browser": {"name", "after", "connects", "console"},
    "html": {"connects", "console"},
    "none": set(),
}

_FENCE: Final = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)\s*$")
_MARKER: Final = re.compile(r"^\s*<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced block: where it is, its text, and its marker (``mode`` None if absent)."""

    line: int
    lang: str
    code: str
    mode: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    problem: str | None = None
    prelude: str = ""  # the code of the blocks named by after=, outermost first
    output: list[str] = field(default_factory=list)  # lines an `output` block below expects

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.mode or 'unmarked'}"

    @property
    def program(self) -> str:
        """What runs: the ``after=`` chain, then this block."""
        return self.prelude + self.code


def parse(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, with its marker read and checked."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            body.append(lines[end][len(indent):] if lines[end].startswith(indent)
                        else lines[end].lstrip())
            end += 1
        block = Block(line=index + 1, lang=opening["lang"], code="\n".join(body) + "\n")
        previous = index - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        marker = _MARKER.match(lines[previous]) if previous >= 0 else None
        if marker is not None:
            _read_marker(block, marker["body"])
        blocks.append(block)
        index = end + 1
    _link(blocks)
    return blocks


def _read_marker(block: Block, body: str) -> None:
    mode, _, rest = body.partition(" ")
    block.mode = mode
    if mode == "none":
        block.reason = rest.strip().lstrip("—-:– ").strip()
        if not block.reason:
            block.problem = "`none` needs a reason: <!-- test: none — needs a Docker engine -->"
        return
    if mode not in MODES:
        block.problem = f"unknown mode {mode!r}"
        return
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        block.problem = f"cannot read the options: {exc}"
        return
    for word in words:
        key, equals, value = word.partition("=")
        if not equals or key not in _ALLOWED[mode]:
            block.problem = (f"option {word!r} is not one of {sorted(_ALLOWED[mode])} for "
                             f"mode {mode}")
            return
        block.options[key] = value
    if mode == "file" and not re.match(r"^(#|//)\s*\S+\.\w+(\s|$)", block.code.split("\n")[0]):
        block.problem = "a file block starts with a comment naming its path: # myapp/x.py"
    if mode == "asgi" and "app" not in block.options:
        block.problem = "an asgi block says which attribute is the app: app=NAME"


def _link(blocks: list[Block]) -> None:
    """Resolve ``after=NAME`` to the code of the earlier block named NAME (same mode), and
    give each ``output`` block's lines to the block above it."""
    named: dict[str, Block] = {}
    for index, block in enumerate(blocks):
        if block.mode == "output" and block.problem is None:
            if index == 0 or blocks[index - 1].mode in (None, "none", "file", "output"):
                block.problem = "an output block follows the block whose output it shows"
            else:
                blocks[index - 1].output = [line for line in block.code.splitlines()
                                            if line.strip()]
        after = block.options.get("after")
        if after is not None and block.problem is None:
            earlier = named.get(after)
            if earlier is None or earlier.mode != block.mode:
                block.problem = f"after={after}: no earlier {block.mode} block has name={after}"
            else:
                block.prelude = earlier.program
        if "name" in block.options:
            named[block.options["name"]] = block


def file_path(block: Block) -> Path:
    """The path a ``file`` block names in its first line."""
    first = block.code.split("\n")[0]
    return Path(first.lstrip("#/").split()[0])


def how_to_mark() -> str:
    """The explanation shown when a block is unmarked or its marker is wrong."""
    modes = "\n".join(f"  <!-- test: {mode} -->{' ' * (12 - len(mode))}{text}"
                      for mode, text in MODES.items())
    options = "\n".join(f"  {key}=…  {text}" for key, text in OPTIONS.items())
    return ("Every code block in README.md is run by tests/test_readme.py. Put a marker on the "
            "line right above the opening fence:\n" + modes + "\nOptions (key=value):\n" +
            options + "\nLocal URLs keep port 3000: the test moves them to its server's port. "
            "Details: tests/readme_blocks.py.")


def output_matches(expected: str, output: str) -> bool:
    """Whether one expected line appears in ``output``, ``…`` matching anything."""
    pattern = ".*?".join(re.escape(part.strip()) for part in expected.split("…"))
    return re.search(pattern, output) is not None


def rewrite_port(code: str, port: int) -> str:
    """``localhost:3000`` / ``127.0.0.1:3000`` → the test server's port."""
    return re.sub(r"\b(localhost|127\.0\.0\.1):3000\b", rf"\g<1>:{port}", code)
