"""The wire format between captify-ws instances (over the broker), sans-I/O.

Internal messages are binary::

    0xCA  version(1)  kind(1)  varString(instance id)  body

and every message names the instance that sent it, so an instance drops its own messages and
never re-publishes what it received. Kinds:

=====  ===================  ==============================================================
kind   channel              body
=====  ===================  ==============================================================
``U``  document             a Yjs update accepted by the sender
``A``  document             awareness entries the sender's clients changed, each with the JSON
                            clientID of entries owned by JSON clients, the key of the owning
                            connection and whether it released the id (it left)
``J``  document             a JSON message for every JSON client of the document
``C``  document             varString clientID + a JSON message for that client only
``V``  document             the sender's state vector: receivers answer with what it lacks
``Q``  document             "send me your presence" (an instance just loaded the document)
``P``  document             JSON ``{"version","steps","clientIDs","changeId"}``: steps the
                            sender's step authority accepted
``S``  document             JSON ``{"payload","userId","connectionId"}``: a stateless message
                            for the document's Hocuspocus providers (of one user or
                            connection when set)
``H``  cluster              heartbeat: JSON ``{"handlers":{…},"documents":{…}}`` counts
``D``  cluster              state vectors of every document loaded by the sender
``X``  cluster              JSON control message (revocation, …)
=====  ===================  ==============================================================

Backends in any language publish JSON (not this binary format) on the ``publish`` channel; see
:func:`decode_external` and README "Scaling out".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from pycrdt import write_message, write_var_uint

from captify_ws.errors import BadRequest, InvalidMessage
from captify_ws.protocol import names
from captify_ws.protocol.ywebsocket import AwarenessEntry, _StrictDecoder

MAGIC: Final = 0xCA
VERSION: Final = 1

UPDATE: Final = ord("U")
AWARENESS: Final = ord("A")
JSON_ALL: Final = ord("J")
JSON_CLIENT: Final = ord("C")
STATE_VECTOR: Final = ord("V")
PRESENCE_QUERY: Final = ord("Q")
HEARTBEAT: Final = ord("H")
DIGEST: Final = ord("D")
CONTROL: Final = ord("X")
STEPS: Final = ord("P")
STATELESS: Final = ord("S")


@dataclass(frozen=True, slots=True)
class ClusterMessage:
    kind: int
    instance: str
    body: bytes


@dataclass(frozen=True, slots=True)
class RemoteAwareness:
    entry: AwarenessEntry
    json_client_id: str | None
    #: the owning connection on the sending instance (opaque, unique there)
    owner: str = ""
    #: the owner gave the id up (it left)
    released: bool = False


def encode(kind: int, instance: str, body: bytes = b"") -> bytes:
    return bytes((MAGIC, VERSION, kind)) + write_message(instance.encode()) + body


def decode(data: bytes) -> ClusterMessage:
    """Raises :class:`InvalidMessage` for anything that is not a cluster message."""
    if len(data) < 4 or data[0] != MAGIC or data[1] != VERSION:
        raise InvalidMessage("not a captify-ws cluster message")
    decoder = _StrictDecoder(data[3:])
    instance = decoder.read_string()
    return ClusterMessage(data[2], instance, bytes(data[3 + decoder.i0:]))


def encode_awareness(entries: Iterable[RemoteAwareness]) -> bytes:
    """Per entry: client id, clock, state, JSON clientID ("" for none), owner key, released
    (0/1)."""
    items = list(entries)
    parts = [write_var_uint(len(items))]
    for item in items:
        entry = item.entry
        parts += [write_var_uint(entry.client_id), write_var_uint(entry.clock),
                  write_message(entry.state.encode()),
                  write_message((item.json_client_id or "").encode()),
                  write_message(item.owner.encode()), write_var_uint(int(item.released))]
    return b"".join(parts)


def decode_awareness(body: bytes) -> list[RemoteAwareness]:
    decoder = _StrictDecoder(body)
    count = decoder.read_var_uint()
    out = []
    for _ in range(count):
        entry = AwarenessEntry(decoder.read_var_uint(), decoder.read_var_uint(),
                               decoder.read_string())
        json_client_id = decoder.read_string()
        owner = decoder.read_string()
        released = decoder.read_var_uint() == 1
        out.append(RemoteAwareness(entry, json_client_id or None, owner, released))
    decoder.expect_end()
    return out


def encode_to_client(client_id: str, text: str) -> bytes:
    return write_message(client_id.encode()) + text.encode()


def decode_to_client(body: bytes) -> tuple[str, str]:
    """(clientID, JSON text); raises :class:`InvalidMessage` when truncated or not UTF-8."""
    decoder = _StrictDecoder(body)
    client_id = decoder.read_string()
    return client_id, decode_text(bytes(body[decoder.i0:]))


def decode_text(body: bytes) -> str:
    """A body that is text (``J``); raises :class:`InvalidMessage` when it is not UTF-8."""
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise InvalidMessage("cluster message text is not valid UTF-8") from None


def encode_digest(vectors: Iterable[tuple[str, bytes]]) -> bytes:
    items = list(vectors)
    parts = [write_var_uint(len(items))]
    for document_id, state_vector in items:
        parts += [write_message(document_id.encode()), write_message(state_vector)]
    return b"".join(parts)


def decode_digest(body: bytes) -> list[tuple[str, bytes]]:
    decoder = _StrictDecoder(body)
    count = decoder.read_var_uint()
    out = [(decoder.read_string(), decoder.read_bytes()) for _ in range(count)]
    decoder.expect_end()
    return out


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def decode_json(body: bytes) -> Any:
    """Raises :class:`InvalidMessage` when ``body`` is not JSON (or nests too deep)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidMessage("cluster message body is not JSON") from None


