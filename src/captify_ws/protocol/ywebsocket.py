"""The y-websocket binary protocol, sans-I/O: a frame in, a typed event out; events out as bytes.

What the npm ``y-websocket`` WebsocketProvider speaks (y-protocols ``sync.js``, ``awareness.js``,
``auth.js``): every binary frame holds exactly one message, a lib0 varuint message type followed by
its body::

    0 sync       varuint step (0 = step 1, 1 = step 2, 2 = update), varUint8Array payload
    1 awareness  varUint8Array( varuint count, count × (varuint clientID, varuint clock,
                 varString state-JSON) )     state "null" means the client is gone
    2 auth       varuint 0 (permission denied), varString reason
    3 query-awareness   (no body)

Decoding reuses pycrdt's lib0 ``Decoder`` with bounds checks added: a truncated or overlong frame
raises :class:`~captify_ws.errors.InvalidMessage` (close code 1007), never ``IndexError``. Strings
are written with their UTF-8 byte length (lib0 ``writeVarString``); pycrdt's
``Encoder.write_var_string`` counts characters, which breaks on non-ASCII names, so it is not used.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from pycrdt import Decoder, YMessageType, YSyncMessageType, write_message, write_var_uint

from captify_ws.errors import InvalidMessage

MESSAGE_SYNC: Final = int(YMessageType.SYNC)
MESSAGE_AWARENESS: Final = int(YMessageType.AWARENESS)
MESSAGE_AUTH: Final = 2
MESSAGE_QUERY_AWARENESS: Final = 3

SYNC_STEP1: Final = int(YSyncMessageType.SYNC_STEP1)
SYNC_STEP2: Final = int(YSyncMessageType.SYNC_STEP2)
SYNC_UPDATE: Final = int(YSyncMessageType.SYNC_UPDATE)

AUTH_PERMISSION_DENIED: Final = 0

#: Largest integer lib0 can decode in JavaScript (Number.MAX_SAFE_INTEGER).
MAX_VAR_UINT: Final = (1 << 53) - 1

#: A Yjs update that changes nothing: no structs, empty delete set.
EMPTY_UPDATE: Final = b"\x00\x00"


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """The peer's state vector; it expects a :class:`SyncStep2` with what it lacks."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """What the peer has that our state vector lacks (a Yjs update)."""

    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """A Yjs update. ``frame`` is the whole received message, relayable as it is."""

    update: bytes
    frame: bytes


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's presence: ``state`` is its JSON text, ``"null"`` when it left."""

    client_id: int
    clock: int
    state: str

    @property
    def removed(self) -> bool:
        return self.state == "null"


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    entries: tuple[AwarenessEntry, ...]


@dataclass(frozen=True, slots=True)
class AuthMessage:
    """An auth message; servers send it, and clients never should, so it is only tolerated."""

    permission_denied: bool
    reason: str


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """The peer asks for every current awareness state."""


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message type this server does not know (protocol extensions); ignored, like y-websocket."""

    message_type: int


YMessage = SyncStep1 | SyncStep2 | SyncUpdate | AwarenessUpdate | AuthMessage | QueryAwareness \
    | UnknownMessage


class _StrictDecoder(Decoder):
    """pycrdt's lib0 decoder, refusing to read past the end of the frame."""

    def read_var_uint(self) -> int:
        value = 0
        shift = 0
        while True:
            if self.length <= 0:
                raise InvalidMessage("truncated message: varuint runs past the end of the frame")
            byte = self.stream[self.i0]
            self.i0 += 1
            self.length -= 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 56:
                raise InvalidMessage("varuint is longer than 8 bytes")
        if value > MAX_VAR_UINT:
            raise InvalidMessage("varuint exceeds 2^53 - 1")
        return value

    def read_bytes(self) -> bytes:
        """A lib0 varUint8Array."""
        size = self.read_var_uint()
        if size > self.length:
            raise InvalidMessage(
                f"truncated message: {size} bytes announced, {self.length} left in the frame")
        start = self.i0
        self.i0 += size
        self.length -= size
        return bytes(self.stream[start:self.i0])

    def read_string(self) -> str:
        try:
            return self.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessage("string is not valid UTF-8") from None

    def expect_end(self) -> None:
        if self.length:
            raise InvalidMessage(f"{self.length} unexpected bytes after the message "
                                 "(one message per frame)")


