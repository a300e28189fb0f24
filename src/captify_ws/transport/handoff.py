"""Document affinity across ``--workers``: a WebSocket moves to the worker that owns its document.

With ``--workers N`` the kernel spreads accepted connections over the workers (SO_REUSEPORT)
without knowing which document a connection is for, so the clients of one document land on
different workers and every edit crosses the broker: published by one worker, read, decoded and
integrated again by the other. Here, once a connection's request head is read and before the
upgrade is answered, a worker that accepted a WebSocket whose request names its document
(``handler.affinity(subpath, query)``; ``/ws/fabric/<name>`` and ``/ws/fabric?documentId=``)
sends the socket to the document's owner, ``crc32(document) mod N``, with the bytes read so
far; the owner serves it as if it had accepted it. The socket itself travels (``SCM_RIGHTS``,
unix(7)): the client sees one connection and one handshake.

Channels: before starting the workers the supervisor makes one ``SOCK_SEQPACKET`` socket pair
per worker; worker *i* reads pair *i*'s first end and every worker writes to every pair's
second end (one message = one connection, at most :data:`MAX_MESSAGE` bytes). The supervisor
keeps them open, so a worker started again reads what was queued for its index.

Bounds:

* an owner already serving ``limit`` connections of the document (``worker_affinity_limit``)
  sends the socket back to the worker it came from, to stay there: a document with a large
  audience has its copies written by every core;
* a worker sends connections only to workers that said they read their channel (a message
  when a worker starts reading, and one when it stops); a send that would block (the owner is
  overloaded, or died without saying so) leaves the connection where it is, and so does a
  head larger than a message.

Where a connection is served never decides what its client receives: the broker connects the
workers as before, so a connection that stayed (a hot document, a multiplexed Hocuspocus
socket, a full channel) is served exactly as without affinity, at the broker's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Final

logger = logging.getLogger("captify_ws.transport")

#: The environment variable through which ``--workers`` gives a worker its channels:
#: ``<index>/<count>/<receiving fd>/<sending fd of worker 0>,<of worker 1>,…``.
ENVIRONMENT: Final = "CAPTIFY_WS_HANDOFF"
#: The largest message: a 2-byte header and the bytes read from the socket so far (the request
#: head, bounded by ``http_max_head_bytes``, and whatever the client sent after it in the same
#: read). A connection whose bytes do not fit stays where it is.
MAX_MESSAGE: Final = 128 * 1024
#: Messages received per loop turn; the rest wait for the next turn (other sockets go first).
PER_TURN: Final = 64

#: What a message is (the first header byte; the second is the sender's index): a connection
#: for its document's owner, a connection sent back to stay, and, with no connection, a worker
#: that started reading its channel (answered with READY_TOO: a worker started again learns
#: who reads), or stopped.
TO_OWNER: Final = 0
STAY: Final = 1
READY: Final = 2
LEAVING: Final = 3
READY_TOO: Final = 4
#: ``origin`` values besides a worker's index: accepted by this worker's own listener, or sent
#: back to stay here.
HERE: Final = -1
RETURNED: Final = -2

Adopt = Callable[[socket.socket, bytes, int], None]


def owner_of(document: str, count: int) -> int:
    """The index (``0 … count-1``) of the worker that owns ``document``; every worker computes
    the same one (CRC-32 of its UTF-8 bytes, surrogates kept)."""
    return zlib.crc32(document.encode("utf-8", "surrogatepass")) % count


def make_channels(count: int) -> tuple[list[socket.socket], list[dict[str, str]], list[int]]:
    """For the supervisor: the sockets to keep open, the environment entry of each worker and
    the file descriptors to pass to every worker (``subprocess.Popen(pass_fds=…)``)."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(count)]
    for reading, writing in pairs:
        reading.setblocking(False)
        writing.setblocking(False)
    senders = ",".join(str(writing.fileno()) for _, writing in pairs)
    environments = [{ENVIRONMENT: f"{index}/{count}/{reading.fileno()}/{senders}"}
                    for index, (reading, _) in enumerate(pairs)]
    fds = [sock.fileno() for pair in pairs for sock in pair]
    return [sock for pair in pairs for sock in pair], environments, fds


