"""Tables for bench/run.py: the JSON protocol beside the seed's stack, and the ratios of
interleaved repeats as medians with their spread (issue 20: ratios within one invocation)."""

from __future__ import annotations

import re
import statistics
from typing import Any

ByTag = dict[str, dict[str, dict[str, Any]]]


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ratio(ours: Any, ref: Any) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(ref, (int, float)) or not ref:
        return "–"
    return f"{ours / ref:.2f}×"


def spread(values: list[float]) -> str:
    """``median (min–max, n runs)`` of ratios, or – when there are none."""
    if not values:
        return "–"
    return (f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f}, "
            f"{len(values)} runs)")


def ratios(by_tag: ByTag, prefix: str, ours: str, ref: str, key: str,
           ref_tag: str | None = None) -> list[float]:
    """``ours[key] / ref[key]`` for every repeat whose tag starts with ``prefix``; with
    ``ref_tag`` the reference comes from the same repeat of another tag (``prefix`` replaced)."""
    found = []
    for tag, peers in by_tag.items():
        if not re.fullmatch(re.escape(prefix) + r"(-r\d+)?", tag) or ours not in peers:
            continue
        other = by_tag.get(tag.replace(prefix, ref_tag, 1), {}) if ref_tag else peers
        a, b = dig(peers[ours], key), dig(other.get(ref, {}), key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            found.append(a / b)
    return found


def dig(result: dict[str, Any], key: str) -> Any:
    """``result["a"]["b"]`` for the key ``"a.b"``; ``None`` where a part is missing."""
    value: Any = result
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def render_json(by_tag: ByTag) -> list[str]:
    """The JSON protocol tables: fan-out beside seed-json and beside captify-ws's own
    y-websocket path of the same repeat, many documents beside seed-json."""
    lines: list[str] = []
    fanout = [t for t in by_tag if t.startswith("json-fanout")]
    if fanout:
        lines += ["## The seed's JSON protocol: fan-out (1 writer, 1000 JSON readers)", "",
                  "`../shared/bench/jsonfanout.mjs` (`LOADGEN=jsonfanout`): 1000 readers on "
                  "`/ws/fabric?documentId=` (50 timed, all reading), one writer sending 200 "
                  "real Yjs updates at 20/s base64 in `update` messages. Peer `seed-json` is "
                  "the seed's own stack (Node, `ws`, Yjs; each relay serialized once). "
                  "`vs yws` compares with captify-ws's y-websocket fan-out "
                  "(`fanout-1000-yws`: 50 readers timed, 950 paused) run in the same repeat, "
                  "`vs yws reading` with the same where all 1000 read "
                  "(`fanout-1000-yws-reading`), as the JSON readers do.", "",
                  "| run | server | p50 ms | p99 ms | server µs/copy | vs seed-json | vs "
                  "captify-ws yws | vs yws reading | delivered | server state |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for tag in fanout:
            ref = by_tag[tag].get("seed-json", {})
            yws, reading = (by_tag.get(tag.replace("json-fanout-1000", other), {}).get(
                "captify", {}) for other in ("fanout-1000-yws", "fanout-1000-yws-reading"))
            for peer, r in by_tag[tag].items():
                lat = r.get("latency_ms") or {}
                cost = r.get("server_cpu_us_per_delivery")
                lines.append("| " + " | ".join([
                    tag, r.get("label") or peer, fmt(lat.get("p50")), fmt(lat.get("p99")),
                    fmt(cost), ratio(cost, ref.get("server_cpu_us_per_delivery")),
                    *((ratio(cost, yws.get("server_cpu_us_per_delivery")),
                       ratio(cost, reading.get("server_cpu_us_per_delivery")))
                      if peer != "seed-json" else ("–", "–")),
                    fmt(r.get("all_delivered")), fmt(r.get("server_state_converged")),
                ]) + (f" {str(r['error'])[:80]}" if r.get("error") else "") + " |")
        lines += ["", "Medians of the interleaved repeats: server CPU per copy "
                  + spread(ratios(by_tag, "json-fanout-1000", "captify-json", "seed-json",
                                  "server_cpu_us_per_delivery"))
                  + " seed-json's, "
                  + spread(ratios(by_tag, "json-fanout-1000", "captify-json", "captify",
                                  "server_cpu_us_per_delivery", "fanout-1000-yws"))
                  + " captify-ws's y-websocket path ("
                  + spread(ratios(by_tag, "json-fanout-1000", "captify-json", "captify",
                                  "server_cpu_us_per_delivery", "fanout-1000-yws-reading"))
                  + " with every y-websocket reader reading); p99 "
                  + spread(ratios(by_tag, "json-fanout-1000", "captify-json", "seed-json",
                                  "latency_ms.p99")) + " seed-json's.", ""]
    many = [t for t in by_tag if t.startswith("json-many")]
    if many:
        lines += ["## The seed's JSON protocol: many documents (200 documents × 2 clients)", "",
                  "`bench/json_many_docs.mjs`: each client appends to its own Y.Text at 5 "
                  "edits/s for 15 s; latency at the document's other client.", "",
                  "| run | server | p50 ms | p99 ms | server µs/edit | vs seed-json | "
                  "converged docs | server state |", "|---|---|---|---|---|---|---|---|"]
        for tag in many:
            ref = by_tag[tag].get("seed-json-many", {})
            for peer, r in by_tag[tag].items():
                lat = r.get("latency_ms") or {}
                cost = r.get("server_cpu_us_per_edit")
                lines.append("| " + " | ".join([
                    tag, r.get("label") or peer, fmt(lat.get("p50")), fmt(lat.get("p99")),
                    fmt(cost), ratio(cost, ref.get("server_cpu_us_per_edit")),
                    f"{r.get('converged_docs', '–')}/{(r.get('params') or {}).get('docs', '–')}",
                    fmt(r.get("server_state_converged")),
                ]) + (f" {str(r['error'])[:80]}" if r.get("error") else "") + " |")
        lines += ["", "Medians: server CPU per edit "
                  + spread([*ratios(by_tag, "json-many-docs-200", "captify-json-many",
                                    "seed-json-many", "server_cpu_us_per_edit"),
                            *ratios(by_tag, "json-many-docs-200-ab", "captify-json-many",
                                    "seed-json-many", "server_cpu_us_per_edit")])
                  + " seed-json's.", ""]
    return lines


def render_fanout_medians(by_tag: ByTag) -> list[str]:
    """Medians and spread of captify-ws / ywss over each group of interleaved repeats."""
    lines = []
    for prefix, what in (("fanout-1000-yws", "1000 readers, 20 edits/s"),
                         ("fanout-1000-lean-r200", "1000 readers, 200 edits/s"),
                         ("fanout-1000-lean-r100", "1000 readers, 100 edits/s")):
        cost = ratios(by_tag, prefix, "captify", "ywss", "server_cpu_us_per_delivery")
        if cost:
            p99 = ratios(by_tag, prefix, "captify", "ywss", "latency_ms.p99")
            p50 = ratios(by_tag, prefix, "captify", "ywss", "latency_ms.p50")
            lines.append(f"- {what} (`{prefix}*`): captify-ws / ywss server CPU per copy "
                         f"{spread(cost)}, p50 {spread(p50)}, p99 {spread(p99)}.")
    for prefix, what in (("fanout-1000-ab-r20", "1000 readers, 20 edits/s"),
                         ("fanout-1000-ab-r200", "1000 readers, 200 edits/s")):
        cost = ratios(by_tag, prefix, "captify", "captify-base", "server_cpu_us_per_delivery")
        if cost:
            p50 = ratios(by_tag, prefix, "captify", "captify-base", "latency_ms.p50")
            p99 = ratios(by_tag, prefix, "captify", "captify-base", "latency_ms.p99")
            lines.append(f"- {what} (`{prefix}*`): this build / the base build server CPU per "
                         f"copy {spread(cost)}, p50 {spread(p50)}, p99 {spread(p99)}.")
    if lines:
        lines = ["Medians of interleaved repeats (ratio captify-ws / ywss in each repeat):", "",
                 *lines, ""]
    return lines
