"""The Hocuspocus wire protocol (``@hocuspocus/provider`` 2.x, 3.x, 4.x), sans-I/O.

One WebSocket carries many documents: every binary frame is one message, prefixed with the
*address* of the document it belongs to (Hocuspocus ``packages/common``, ``provider/src/types.ts``,
``server/src/MessageReceiver.ts``)::

    frame   = varString(address) · varUint(type) · payload
    address = documentName | documentName · "\\0" · sessionId   (v4 provider, sessionAwareness)

    0 Sync            varUint step (0 step 1, 1 step 2, 2 update) · varUint8Array
    1 Awareness       varUint8Array(y-protocols awareness update)
    2 Auth            C→S 0 · varString token [· varString providerVersion (v4)]
                      S→C 2 · varString scope ("read-write" | "readonly"), 1 · varString reason,
                          0 alone (asks the provider for a fresh token)
    3 QueryAwareness  (no payload)
    4 SyncReply, 6 BroadcastStateless   server↔server only; refused from a client
    5 Stateless       varString payload
    7 CLOSE           C→S nothing (the provider detached); S→C varString reason
    8 SyncStatus      S→C varUint 1 (applied) | 0 (refused)
    [0x09] Ping / [0x0A] Pong    one byte, no address (v4 providers only)

Primitives are lib0's (varUint is LEB128; strings are UTF-8 with their *byte* length), read
with the bounds-checked decoder of :mod:`captify_ws.protocol.ywebsocket`.

Malformed input raises a :class:`~captify_ws.errors.ProtocolError` carrying the close code the
Hocuspocus server uses (``common/src/CloseEvents.ts``): :class:`BadAddress` (4401) when the
address or type cannot be read, :class:`BadPayload` (4205) for the rest; a ``BadPayload`` knows
its address, so a server may close only that document.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from pycrdt import write_message

from captify_ws.errors import CloseCode, InvalidMessage, ProtocolError
from captify_ws.protocol.ywebsocket import (
    AwarenessEntry,
    _StrictDecoder,
    decode_awareness_payload,
    encode_awareness_payload,
)

MESSAGE_SYNC: Final = 0
MESSAGE_AWARENESS: Final = 1
MESSAGE_AUTH: Final = 2
MESSAGE_QUERY_AWARENESS: Final = 3
MESSAGE_SYNC_REPLY: Final = 4
MESSAGE_STATELESS: Final = 5
MESSAGE_BROADCAST_STATELESS: Final = 6
MESSAGE_CLOSE: Final = 7
MESSAGE_SYNC_STATUS: Final = 8
MESSAGE_PING: Final = 9
MESSAGE_PONG: Final = 10

SYNC_STEP1: Final = 0
SYNC_STEP2: Final = 1
SYNC_UPDATE: Final = 2

AUTH_TOKEN: Final = 0
AUTH_PERMISSION_DENIED: Final = 1
AUTH_AUTHENTICATED: Final = 2

SCOPE_READ_WRITE: Final = "read-write"
SCOPE_READ_ONLY: Final = "readonly"

#: The v4 server-to-client ping: one byte, no address (``HocuspocusProviderWebsocket.onMessage``).
PING: Final = bytes((MESSAGE_PING,))
PONG: Final = bytes((MESSAGE_PONG,))

#: A frame every provider version receives and drops: the address "" (no provider has that
#: name, and the server refuses empty names) with an awareness update of zero entries. It
#: resets the provider's 30 s silence timer (``messageReconnectTimeout``) on v2 and v3 sockets,
#: which do not know Ping.
SILENT_KEEPALIVE: Final = b"\x00" + bytes((MESSAGE_AWARENESS,)) + write_message(b"\x00")

#: ``documentName \\0 sessionId``: the v4 provider's address with ``sessionAwareness`` on.
SESSION_SEPARATOR: Final = "\0"


class BadAddress(ProtocolError):
    """The frame's address or message type cannot be read: the socket closes with 4401."""

    close_code = CloseCode.UNAUTHORIZED


class BadPayload(InvalidMessage):
    """A message that cannot be read or must not come from a client (4205 on the socket; a
    server may close only the document named by ``address`` instead)."""

    close_code = CloseCode.RESET_CONNECTION

    def __init__(self, message: str, address: str) -> None:
        super().__init__(message)
        self.address = address


def document_name(address: str) -> str:
    """The document an address names: everything before the first ``\\0``."""
    cut = address.find(SESSION_SEPARATOR)
    return address if cut < 0 else address[:cut]


# -- client → server events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pong:
    """``[0x0A]``: a v4 provider's answer to :data:`PING`."""


@dataclass(frozen=True, slots=True)
class Token:
    """Auth/Token: the provider authenticates ``address`` (first message of a document in v3+;
    later ones answer a token request). ``provider_version`` is set by v4 providers only."""

    address: str
    token: str
    provider_version: str | None


@dataclass(frozen=True, slots=True)
class SyncStep1:
    address: str
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    address: str
    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    address: str
    update: bytes


@dataclass(frozen=True, slots=True)
class Awareness:
    address: str
    entries: tuple[AwarenessEntry, ...]


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    address: str


@dataclass(frozen=True, slots=True)
class Stateless:
    """A stateless message: an application-defined string (Tiptap sends JSON)."""

    address: str
    payload: str