class Handoff:
    """One worker's end of the channels; see the module docstring."""

    def __init__(self, index: int, count: int, receiving: socket.socket,
                 sending: list[socket.socket], limit: int) -> None:
        self.index = index
        self.count = count
        self.limit = limit
        self._receiving = receiving
        self._sending = sending
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adopt: Adopt | None = None
        #: which workers read their channel (told by READY and LEAVING): only those are sent
        #: connections, so none waits in the channel of a worker still starting
        self.ready = [False] * count
        self.ready[index] = True
        #: by outcome: "sent" to the owner, "returned" to stay with the worker it came from,
        #: "received", "kept" here (a send would block); the server's Stats dict when served
        self.counts: dict[str, int] = {}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], limit: int) -> Handoff | None:
        """The channels ``--workers`` gave this process, or ``None`` (one process, or
        ``limit`` 0: affinity off). Raises ``ValueError`` for a malformed entry, ``OSError``
        for a file descriptor that is not a socket."""
        entry = environ.get(ENVIRONMENT)
        if not entry or limit <= 0:
            return None
        try:
            index, count, receiving, *senders = (
                int(part) for part in entry.replace(",", "/").split("/"))
        except ValueError:
            index = count = -1
        if not 0 <= index < count or len(senders) != count:
            raise ValueError(f"{ENVIRONMENT}={entry!r}: not index/count/fd/fd,fd,…")
        return cls(index, count, socket.socket(fileno=receiving),
                   [socket.socket(fileno=fd) for fd in senders], limit)

    def start(self, adopt: Adopt) -> None:
        """Receive connections for this worker: ``adopt(sock, received, origin)`` for each."""
        self._loop = asyncio.get_running_loop()
        self._adopt = adopt
        self._loop.add_reader(self._receiving.fileno(), self._readable)
        self._tell_others(READY)

    def stop(self) -> None:
        """Stop receiving, and tell the other workers to send nothing more (what is queued
        already waits for the next worker with this index)."""
        if self._loop is not None:
            self._loop.remove_reader(self._receiving.fileno())
            self._loop = None
            self._tell_others(LEAVING)

    def _tell_others(self, kind: int) -> None:
        for other in range(self.count):
            if other != self.index:
                self._tell(other, kind)

    def _tell(self, other: int, kind: int) -> None:
        with contextlib.suppress(OSError):  # full: that worker is not reading anyway
            self._sending[other].send(bytes((kind, self.index)), socket.MSG_DONTWAIT)

    def close(self) -> None:
        """Stop receiving and close this process's ends of the channels."""
        self.stop()
        for sock in (self._receiving, *self._sending):
            sock.close()

    def route(self, transport: Any, received: bytes, document: str, origin: int,
              serving: Callable[[str], int]) -> bool:
        """Whether the connection on ``transport`` (its request head read; ``received`` the
        bytes so far) was sent to another worker, and closed here. ``serving(document)`` is
        how many connections of the document this worker serves."""
        if origin == RETURNED:
            return False
        if origin == HERE:
            owner = owner_of(document, self.count)
            if owner == self.index:
                return False
            if not self.ready[owner]:
                self._count("kept")
                return False
            return self._send(transport, received, owner, TO_OWNER)
        if serving(document) < self.limit or not self.ready[origin]:
            return False
        return self._send(transport, received, origin, STAY)

    def _send(self, transport: Any, received: bytes, to: int, kind: int) -> bool:
        sock = transport.get_extra_info("socket")
        if sock is None or len(received) + 2 > MAX_MESSAGE:
            return False
        try:
            socket.send_fds(self._sending[to], [bytes((kind, self.index)), received],
                            [sock.fileno()], socket.MSG_DONTWAIT)
        except OSError:  # full (BlockingIOError), or the channel is gone: serve it here
            self._count("kept")
            return False
        self._count("sent" if kind == TO_OWNER else "returned")
        # The socket is in the message (a reference of its own): closing ours leaves the
        # connection open, and nothing was written to it.
        transport.close()
        return True

    def _heard(self, other: int, kind: int) -> None:
        if kind in (READY, READY_TOO):
            self.ready[other] = True
            if kind == READY:
                self._tell(other, READY_TOO)
        elif kind == LEAVING:
            self.ready[other] = False

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def _readable(self) -> None:
        adopt = self._adopt
        assert adopt is not None
        for _ in range(PER_TURN):
            try:
                data, fds, flags, _ = socket.recv_fds(self._receiving, MAX_MESSAGE, 1)
            except BlockingIOError:
                return
            except OSError as exc:
                logger.error("worker handoff channel failed, no longer receiving: %s", exc)
                self.stop()
                return
            if not fds:
                if len(data) == 2 and data[1] < self.count and data[1] != self.index:
                    self._heard(data[1], data[0])
                continue
            if len(data) < 2 or data[1] >= self.count or \
                    flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                for fd in fds:
                    os.close(fd)
                continue
            self._count("received")
            sock = socket.socket(fileno=fds[0])
            try:
                adopt(sock, data[2:], RETURNED if data[0] == STAY else data[1])
            except Exception:
                logger.exception("adopting a connection from worker %d failed", data[1])
                sock.close()
