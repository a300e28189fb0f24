"""The end of a closing handshake the native transport did not lead: a lingering close.

picows fails a connection by itself when its parser meets a frame it refuses (larger than
``max_message_size`` from its header: 1009; a malformed frame: 1002): it sends its close frame and
closes the socket 10 ms later, without waiting for the peer's close. A peer still sending at that
moment has bytes in our receive buffer, and a socket closed with unread data sends a reset
(RFC 1122 §4.2.2.13), which makes the peer's TCP stack drop the close frame it had not read yet:
its client sees 1006 instead of the code.

RFC 6455 §7.1.1 asks the opposite: after the close frame, read and discard until the peer's close,
then close TCP. :class:`LingeringTransport` is the socket's asyncio transport as picows sees it;
its ``close()``, while the server's close frame is sent but the peer's has not arrived, instead:
half-closes (FIN after the close frame, ``write_eof``), hands the socket to :class:`_Drain`,
which discards everything until the peer's end of stream (a WebSocket client closes its side once
both close frames are exchanged), then closes; a peer that does not end within
``close_timeout_s`` is aborted. What the drain costs: no memory (each read is dropped), at most
``close_timeout_s`` of reads.
"""

from __future__ import annotations

import asyncio
from typing import Any


class LingeringTransport:
    """An asyncio transport whose ``close()`` waits for the peer's end after a close frame.

    ``websocket`` returns the picows ``WSTransport`` (its ``close_handshake`` says whether the
    handshake is complete); every other call goes straight to ``raw``.
    """

    __slots__ = ("_drain", "_protocol", "_raw", "_timeout", "write", "writelines")

    def __init__(self, raw: asyncio.Transport, protocol: Any, close_timeout_s: float) -> None:
        self._raw = raw
        self._protocol = protocol
        self._timeout = close_timeout_s
        self._drain: _Drain | None = None
        # Bound once: picows and NativeConnection write on every frame. The other calls are
        # rare and delegate (a bound method is 64 bytes per idle connection).
        self.write = raw.write
        self.writelines = raw.writelines

    @property
    def socket_transport(self) -> asyncio.Transport:
        """The event loop's transport this one wraps."""
        return self._raw

    def abort(self) -> None:
        self._raw.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._raw.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def can_write_eof(self) -> bool:
        return self._raw.can_write_eof()

    def write_eof(self) -> None:
        self._raw.write_eof()

    def is_closing(self) -> bool:
        """True from ``close()`` on, lingering included: nothing more may be written."""
        return self._drain is not None or self._raw.is_closing()

    def close(self) -> None:
        """Close now if the closing handshake is complete (or never started); otherwise linger
        (see the module docstring)."""
        raw = self._raw
        if self._drain is not None or raw.is_closing():
            return
        if self._protocol is None:  # released: the connection is gone
            raw.close()
            return
        handshake = self._protocol.transport.close_handshake
        if handshake is None or handshake.sent is None or handshake.recv is not None:
            raw.close()
            return
        loop = asyncio.get_running_loop()
        self._drain = _Drain(self._protocol, loop.call_later(self._timeout, raw.abort))
        raw.set_protocol(self._drain)
        if raw.can_write_eof():
            raw.write_eof()  # sent once the close frame has left
        raw.resume_reading()


    def release(self) -> None:
        """The connection is gone: drop the protocol, so that nothing keeps it alive."""
        self._protocol = None


class _Drain(asyncio.Protocol):
    """Reads and drops everything until the peer's end of stream, then lets the transport
    close; tells the WebSocket protocol when the connection is gone."""

    __slots__ = ("_protocol", "_timer")

    def __init__(self, protocol: Any, timer: asyncio.TimerHandle) -> None:
        self._protocol = protocol
        self._timer = timer

    def data_received(self, data: bytes) -> None:
        """Discarded (RFC 6455 §7.1.1: nothing after the close frame is processed)."""

    def eof_received(self) -> bool:
        return False  # the transport closes itself: no data is left unread

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connection_lost(exc)
