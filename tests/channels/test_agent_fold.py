"""The compacted snapshot of an agent run: folding the whole stream equals continuing from
any snapshot with the live events, in Python (the server's fold, the client's reducer) and in
JavaScript (agentReducer of /client/channels.js, run by Node)."""

from __future__ import annotations

import json
import random
import subprocess
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from captify_ws.agents.events import RunFold
from captify_ws.client import agent_reducer
from tests.helpers import ROOT

IDS = st.sampled_from(["m1", "m2", "t1", "t2"])
EVENT = st.one_of(
    st.builds(lambda o: ("run.started", {"owner": o}), st.sampled_from([None, "u1"])),
    st.builds(lambda i, r: ("message.started", {"message_id": i, "role": r}), IDS,
              st.sampled_from(["assistant", "tool"])),
    st.builds(lambda i, d: ("token", {"message_id": i, "delta": d}), IDS,
              st.text(max_size=5)),
    st.builds(lambda i: ("message.completed", {"message_id": i}), IDS),
    st.builds(lambda i, a: ("tool_call", {"id": i, "name": "search", "args": a}), IDS,
              st.one_of(st.none(), st.integers(), st.text(max_size=3))),
    st.builds(lambda i, r: ("tool_result", {"id": i, "result": r}), IDS, st.integers()),
    st.just(("run.heartbeat", {})),
    st.just(("run.completed", {"result": 1})),
    st.just(("run.failed", {"error": "boom"})),
    st.just(("run.cancelled", {"by": "u2"})),
)


def _pubs(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"type": "pub", "channel": "agent:r", "offset": n + 1, "epoch": "e",
             "event": event, "data": data, "ts": 1000 + n}
            for n, (event, data) in enumerate(events)]


def _fold(pubs: list[dict[str, Any]]) -> dict[str, Any]:
    fold = RunFold("r")
    for pub in pubs:
        fold.apply(pub["offset"], pub["event"], pub["data"], pub["ts"])
    return fold.to_json()


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENT, max_size=40), st.integers(min_value=0, max_value=40))
def test_a_snapshot_then_live_events_equals_the_whole_fold(
        events: list[tuple[str, dict[str, Any]]], cut: int) -> None:
    """For any events and any cut: reduce(fold(prefix), rest) == fold(all)."""
    pubs = _pubs(events)
    cut = min(cut, len(pubs))
    state: Any = json.loads(json.dumps(_fold(pubs[:cut]))) if cut else None
    for pub in pubs[cut:]:
        state = agent_reducer(state, pub)
    assert (state or _fold([])) == _fold(pubs)


def test_the_javascript_reducer_agrees_with_the_server_fold() -> None:
    """agentReducer in Node over 200 random runs, each continued from a snapshot at a random
    cut, gives the server's fold."""
    rng = random.Random(18)
    kinds = ["run.started", "message.started", "token", "token", "token",
             "message.completed", "tool_call", "tool_result", "run.heartbeat",
             "run.completed", "run.failed", "run.cancelled"]
    cases = []
    for _ in range(200):
        events: list[tuple[str, dict[str, Any]]] = []
        for _ in range(rng.randint(0, 30)):
            kind = rng.choice(kinds)
            ident = rng.choice(["m1", "m2", "t1"])
            data: dict[str, Any] = {
                "run.started": {"owner": rng.choice([None, "u1"])},
                "message.started": {"message_id": ident, "role": "assistant"},
                "token": {"message_id": ident, "delta": rng.choice(["a", "é", "👷", " b"])},
                "message.completed": {"message_id": ident},
                "tool_call": {"id": ident, "name": "f", "args": {"k": rng.randint(0, 9)}},
                "tool_result": {"id": ident, "result": rng.randint(0, 9)},
                "run.completed": {"result": "ok"}, "run.failed": {"error": "x"},
                "run.cancelled": {"by": "u2"}}.get(kind, {})
            events.append((kind, data))
        pubs = _pubs(events)
        cut = rng.randint(0, len(pubs))
        cases.append({"snapshot": _fold(pubs[:cut]) if cut else None, "rest": pubs[cut:],
                      "expected": _fold(pubs)})
    script = (
        "import { agentReducer } from " + json.dumps(
            str(ROOT / "src" / "captify_ws" / "static" / "channels.js")) + "\n"
        "let input = ''\n"
        "process.stdin.on('data', (c) => { input += c })\n"
        "process.stdin.on('end', () => {\n"
        "  const out = JSON.parse(input).map((c) => c.rest.reduce(agentReducer, c.snapshot))\n"
        "  process.stdout.write(JSON.stringify(out))\n"
        "})\n")
    done = subprocess.run(["node", "--input-type=module", "-e", script],
                          input=json.dumps(cases), capture_output=True, text=True,
                          timeout=60, check=True)
    results = json.loads(done.stdout)
    for case, got in zip(cases, results, strict=True):
        assert (got or _fold([])) == case["expected"], (case, got)
