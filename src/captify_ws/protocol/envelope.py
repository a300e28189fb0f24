"""The JSON envelope of ``/ws/fabric?documentId=…`` (the seed's protocol), sans-I/O.

Client → server, one JSON object per text frame::

    {"type": "sync" | "update" | "awareness" | "selection" | "steps" | …,
     "documentId": "doc-123", "data": …}

Server → client::

    {"type": "connected" | "synced" | "update" | "awareness" | "selection" | "steps" | "error",
     "documentId": "doc-123", "clientID"?: "…", "data"?: …, "message"?: "…"}

Yjs bytes travel as standard base64. On input the server also accepts what browsers produce by
accident — ``JSON.stringify(uint8array)`` gives ``{"0":…,"1":…}``, ``Array.from`` a list of ints —
and the seed's ``update`` key in place of ``data``.

:func:`decode_client_message` raises :class:`~captify_ws.errors.InvalidMessage` whose text is
what the client is told in the ``error`` message.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Final

from captify_ws.errors import InvalidMessage, JsonTooDeep

JsonValue = Any


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """``sync``: asks for the document, or for what a given state vector lacks."""

    document_id: str
    state_vector: bytes | None


@dataclass(frozen=True, slots=True)
class UpdateMessage:
    """``update``: a Yjs update to apply."""

    document_id: str
    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessMessage:
    """``awareness``: the sender's presence state (any JSON value; ``null`` withdraws it)."""

    document_id: str
    state: JsonValue


@dataclass(frozen=True, slots=True)
class SelectionMessage:
    """``selection``: the sender's cursor/selection, relayed as it is."""

    document_id: str
    selection: JsonValue


@dataclass(frozen=True, slots=True)
class StepsMessage:
    """``steps``: ProseMirror steps with their version (the step authority's input)."""

    document_id: str
    data: JsonValue


@dataclass(frozen=True, slots=True)
class DocRequest:
    """``doc``: asks the step authority for its ProseMirror document and version."""

    document_id: str


@dataclass(frozen=True, slots=True)
class StepsSinceRequest:
    """``steps-since``: asks the step authority for the steps after ``version``."""

    document_id: str
    version: int


ClientMessage = SyncRequest | UpdateMessage | AwarenessMessage | SelectionMessage | StepsMessage \
    | DocRequest | StepsSinceRequest

CLIENT_TYPES: Final = ("sync", "update", "awareness", "selection", "steps", "doc", "steps-since")


def dumps(value: JsonValue) -> str:
    """Compact JSON, as the server writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def decode_bytes_field(value: JsonValue, what: str) -> bytes:
    """Bytes from base64 text, a list of byte values, or a ``JSON.stringify(Uint8Array)`` object."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMessage(f"'{what}' is not valid base64") from None
    if isinstance(value, list):
        values = value
    elif isinstance(value, dict):
        # {"0": 1, "1": 2, …}: keys must be exactly 0..n-1.
        try:
            keyed = {int(key): byte for key, byte in value.items()}
        except ValueError:
            raise InvalidMessage(f"'{what}' object must have keys 0..n-1") from None
        if set(keyed) != set(range(len(keyed))):
            raise InvalidMessage(f"'{what}' object must have keys 0..n-1")
        values = [keyed[index] for index in range(len(keyed))]
    else:
        raise InvalidMessage(f"'{what}' must be base64 text, a list of bytes or a byte object")
    try:
        return bytes(values)
    except (TypeError, ValueError):
        raise InvalidMessage(f"'{what}' must hold integers 0-255") from None


#: Default of ``max_values`` (the ``max_json_values`` setting).
MAX_JSON_VALUES: Final = 100_000


#: Characters scanned at a time by :func:`more_values_than` (it stops at the first window
#: past the limit: refusing a huge message costs as little as a small one).
_SCAN_WINDOW: Final = 1 << 18
#: Bytes of an undecoded message copied at a time to be scanned (a copy this small comes from
#: the allocator's heap, warm, not from fresh pages).
_VIEW_WINDOW: Final = 1 << 16


