"""Server steps on documents edited through Yjs: positions in the right unit, checked with
y-prosemirror's own ``yXmlFragmentToProsemirrorJSON`` in a real y-websocket client."""

from __future__ import annotations

import random
from typing import Any

import httpx
from prosemirror.model import Node

from captify_ws.rooms.steps import default_schema
from captify_ws.rooms.units import utf16_length
from tests.helpers import ProviderRepl, RunningServer, json_client, providers, running_server
from tests.polling import eventually

AUTH = {"Authorization": "Bearer k"}
SCHEMA = default_schema()

#: What text in real documents is made of: accents (precomposed and combining), astral emoji
#: and letters (surrogate pairs in UTF-16), CJK, ASCII.
ALPHABET = ["a", "b", " ", "é", "e\u0301", "ö", "ß", "👷", "😀", "𝕏", "中", "文", "한",
            "n\u0303", "🇫🇷"]


def paragraph(text: str, marks: list[str] | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "text", "text": text}
    if marks:
        node["marks"] = [{"type": mark} for mark in marks]
    return {"type": "paragraph", "content": [node]}


async def server_doc(srv: RunningServer, document_id: str) -> dict[str, Any]:
    async with json_client(srv, document_id, "reader") as reader:
        await reader.send({"type": "doc", "documentId": document_id})
        doc: dict[str, Any] = (await reader.expect("doc"))["data"]["doc"]
        return doc


async def yjs_shows(repl: ProviderRepl, name: str, expected: dict[str, Any],
                    timeout: float = 5.0) -> dict[str, Any]:
    """Wait until y-prosemirror's view of the Yjs side equals ``expected`` (a PM doc)."""
    want = Node.from_json(SCHEMA, expected)
    async def as_expected() -> dict[str, Any]:
        seen: dict[str, Any] = (await repl.call("pmJSON", name=name))["doc"]
        assert Node.from_json(SCHEMA, seen).eq(want), (seen, expected)
        return seen

    found: dict[str, Any] = await eventually(as_expected, "the editor's document", timeout)
    return found


async def test_insert_after_accented_word_lands_where_prosemirror_says(transport: str) -> None:
    """The issue's input: 'héllo wörld', insert X at position 6 → 'hélloX wörld'."""
    async with running_server(transport, api_key="k") as srv, providers() as repl, \
            httpx.AsyncClient(timeout=10) as http:
        await repl.call("open", name="ed", url=f"{srv.ws}/ws/fabric", doc="accents")
        await repl.call("waitSynced", name="ed")
        await repl.call("pmInit", name="ed", doc={"type": "doc",
                                                   "content": [paragraph("héllo wörld")]})
        await yjs_shows(repl, "ed", {"type": "doc", "content": [paragraph("héllo wörld")]})
        answer = await http.post(f"{srv.http}/api/v1/documents/accents/steps", headers=AUTH, json={
            "steps": [{"stepType": "replace", "from": 6, "to": 6,
                       "slice": {"content": [{"type": "text", "text": "X"}]}}],
            "changeId": "x1"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["yjs"] is True
        seen = await yjs_shows(repl, "ed", {"type": "doc",
                                            "content": [paragraph("hélloX wörld")]})
        assert seen["content"][0]["content"][0]["text"] == "hélloX wörld"


def _textblocks(doc: Node) -> list[tuple[int, str]]:
    """(position of the first character, text) of each textblock."""
    found: list[tuple[int, str]] = []

    def visit(node: Node, pos: int, *_: Any) -> bool:
        if node.is_textblock:
            found.append((pos + 1, node.text_content))
            return False
        return True

    doc.descendants(visit)
    return found


def _boundaries(text: str) -> list[int]:
    """UTF-16 offsets of the code point boundaries of ``text``."""
    offsets = [0]
    for char in text:
        offsets.append(offsets[-1] + utf16_length(char))
    return offsets


def _random_step(rand: random.Random, doc: Node) -> tuple[dict[str, Any], bool]:
    """A random step on ``doc`` and whether it is valid (False: it cuts a surrogate pair)."""
    start, text = rand.choice(_textblocks(doc))
    bounds = _boundaries(text)
    a, b = sorted(rand.choice(bounds) for _ in range(2))
    words = "".join(rand.choice(ALPHABET) for _ in range(rand.randint(1, 6)))
    kind = rand.random()
    if kind < 0.06:
        pairs = [offset + 1 for offset, char in zip(bounds, text, strict=False)
                 if utf16_length(char) == 2]
        if pairs:  # a position between the two halves of a surrogate pair
            at = start + rand.choice(pairs)
            return {"stepType": "replace", "from": at, "to": at,
                    "slice": {"content": [{"type": "text", "text": "X"}]}}, False
    if kind < 0.45:
        return {"stepType": "replace", "from": start + a, "to": start + a,
                "slice": {"content": [{"type": "text", "text": words}]}}, True
    if kind < 0.6 and a < b:
        return {"stepType": "replace", "from": start + a, "to": start + b}, True
    if kind < 0.75:
        return {"stepType": "replace", "from": start + a, "to": start + b,
                "slice": {"content": [{"type": "text", "text": words}]}}, True
    if kind < 0.88 and a < b:
        return {"stepType": "addMark", "from": start + a, "to": start + b,
                "mark": {"type": rand.choice(["strong", "em"])}}, True
    return {"stepType": "replace", "from": start + a, "to": start + a,
            "slice": {"content": [{"type": "paragraph"}, {"type": "paragraph"}],
                      "openStart": 1, "openEnd": 1}}, True


async def test_random_steps_over_mixed_scripts_keep_yjs_equal_to_the_server(
        transport: str) -> None:
    """Generated: paragraphs mixing accents, combining marks, astral emoji and CJK; random
    steps through POST …/steps; after each, y-prosemirror's view of the Yjs side equals the
    server's ProseMirror document. A step between the halves of a surrogate pair is refused
    (Yjs cannot hold half a character) and changes nothing."""
    rand = random.Random(f"units-{transport}")
    initial = {"type": "doc", "content": [
        paragraph("".join(rand.choice(ALPHABET) for _ in range(rand.randint(3, 12))))
        for _ in range(3)]}
    async with running_server(transport, api_key="k") as srv, providers() as repl, \
            httpx.AsyncClient(timeout=10) as http:
        await repl.call("open", name="ed", url=f"{srv.ws}/ws/fabric", doc="mixed")
        await repl.call("waitSynced", name="ed")
        await repl.call("pmInit", name="ed", doc=initial)
        await yjs_shows(repl, "ed", initial)
        refused = 0
        for index in range(30):
            doc = Node.from_json(SCHEMA, await server_doc(srv, "mixed")) if index else \
                Node.from_json(SCHEMA, initial)
            step, valid = _random_step(rand, doc)
            answer = await http.post(f"{srv.http}/api/v1/documents/mixed/steps",
                                     headers=AUTH, json={"steps": [step],
                                                         "changeId": f"c{index}"})
            if not valid:
                assert answer.status_code == 400, (step, answer.text)
                assert answer.json()["code"] == "invalid_steps"
                refused += 1
            else:
                assert answer.status_code == 200, (step, answer.text)
            expected = await server_doc(srv, "mixed")
            if not valid:
                assert Node.from_json(SCHEMA, expected).eq(doc)
            await yjs_shows(repl, "ed", expected)