def peek_update(head: bytes, size: int) -> int | None:
    """Where the Yjs update of a sync update or sync step 2 message of ``size`` bytes starts,
    read from the message's first bytes ``head`` (16 are enough); ``None`` for any other
    message, or one whose length prefix does not match ``size``."""
    if len(head) < 3 or head[0] != MESSAGE_SYNC or head[1] not in (SYNC_UPDATE, SYNC_STEP2):
        return None
    length = shift = 0
    for index in range(2, min(len(head), 12)):
        byte = head[index]
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return index + 1 if index + 1 + length == size else None
        shift += 7
    return None


def decode_message(frame: bytes) -> YMessage:
    """Decode one binary frame into its event; raises :class:`InvalidMessage` if malformed."""
    # Fast path for the message that dominates traffic: a sync update whose length fits in one
    # or two varuint bytes. Anything else takes the general path below.
    if len(frame) > 3 and frame[0] == MESSAGE_SYNC and frame[1] == SYNC_UPDATE:
        first = frame[2]
        if first < 0x80:
            if len(frame) == 3 + first:
                return SyncUpdate(frame[3:], frame)
        elif len(frame) > 4 and frame[3] < 0x80 and \
                len(frame) == 4 + ((first & 0x7F) | (frame[3] << 7)):
            return SyncUpdate(frame[4:], frame)
    if not frame:
        raise InvalidMessage("empty frame")
    decoder = _StrictDecoder(frame)
    message_type = decoder.read_var_uint()
    event: YMessage
    if message_type == MESSAGE_SYNC:
        step = decoder.read_var_uint()
        payload = decoder.read_bytes()
        if step == SYNC_STEP1:
            event = SyncStep1(payload)
        elif step == SYNC_STEP2:
            event = SyncStep2(payload)
        elif step == SYNC_UPDATE:
            event = SyncUpdate(payload, frame)
        else:
            raise InvalidMessage(f"unknown sync step {step}")
    elif message_type == MESSAGE_AWARENESS:
        event = AwarenessUpdate(decode_awareness_payload(decoder.read_bytes()))
    elif message_type == MESSAGE_AUTH:
        kind = decoder.read_var_uint()
        reason = decoder.read_string() if decoder.length else ""
        event = AuthMessage(kind == AUTH_PERMISSION_DENIED, reason)
    elif message_type == MESSAGE_QUERY_AWARENESS:
        event = QueryAwareness()
    else:
        return UnknownMessage(message_type)
    decoder.expect_end()
    return event


def decode_awareness_payload(payload: bytes) -> tuple[AwarenessEntry, ...]:
    """The entries of an awareness update (y-protocols ``encodeAwarenessUpdate``)."""
    decoder = _StrictDecoder(payload)
    count = decoder.read_var_uint()
    # Each entry needs at least 3 bytes; a huge count in a small frame is malformed.
    if count * 3 > decoder.length:
        raise InvalidMessage(f"awareness update announces {count} entries in "
                             f"{decoder.length} bytes")
    entries = tuple(
        AwarenessEntry(decoder.read_var_uint(), decoder.read_var_uint(), decoder.read_string())
        for _ in range(count)
    )
    decoder.expect_end()
    return entries


def parse_awareness_state(state: str) -> object:
    """The JSON value of an awareness state; raises :class:`InvalidMessage` when not JSON.

    Yjs clients ``JSON.parse`` every state they receive, so a state that is not JSON must never
    be relayed: it would throw inside every other client.
    """
    try:
        return json.loads(state)
    except (ValueError, RecursionError):
        raise InvalidMessage("awareness state is not valid JSON") from None


def encode_sync_step1(state_vector: bytes) -> bytes:
    return bytes((MESSAGE_SYNC, SYNC_STEP1)) + write_message(state_vector)


def encode_sync_step2(update: bytes) -> bytes:
    return bytes((MESSAGE_SYNC, SYNC_STEP2)) + write_message(update)


def encode_sync_update(update: bytes) -> bytes:
    return bytes((MESSAGE_SYNC, SYNC_UPDATE)) + write_message(update)


def encode_awareness_payload(entries: Iterable[AwarenessEntry]) -> bytes:
    items = list(entries)
    parts = [write_var_uint(len(items))]
    for entry in items:
        parts.append(write_var_uint(entry.client_id))
        parts.append(write_var_uint(entry.clock))
        parts.append(write_message(entry.state.encode("utf-8")))
    return b"".join(parts)


def encode_awareness(entries: Iterable[AwarenessEntry]) -> bytes:
    return bytes((MESSAGE_AWARENESS,)) + write_message(encode_awareness_payload(entries))


def encode_permission_denied(reason: str) -> bytes:
    return bytes((MESSAGE_AUTH, AUTH_PERMISSION_DENIED)) + write_message(reason.encode("utf-8"))


def encode_query_awareness() -> bytes:
    return bytes((MESSAGE_QUERY_AWARENESS,))