@dataclass(frozen=True, slots=True)
class Close:
    """The provider detached from ``address``; the socket stays open for the others."""

    address: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message type this server does not handle (ignored, as Hocuspocus does)."""

    address: str
    message_type: int


AddressedEvent = Token | SyncStep1 | SyncStep2 | SyncUpdate | Awareness | QueryAwareness \
    | Stateless | Close | Unknown
Event = Pong | AddressedEvent

_SERVER_ONLY: Final = {MESSAGE_SYNC_REPLY: "SyncReply", MESSAGE_BROADCAST_STATELESS:
                       "BroadcastStateless"}


def decode(frame: bytes) -> Event:
    """One binary frame from a provider → its event.

    Raises :class:`BadAddress` (4401) if the address or type cannot be read and
    :class:`BadPayload` (4205) if the rest cannot, or if the type is server-internal.
    """
    if frame == PONG:
        return Pong()
    decoder = _StrictDecoder(frame)
    try:
        address = decoder.read_string()
        message_type = decoder.read_var_uint()
    except InvalidMessage as exc:
        raise BadAddress(f"unreadable message address or type: {exc.message}") from None
    try:
        event = _decode_body(decoder, address, message_type)
    except InvalidMessage as exc:
        raise BadPayload(exc.message, address) from None
    return event


def _decode_body(decoder: _StrictDecoder, address: str, message_type: int) -> AddressedEvent:
    event: AddressedEvent
    if message_type == MESSAGE_SYNC:
        step = decoder.read_var_uint()
        payload = decoder.read_bytes()
        if step == SYNC_STEP1:
            event = SyncStep1(address, payload)
        elif step == SYNC_STEP2:
            event = SyncStep2(address, payload)
        elif step == SYNC_UPDATE:
            event = SyncUpdate(address, payload)
        else:
            raise InvalidMessage(f"unknown sync step {step}")
    elif message_type == MESSAGE_AWARENESS:
        event = Awareness(address, decode_awareness_payload(decoder.read_bytes()))
    elif message_type == MESSAGE_AUTH:
        kind = decoder.read_var_uint()
        if kind != AUTH_TOKEN:
            return Unknown(address, message_type)  # only servers send the other auth kinds
        token = decoder.read_string()
        # v4 appends the provider's version; anything later is a newer extension.
        return Token(address, token, decoder.read_string() if decoder.length else None)
    elif message_type == MESSAGE_QUERY_AWARENESS:
        event = QueryAwareness(address)
    elif message_type == MESSAGE_STATELESS:
        event = Stateless(address, decoder.read_string())
    elif message_type == MESSAGE_CLOSE:
        event = Close(address)
    elif message_type in _SERVER_ONLY:
        raise InvalidMessage(f"{_SERVER_ONLY[message_type]} ({message_type}) is a "
                             "server-internal message type")
    else:
        return Unknown(address, message_type)
    decoder.expect_end()
    return event


# -- server → client frames ---------------------------------------------------------------------


class FrameEncoder:
    """Frames for one address, the encoded address computed once.

    A room encodes a broadcast once per address with this and writes the same bytes to every
    member that uses that address (every provider of the document, unless v4 providers opted
    into ``sessionAwareness``).
    """

    __slots__ = ("address", "prefix")

    def __init__(self, address: str) -> None:
        self.address = address
        self.prefix = write_message(address.encode("utf-8"))

    def _frame(self, message_type: int, payload: bytes = b"") -> bytes:
        return self.prefix + bytes((message_type,)) + payload

    def sync_step1(self, state_vector: bytes) -> bytes:
        return self._frame(MESSAGE_SYNC, bytes((SYNC_STEP1,)) + write_message(state_vector))

    def sync_step2(self, update: bytes) -> bytes:
        return self._frame(MESSAGE_SYNC, bytes((SYNC_STEP2,)) + write_message(update))

    def sync_update(self, update: bytes) -> bytes:
        return self._frame(MESSAGE_SYNC, bytes((SYNC_UPDATE,)) + write_message(update))

    def awareness(self, entries: Iterable[AwarenessEntry]) -> bytes:
        return self._frame(MESSAGE_AWARENESS, write_message(encode_awareness_payload(entries)))

    def authenticated(self, read_only: bool) -> bytes:
        scope = SCOPE_READ_ONLY if read_only else SCOPE_READ_WRITE
        return self._frame(MESSAGE_AUTH, bytes((AUTH_AUTHENTICATED,)) + _string(scope))

    def permission_denied(self, reason: str) -> bytes:
        return self._frame(MESSAGE_AUTH, bytes((AUTH_PERMISSION_DENIED,)) + _string(reason))

    def token_request(self) -> bytes:
        """Auth/Token with no token: the provider calls its ``token()`` and sends a new one."""
        return self._frame(MESSAGE_AUTH, bytes((AUTH_TOKEN,)))

    def stateless(self, payload: str) -> bytes:
        return self._frame(MESSAGE_STATELESS, _string(payload))

    def close(self, reason: str) -> bytes:
        return self._frame(MESSAGE_CLOSE, _string(reason))

    def sync_status(self, applied: bool) -> bytes:
        return self._frame(MESSAGE_SYNC_STATUS, b"\x01" if applied else b"\x00")


def _string(text: str) -> bytes:
    """lib0 ``writeVarString``: the UTF-8 byte length, then the bytes."""
    return write_message(text.encode("utf-8"))
