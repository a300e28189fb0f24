"""``--pm-schema tiptap``: Tiptap 3 StarterKit's schema built in (issue 12.8). Compared with
``getSchema([StarterKit])`` of the pinned @tiptap/core, and exercised with documents a Tiptap 3
editor writes to its ``default`` fragment (@tiptap/y-tiptap with StarterKit's schema)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Final

import httpx
from prosemirror.model import Node

from captify_ws.rooms.tiptap_schema import tiptap_schema
from tests.helpers import ProviderRepl, RunningServer, json_client, providers, running_server
from tests.polling import eventually

AUTH = {"Authorization": "Bearer k"}
SCHEMA = tiptap_schema()
TIPTAP = {"pm_fragment": "default", "pm_schema": "tiptap", "api_key": "k"}


def _spec(type_: Any) -> dict[str, Any]:
    spec = type_.spec
    attrs = {key: {"default": attr.get("default")}
             for key, attr in (spec.get("attrs") or {}).items()}
    return {"name": type_.name, "attrs": attrs, "content": spec.get("content") or None,
            "group": spec.get("group") or None}


async def test_schema_is_starter_kits() -> None:
    """Node and mark names (in order), attributes with defaults, content and groups equal what
    ``getSchema([StarterKit])`` of @tiptap/core 3.31.3 builds."""
    async with providers() as repl:
        answer = await repl.call("tiptapSchema")
    theirs = {key: answer[key] for key in ("nodes", "marks", "topNode")}
    ours = {"nodes": [_spec(t) for t in SCHEMA.nodes.values()],
            "marks": [_spec(t) for t in SCHEMA.marks.values()],
            "topNode": SCHEMA.top_node_type.name}
    for mark in theirs["marks"]:
        mark["content"] = mark["group"] = None
    assert ours == theirs


async def server_doc(srv: RunningServer, document_id: str) -> dict[str, Any]:
    async with json_client(srv, document_id, "reader") as reader:
        await reader.send({"type": "doc", "documentId": document_id})
        doc: dict[str, Any] = (await reader.expect("doc"))["data"]["doc"]
        return doc


async def editor_shows(repl: ProviderRepl, name: str, expected: dict[str, Any],
                       timeout: float = 5.0) -> dict[str, Any]:
    """Wait until the Tiptap editor's document (built from the fragment with StarterKit's
    schema) is exactly ``expected``."""
    async def as_expected() -> dict[str, Any]:
        seen: dict[str, Any] = (await repl.call("pmJSON", name=name, fragment="default",
                                                schema="tiptap"))["doc"]
        assert seen == expected, (seen, expected)
        return seen

    found: dict[str, Any] = await eventually(as_expected, "the editor's document", timeout)
    return found


def text(value: str, *marks: str | dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "text", "text": value}
    if marks:
        node["marks"] = [{"type": mark} if isinstance(mark, str) else mark for mark in marks]
    return node


def para(*content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "paragraph", "content": list(content)}


def item(*content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "listItem", "content": list(content)}


def insert(pos: int, value: str) -> dict[str, Any]:
    return {"stepType": "replace", "from": pos, "to": pos,
            "slice": {"content": [{"type": "text", "text": value}]}}


async def test_bullet_list_of_a_tiptap_editor_stays_a_list() -> None:
    """Issue 12.8: a Tiptap 3 user's bullet list in fragment ``default``; one ``POST …/steps``
    inserting text is applied (200) and the list is still a list for the editor, whose
    document equals the server's."""
    initial = {"type": "doc", "content": [
        para(text("Todo")),
        {"type": "bulletList", "content": [item(para(text("milk"))),
                                           item(para(text("eggs", "bold")))]}]}
    async with running_server(**TIPTAP) as srv, providers() as repl, \
            httpx.AsyncClient(timeout=10) as http:
        await repl.call("open", name="tt", url=f"{srv.ws}/ws/fabric", doc="list")
        await repl.call("waitSynced", name="tt")
        await repl.call("pmInit", name="tt", fragment="default", doc=initial, schema="tiptap")
        await editor_shows(repl, "tt", initial)
        # <p>Todo</p> = 6; <ul> 6, <li> 7, <p> 8: inside the first item's paragraph at 9.
        answer = await http.post(f"{srv.http}/api/v1/documents/list/steps", headers=AUTH,
                                 json={"steps": [insert(9, "oat ")], "changeId": "agent-1"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["applied"] is True
        expected = {"type": "doc", "content": [
            para(text("Todo")),
            {"type": "bulletList", "content": [item(para(text("oat milk"))),
                                               item(para(text("eggs", "bold")))]}]}
        assert await server_doc(srv, "list") == expected
        await editor_shows(repl, "tt", expected)


LINK: Final = {"type": "link", "attrs": {"href": "https://example.com/a", "target": None}}


def _random_inline(rand: random.Random) -> list[dict[str, Any]]:
    marks = ["bold", "italic", "strike", "code", "underline"]
    out = []
    mark_sets: list[list[str | dict[str, Any]]] = [
        [], [rand.choice(marks)], ["bold", "italic"], ["italic", "underline"], [LINK, "bold"]]
    for _ in range(rand.randint(1, 3)):
        if out and rand.random() < 0.2:
            out.append({"type": "hardBreak"})
        node = text(rand.choice(["ab", "é", "👷x", "中文", "go "]), *rand.choice(mark_sets))
        last = out[-1] if out else {}
        if last.get("type") == "text" and last.get("marks") == node.get("marks"):
            last["text"] += node["text"]  # as an editor holds it: equal marks, one node
        else:
            out.append(node)
    return out


def _random_block(rand: random.Random, depth: int = 0) -> dict[str, Any]:
    kinds = ["paragraph", "heading", "codeBlock", "horizontalRule"]
    if depth < 2:
        kinds += ["bulletList", "orderedList", "blockquote"]
    kind = rand.choice(kinds)
    if kind == "paragraph":
        return {"type": "paragraph", "content": _random_inline(rand)}
    if kind == "heading":
        return {"type": "heading", "attrs": {"level": rand.randint(1, 3)},
                "content": _random_inline(rand)}
    if kind == "codeBlock":
        return {"type": "codeBlock", "attrs": {"language": rand.choice([None, "py"])},
                "content": [text("x = 1")]}
    if kind == "horizontalRule":
        return {"type": "horizontalRule"}
    if kind == "blockquote":
        return {"type": "blockquote", "content": [_random_block(rand, depth + 1)]}
    items = [{"type": "listItem", "content": [{"type": "paragraph",
                                               "content": _random_inline(rand)}]
              + ([_random_block(rand, depth + 1)] if rand.random() < 0.3 else [])}
             for _ in range(rand.randint(1, 3))]
    node: dict[str, Any] = {"type": kind, "content": items}
    if kind == "orderedList":
        node["attrs"] = {"start": rand.randint(1, 5), "type": None}
    return node


def _text_positions(doc: Node) -> list[int]:
    """Positions inside textblocks, at node boundaries of their content (never inside a
    character's UTF-16 pair)."""
    found: list[int] = []

    def visit(node: Node, pos: int, *_: Any) -> bool:
        if node.is_textblock:
            offset = pos + 1
            found.append(offset)
            for child in node.content.content:
                offset += child.node_size
                found.append(offset)
            return False
        return True

    doc.descendants(visit)
    return found


async def test_random_tiptap_documents_keep_their_structure_under_server_steps() -> None:
    """Generated: documents of every StarterKit node and mark (nested lists, quotes, code
    blocks, headings, hard breaks, marks together, links with attributes) written by a Tiptap
    3 editor; random text insertions through ``POST …/steps`` are applied and the editor's
    document equals the server's after each."""
    rand = random.Random("tiptap-kinds")
    async with running_server(**TIPTAP) as srv, providers() as repl, \
            httpx.AsyncClient(timeout=10) as http:
        for number in range(6):
            name = f"gen{number}"
            initial = Node.from_json(SCHEMA, {"type": "doc", "content": [
                _random_block(rand) for _ in range(rand.randint(2, 4))]})
            initial.check()
            await repl.call("open", name=name, url=f"{srv.ws}/ws/fabric", doc=name)
            await repl.call("waitSynced", name=name)
            await repl.call("pmInit", name=name, fragment="default", doc=initial.to_json(),
                            schema="tiptap")
            await editor_shows(repl, name, initial.to_json())
            doc = initial
            for index in range(5):
                pos = rand.choice(_text_positions(doc))
                answer = await http.post(
                    f"{srv.http}/api/v1/documents/{name}/steps", headers=AUTH,
                    json={"steps": [insert(pos, rand.choice(["z", "ñ", "🙂"]))],
                          "changeId": f"{name}-{index}"})
                assert answer.status_code == 200, answer.text
                assert answer.json()["applied"] is True
                seen = await server_doc(srv, name)
                doc = Node.from_json(SCHEMA, seen)
                await editor_shows(repl, name, seen)
            assert [c.type.name for c in doc.content.content] == \
                [c.type.name for c in initial.content.content]


#: Tiptap content the built-in default schema (prosemirror-schema-basic with lists, snake_case
#: names) cannot represent, with the node or mark the refusal must name.
_NOT_IN_THE_DEFAULT_SCHEMA: list[tuple[dict[str, Any], str]] = [
    ({"type": "bulletList", "content": [item(para(text("milk")))]}, "bulletList"),
    ({"type": "orderedList", "attrs": {"start": 1, "type": None},
      "content": [item(para(text("one")))]}, "orderedList"),
    ({"type": "codeBlock", "attrs": {"language": None}, "content": [text("x = 1")]},
     "codeBlock"),
    ({"type": "horizontalRule"}, "horizontalRule"),
    (para(text("a"), {"type": "hardBreak"}, text("b")), "hardBreak"),
    (para(text("bold", "bold")), "bold"),
    (para(text("slanted", "italic")), "italic"),
    (para(text("gone", "strike")), "strike"),
    (para(text("under", "underline")), "underline"),
]


async def test_content_the_schema_cannot_represent_is_refused_and_nothing_applied() -> None:
    """Issue 12.8, the refusal: with ``--pm-fragment default`` and the default schema, a Tiptap
    editor's content that schema lacks (each StarterKit node and mark in turn) makes
    ``POST …/steps`` answer 422 ``schema_mismatch`` naming it; nothing is applied — the editor
    keeps its document — and nothing is silently dropped."""
    async with running_server(pm_fragment="default", api_key="k") as srv, \
            providers() as repl, httpx.AsyncClient(timeout=10) as http:
        for number, (block, name) in enumerate(_NOT_IN_THE_DEFAULT_SCHEMA):
            doc_id = f"mismatch{number}"
            initial = {"type": "doc", "content": [para(text("Todo")), block]}
            await repl.call("open", name=doc_id, url=f"{srv.ws}/ws/fabric", doc=doc_id)
            await repl.call("waitSynced", name=doc_id)
            await repl.call("pmInit", name=doc_id, fragment="default", doc=initial,
                            schema="tiptap")
            await editor_shows(repl, doc_id, initial)
            answer = await http.post(f"{srv.http}/api/v1/documents/{doc_id}/steps",
                                     headers=AUTH, json={"steps": [insert(1, "X")],
                                                         "changeId": f"c{number}"})
            assert answer.status_code == 422, (name, answer.text)
            body = answer.json()
            assert "schema_mismatch" in answer.text and name in answer.text, (name, body)
            await _keeps_showing(repl, doc_id, initial, seconds=0.5)


async def _keeps_showing(repl: ProviderRepl, name: str, expected: dict[str, Any],
                         seconds: float) -> None:
    """Assert on every poll for ``seconds`` that the editor's document is still ``expected``
    (a refused change must not arrive late)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen = (await repl.call("pmJSON", name=name, fragment="default", schema="tiptap"))["doc"]
        assert seen == expected, (seen, expected)
        await asyncio.sleep(0.05)