def decode_object(body: bytes) -> dict[str, Any]:
    """A JSON object body (``H``, ``X``, ``S``); raises :class:`InvalidMessage` otherwise."""
    value = decode_json(body)
    if not isinstance(value, dict):
        raise InvalidMessage("cluster message body is not a JSON object")
    return value


def decode_heartbeat(body: bytes) -> tuple[dict[str, int], dict[str, int], float | None]:
    """An ``H`` body: (connections per handler, connections per document, sent at in
    ``time.time()`` seconds or ``None``); counts that are not integers are left out.
    Raises :class:`InvalidMessage` when the body is not a JSON object."""
    value = decode_object(body)
    sent_at = value.get("sentAt")
    return (_counts(value.get("handlers")), _counts(value.get("documents")),
            float(sent_at) if isinstance(sent_at, (int, float)) and
            not isinstance(sent_at, bool) else None)


def _counts(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {key: count for key, count in value.items()
            if isinstance(count, int) and not isinstance(count, bool)}


def decode_steps(body: bytes) -> tuple[int, list[Any], list[Any], Any]:
    """A ``P`` body: (version, steps, clientIDs, changeId); raises :class:`InvalidMessage`
    when a field is missing or of the wrong type."""
    value = decode_object(body)
    version, steps, client_ids = value.get("version"), value.get("steps"), value.get("clientIDs")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidMessage("steps: 'version' must be a non-negative integer")
    if not isinstance(steps, list) or not isinstance(client_ids, list):
        raise InvalidMessage("steps: 'steps' and 'clientIDs' must be lists")
    return version, steps, client_ids, value.get("changeId")


@dataclass(frozen=True, slots=True)
class ExternalSteps:
    """Steps published by a backend: to every client of a document, or to one clientID."""

    document_id: str
    steps: list[Any]
    change_id: Any
    client_id: str | None
    version: int | None


@dataclass(frozen=True, slots=True)
class ExternalStateless:
    """A stateless message published by a backend for a document's Hocuspocus providers (all,
    one user's, or one connection's)."""

    document_id: str
    payload: str
    user_id: str | None
    connection_id: str | None


def decode_external(data: bytes) -> ExternalSteps | ExternalStateless:
    """A backend's message on the publish channel (README "Scaling out" has the contract)::

        {"type":"steps","documentId":"doc-1","steps":[…],"changeId":"c1"}
        {"type":"steps","documentId":"doc-1","steps":[…],"changeId":"c1","clientID":"c-9"}
        {"type":"stateless","documentId":"doc-1","payload":"…"}   (+ "userId" or "connectionId")
    """
    try:
        message = json.loads(data)
    except ValueError:
        raise InvalidMessage("not JSON") from None
    if not isinstance(message, dict) or message.get("type") not in ("steps", "stateless"):
        raise InvalidMessage('expected {"type":"steps",…} or {"type":"stateless",…}')
    document_id = message.get("documentId")
    if not isinstance(document_id, str):
        raise InvalidMessage("'documentId' must be a string")
    try:
        names.check_name(document_id)
    except BadRequest as exc:
        raise InvalidMessage(f"'documentId': {exc.message}") from None
    if message["type"] == "stateless":
        return decode_stateless(document_id, message)
    return decode_steps_publication(document_id, message)


def decode_steps_publication(document_id: str, message: Any) -> ExternalSteps:
    """The fields of a steps publication — the one validator of that contract, for the publish
    channel and ``POST /api/v1/documents/{id}/steps`` alike: ``steps`` a list, ``changeId``
    present, ``clientID`` a string and ``version`` an integer when given. Raises
    :class:`InvalidMessage` naming the first field that is wrong."""
    if not isinstance(message, dict):
        raise InvalidMessage("expected an object with a 'steps' list")
    steps = message.get("steps")
    client_id = message.get("clientID")
    version = message.get("version")
    if not isinstance(steps, list):
        raise InvalidMessage("'steps' must be a list")
    if "changeId" not in message:
        raise InvalidMessage("missing 'changeId'")
    if client_id is not None and not isinstance(client_id, str):
        raise InvalidMessage("'clientID' must be a string")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise InvalidMessage("'version' must be an integer")
    return ExternalSteps(document_id, steps, message["changeId"], client_id, version)


def decode_stateless(document_id: str, message: dict[str, Any]) -> ExternalStateless:
    """The fields of a stateless message (publish channel, cluster ``S``, HTTP API)."""
    payload = message.get("payload")
    user_id = message.get("userId")
    connection_id = message.get("connectionId")
    if not isinstance(payload, str):
        raise InvalidMessage("'payload' must be a string (JSON-encode structured payloads)")
    if user_id is not None and not isinstance(user_id, str):
        raise InvalidMessage("'userId' must be a string")
    if connection_id is not None and not isinstance(connection_id, str):
        raise InvalidMessage("'connectionId' must be a string")
    if user_id is not None and connection_id is not None:
        raise InvalidMessage("give 'userId' or 'connectionId', not both")
    return ExternalStateless(document_id, payload, user_id, connection_id)
