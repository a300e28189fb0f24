"""Outgoing WebSocket frames, encoded once and written unchanged to every socket (RFC 6455 §5.2).

Server frames are not masked, so one broadcast builds one :class:`PreparedFrame` and every member
gets the very same ``bytes``. Importable from ``captify_ws.connection`` too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

OPCODE_TEXT: Final = 0x1
OPCODE_BINARY: Final = 0x2

#: Frames this large keep one copy of their payload (inside ``wire``), not two.
LARGE_FRAME: Final = 64 * 1024


def frame_header(opcode: int, length: int) -> bytes:
    """RFC 6455 §5.2 header of a final, unmasked (server → client) frame."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


class PreparedFrame:
    """A message encoded once, then written unchanged to any number of connections.

    ``wire`` is the complete WebSocket frame (server frames are not masked, so every socket gets
    the same bytes); ``asgi`` is the matching ASGI send event. Both are built on first use.
    ``yjs_update`` marks a y-websocket sync-update frame and holds its Yjs update.
    """

    __slots__ = ("_asgi", "_wire", "holders", "opcode", "payload", "yjs_update")

    def __init__(self, opcode: int, payload: bytes, yjs_update: bytes | None = None) -> None:
        self.opcode = opcode
        #: the message (a ``memoryview`` into ``wire`` once a large frame was encoded)
        self.payload: bytes | memoryview = payload
        self.yjs_update = yjs_update
        self._wire: bytes | None = None
        self._asgi: dict[str, Any] | None = None
        #: connections holding this frame while it waits (``OutboundBudget`` counts it once)
        self.holders = 0

    @classmethod
    def text(cls, text: str) -> PreparedFrame:
        return cls(OPCODE_TEXT, text.encode("utf-8"))

    @classmethod
    def binary(cls, data: bytes, *, yjs_update: bytes | None = None) -> PreparedFrame:
        return cls(OPCODE_BINARY, data, yjs_update)

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            header = frame_header(self.opcode, len(self.payload))
            self._wire = header + self.payload
            if len(self._wire) >= LARGE_FRAME:
                # One copy in memory, not two: the payload becomes a view into the frame (a
                # large reply may wait in a transport's buffer while its peer does not read).
                self.payload = memoryview(self._wire)[len(header):]
        return self._wire

    @property
    def asgi(self) -> dict[str, Any]:
        if self._asgi is None:
            if self.opcode == OPCODE_TEXT:
                self._asgi = {"type": "websocket.send", "text": str(self.payload, "utf-8")}
            else:
                self._asgi = {"type": "websocket.send", "bytes": bytes(self.payload)}
        return self._asgi

    def __len__(self) -> int:
        return len(self.payload)


class FrameBatch(list[PreparedFrame]):
    """Frames sent together, in order, to many connections (one loop turn's broadcast): their
    wire bytes are listed once for all (``wires``), not once per socket."""

    __slots__ = ("_wires",)

    def __init__(self, frames: Iterable[PreparedFrame]) -> None:
        super().__init__(frames)
        self._wires: list[bytes] | None = None

    @property
    def wires(self) -> list[bytes]:
        """Every frame's ``wire``, in order (built on first use; do not change it)."""
        if self._wires is None:
            self._wires = [frame.wire for frame in self]
        return self._wires