def more_values_than(text: str | bytes | memoryview, limit: int, *,
                     view_window: int = _VIEW_WINDOW) -> bool:
    """Whether ``text`` holds more than ``limit`` separators (``,`` and ``:``). A
    ``memoryview`` (a text message not yet decoded) is scanned through copies of
    ``view_window`` bytes at a time."""
    if len(text) <= 2 * limit:
        return False  # every value takes a separator and at least one character
    if isinstance(text, memoryview):
        seen = 0
        for start in range(0, len(text), view_window):
            chunk = text[start:start + view_window].tobytes()
            seen += chunk.count(b",") + chunk.count(b":")
            if seen > limit:
                return True
        return False
    comma, colon = (b",", b":") if isinstance(text, bytes) else (",", ":")
    seen = 0
    for start in range(0, len(text), _SCAN_WINDOW):
        end = start + _SCAN_WINDOW
        seen += text.count(comma, start, end) + text.count(colon, start, end)  # type: ignore[arg-type]
        if seen > limit:
            return True
    return False


def too_many_values(limit: int) -> InvalidMessage:
    """The refusal of a message past ``max_json_values``."""
    return InvalidMessage(f"message holds more than {limit} JSON values (send Yjs updates as "
                          "base64 text)")


def parse_json(text: str | bytes, *, max_values: int = MAX_JSON_VALUES) -> JsonValue:
    """JSON text → its value, within the parse limits that bound the work one message causes.

    * At most ``max_values`` values: every array item and object member costs a ``,`` or a
      ``:``, so their count (a C-speed scan of the raw text, before any parsing) bounds them;
      a larger message raises :class:`InvalidMessage` without being parsed.
    * Nesting as deep as the parser's own limit (about 1,000 levels): deeper raises
      :class:`JsonTooDeep` (4400), never ``RecursionError``.
    * Not JSON raises :class:`InvalidMessage`.
    """
    if more_values_than(text, max_values):
        raise too_many_values(max_values)
    try:
        return json.loads(text)
    except RecursionError:
        raise JsonTooDeep("JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"invalid JSON: {exc}") from None


def decode_client_message(frame: str | bytes, *,
                          max_values: int = MAX_JSON_VALUES) -> ClientMessage:
    """Decode one client frame of the JSON protocol into its event (parse limits: see
    :func:`parse_json`)."""
    message = parse_json(frame, max_values=max_values)
    if not isinstance(message, dict):
        raise InvalidMessage("message must be a JSON object")
    kind = message.get("type")
    if kind is None:
        raise InvalidMessage("missing field 'type'")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise InvalidMessage(f"unknown message type {kind!r}; expected one of "
                             + ", ".join(CLIENT_TYPES))
    document_id = message.get("documentId")
    if document_id is None:
        raise InvalidMessage("missing field 'documentId'")
    if not isinstance(document_id, str):
        raise InvalidMessage("'documentId' must be a string")
    data = message.get("data")

    if kind == "sync":
        state_vector = None
        if isinstance(data, dict) and data.get("stateVector") is not None:
            state_vector = decode_bytes_field(data["stateVector"], "data.stateVector")
        elif data is not None and not isinstance(data, dict):
            raise InvalidMessage("'data' of sync must be an object or absent")
        return SyncRequest(document_id, state_vector)
    if kind == "update":
        payload = data if data is not None else message.get("update")
        if payload is None:
            raise InvalidMessage("missing field 'data' (the Yjs update)")
        return UpdateMessage(document_id, decode_bytes_field(payload, "data"))
    if kind == "awareness":
        if "data" not in message:
            raise InvalidMessage("missing field 'data' (the awareness state)")
        return AwarenessMessage(document_id, data)
    if kind == "selection":
        if "data" not in message:
            raise InvalidMessage("missing field 'data' (the selection)")
        return SelectionMessage(document_id, data)
    if kind == "steps":
        if data is None:
            raise InvalidMessage("missing field 'data' (the steps)")
        return StepsMessage(document_id, data)
    if kind == "doc":
        return DocRequest(document_id)
    # steps-since
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidMessage("'data.version' must be a non-negative integer")
    return StepsSinceRequest(document_id, version)


def decode_steps(data: JsonValue) -> tuple[int, list[JsonValue], JsonValue]:
    """``(version, steps, clientID)`` of a ``steps`` message's data."""
    if not isinstance(data, dict):
        raise InvalidMessage("'data' of steps must be an object with version, steps, clientID")
    version = data.get("version")
    steps = data.get("steps")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidMessage("'data.version' must be a non-negative integer")
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise InvalidMessage("'data.steps' must be a list of step objects")
    if "clientID" not in data:
        raise InvalidMessage("missing field 'data.clientID'")
    return version, steps, data["clientID"]


#: a str as JSON text, as ``json.dumps(..., ensure_ascii=False)`` writes it (C-accelerated)
_json_string: Final = json.encoder.encode_basestring


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_message(kind: str, document_id: str, data: JsonValue = None, *,
                   client_id: str | None = None, include_data: bool = True) -> str:
    """One server → client message as JSON text."""
    message: dict[str, JsonValue] = {"type": kind, "documentId": document_id}
    if client_id is not None:
        message["clientID"] = client_id
    if include_data:
        message["data"] = data
    return dumps(message)


def encode_connected(document_id: str, client_id: str, connections: int) -> str:
    return encode_message("connected", document_id, {"connections": connections},
                          client_id=client_id)


def encode_synced(document_id: str, update: bytes, state_vector: bytes) -> str:
    return encode_message("synced", document_id,
                          {"update": b64(update), "stateVector": b64(state_vector)})


def encode_update(document_id: str, update: bytes, client_id: str | None) -> str:
    """The ``update`` message, the text ``encode_message`` gives (same keys, same order,
    same escaping), put together without building a dict for ``json.dumps``: it is encoded
    once per relayed update, the JSON path's own cost per edit (base64 needs no escaping)."""
    client = "" if client_id is None else ',"clientID":' + _json_string(client_id)
    return ('{"type":"update","documentId":' + _json_string(document_id) + client
            + ',"data":"' + b64(update) + '"}')


def encode_steps(document_id: str, version: int, steps: list[JsonValue],
                 client_ids: list[JsonValue], change_id: JsonValue = None, *,
                 step_texts: list[str] | None = None) -> str:
    """Steps of the step authority: accepted ones, or those a client is missing.

    ``step_texts``, the steps already encoded as compact JSON (``json.dumps`` with ``(",",
    ":")`` separators, as the step log stores them), are put in as they are when none holds
    an escape ``\\u`` (then ``ensure_ascii`` changed nothing and the text is the one
    :func:`encode_message` gives): a step of 1 MB is not encoded a second time (5 ms)."""
    if step_texts is not None and not any("\\u" in text for text in step_texts):
        clients = dumps(client_ids)
        change = "" if change_id is None else ',"changeId":' + dumps(change_id)
        return ('{"type":"steps","documentId":' + _json_string(document_id)
                + ',"data":{"version":' + str(int(version)) + ',"steps":['
                + ",".join(step_texts) + '],"clientIDs":' + clients + change + "}}")
    data: dict[str, JsonValue] = {"version": version, "steps": steps, "clientIDs": client_ids}
    if change_id is not None:
        data["changeId"] = change_id
    return encode_message("steps", document_id, data)


def encode_error(document_id: str | None, message: str, data: JsonValue = None) -> str:
    body: dict[str, JsonValue] = {"type": "error", "documentId": document_id, "message": message}
    if data is not None:
        body["data"] = data
    return dumps(body)
