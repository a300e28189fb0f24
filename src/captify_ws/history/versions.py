"""Versions of documents: automatic, named on demand, restored as a forward change.

Automatic versions: a document edited here (by a connection or the server API) gets a version
once it has been idle for ``version_idle_s``, or ``version_max_interval_s`` after the first edit
since its last version while editing goes on, and when its room unloads with edits not yet in a
version. The store records a version only if updates were committed since the previous one
(``only_if_changed``), so instances that both saw the edits (through the broker) record it
once. Retention (``version_keep``, ``version_max_age_s``) prunes automatic versions after each
new one; named and restore versions stay until the document is deleted.

Restore (``content.restore_update``) is applied to the document's room like any edit by the
server: every client here receives it, the cluster bridge publishes it to every other instance,
the writer stores it, and a ``restore`` version records the result — restoring the version
before it undoes the restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from captify_ws.errors import HistoryError
from captify_ws.history import content
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.manager import who_label
from captify_ws.rooms.member import Origin
from captify_ws.store.history import MAX_PAGE, MAX_VERSION, HistoryStore, Version, VersionInfo

if TYPE_CHECKING:
    from captify_ws.server import Server

logger = logging.getLogger("captify_ws.history")

#: Yjs clients remembered per document between two versions (each editing session is one)
MAX_CLIENTS = 1000


class DocumentHistory:
    """The versions of one server's documents. See the module docstring."""

    def __init__(self, server: Server) -> None:
        self._server = server
        settings = server.settings
        self.idle_s = settings.version_idle_s
        self.max_interval_s = settings.version_max_interval_s
        self.keep = settings.version_keep
        self.max_age_s = settings.version_max_age_s
        #: document id → (monotonic time of the first edit since its last version, of the last)
        self._dirty: dict[str, tuple[float, float]] = {}
        #: document id → Yjs client id → who, for the edits since its last version
        self._clients: dict[str, dict[int, str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self.log_keep_s = settings.history_log_keep_s
        self._pending: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        if self.store is not None:
            server.rooms.on_load.append(self._room_loaded)
            server.rooms.on_unload.append(self._room_unloaded)

    @property
    def store(self) -> HistoryStore | None:
        store = self._server.store
        return store if isinstance(store, HistoryStore) else None

    def _history_store(self) -> HistoryStore:
        store = self.store
        if store is None:
            raise HistoryError(501, f"the store {self._server.store.url} keeps no history")
        return store

    # -- automatic versions ----------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None and self.store is not None and self.idle_s > 0:
            self._task = loop.create_task(self._run(), name="captify-versions")
        if self._pruner is None and self.store is not None and self.log_keep_s > 0:
            self._pruner = loop.create_task(self._prune_forever(), name="captify-history-prune")

    async def stop(self) -> None:
        """Take the versions that are due or pending (rooms unloading), then stop."""
        for task in (self._task, self._pruner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._pruner = None
        if self._pending:
            await asyncio.wait(self._pending, timeout=5)

    async def prune_logs(self) -> tuple[int, int]:
        """Delete feed entries and finished webhook deliveries older than
        ``history_log_keep_s`` (feed entries the webhooks have not read stay); returns how
        many of each."""
        store = self._history_store()
        before = time.time() - self.log_keep_s
        webhooks = self._server.webhooks
        keep_after = await webhooks.store.webhook_cursor() if webhooks.enabled else None
        feed = await store.prune_feed(before, keep_after)
        deliveries = await webhooks.store.prune_deliveries(before) if webhooks.enabled else 0
        return feed, deliveries

    async def _prune_forever(self) -> None:
        while True:
            try:
                await self.prune_logs()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("history logs not pruned: %s", exc)
            await asyncio.sleep(min(3600.0, max(1.0, self.log_keep_s / 10)))

    def _room_loaded(self, room: DocumentRoom) -> None:
        room.add_update_listener(self._edited)

    def _edited(self, room: DocumentRoom, update: bytes, origin: Origin) -> None:
        if origin.kind not in ("member", "server"):
            return  # the instance that accepted it versions it
        client = content.first_client(update)
        if client is not None:
            clients = self._clients.setdefault(room.document_id, {})
            if client in clients or len(clients) < MAX_CLIENTS:
                clients[client] = who_label(origin)
        if self.idle_s <= 0:
            return  # no automatic versions
        now = time.monotonic()
        first = self._dirty.get(room.document_id, (now, now))[0]
        self._dirty[room.document_id] = (first, now)
        if not self._wake.is_set():
            self._wake.set()

    def forget(self, document_id: str) -> None:
        """The document is being deleted: no automatic version of it."""
        self._dirty.pop(document_id, None)
        self._clients.pop(document_id, None)

    def _room_unloaded(self, room: DocumentRoom) -> None:
        if self._dirty.pop(room.document_id, None) is None:
            self._clients.pop(room.document_id, None)
            return
        state = room.ydoc.encode()
        task = asyncio.get_running_loop().create_task(self._take(room.document_id, state))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _run(self) -> None:
        tick = max(0.05, min(self.idle_s, self.max_interval_s) / 4)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                await asyncio.sleep(tick)
                now = time.monotonic()
                for document_id, (first, last) in list(self._dirty.items()):
                    if now - last >= self.idle_s or now - first >= self.max_interval_s:
                        del self._dirty[document_id]
                        room = self._server.rooms.get(document_id)
                        if room is not None:
                            await self._take(document_id, room.encode_state())

    async def _take(self, document_id: str, state: bytes) -> None:
        """Record an automatic version if anything was committed since the last one."""
        store = self.store
        assert store is not None
        try:
            await self._server.writer.flush()
            info = await store.add_version(document_id, state, "auto", None,
                                           only_if_changed=True,
                                           clients=self._clients.pop(document_id, None))
            if info is not None:
                self._created(info)
                await store.prune_versions(document_id, self.keep, self._oldest())
        except Exception as exc:
            logger.warning("automatic version of %r not taken: %s", document_id, exc)

    def _oldest(self) -> float:
        return time.time() - self.max_age_s if self.max_age_s > 0 else 0.0

    def _created(self, info: VersionInfo) -> None:
        logger.debug("version %d of %r (%s)", info.number, info.document_id, info.kind)

    # -- the API ---------------------------------------------------------------------------

    async def _current_state(self, document_id: str) -> bytes:
        room = self._server.rooms.get(document_id)
        if room is not None:
            return room.encode_state()
        stored = await self._server.store.load(document_id)
        if stored is None:
            raise HistoryError(404, f"no document {document_id!r}")
        return stored.as_update()

    async def create_version(self, document_id: str, name: str | None = None,
                             who: str = "server") -> VersionInfo:
        """Record the document as it is now as a named version (``name`` may be ``None``).
        Raises :class:`HistoryError` (404) for a document that does not exist."""
        store = self._history_store()
        await self._server.writer.flush()
        state = await self._current_state(document_id)
        info = await store.add_version(document_id, state, "named", name, who=[who],
                                       clients=self._clients.pop(document_id, None))
        assert info is not None
        self._dirty.pop(document_id, None)
        self._created(info)
        return info

    async def list_versions(self, document_id: str, before: int | None = None,
                            limit: int = 50) -> list[VersionInfo]:
        """Versions newest first, numbered below ``before``; at most ``limit`` (≤ 1000)."""
        return await self._history_store().list_versions(document_id, before,
                                                         max(1, min(limit, MAX_PAGE)))

    async def get_version(self, document_id: str, number: int) -> Version:
        """A version with its Yjs state; raises :class:`HistoryError` (404) if unknown
        (also for a number outside 1 … ``MAX_VERSION``, which no store can hold)."""
        store = self._history_store()
        version = await store.get_version(document_id, number) \
            if 1 <= number <= MAX_VERSION else None
        if version is None:
            raise HistoryError(404, f"document {document_id!r} has no version {number}")
        return version

    async def version_content(self, document_id: str, number: int) -> dict[str, Any]:
        """``{"text": {root: str}, "prosemirror": {root: JSON}}`` of a version."""
        version = await self.get_version(document_id, number)
        return await asyncio.to_thread(content.contents, version.state)

    async def diff(self, document_id: str, a: int, b: int) -> dict[str, Any]:
        """What changed from version ``a`` to version ``b`` (``content.diff``), who changed
        the document in between (``authors``: the union of the ``who`` of versions ``a + 1``
        … ``b``), and who typed which text (``insertedBy``: ``{who: {root: [text…]}}``, for
        the Yjs clients the versions name: attribution where it is known)."""
        before = await self.get_version(document_id, a)
        after = await self.get_version(document_id, b)
        low, high = sorted((a, b))
        authors: set[str] = set()
        clients: dict[int, str] = {}
        for info in await self._history_store().list_versions(document_id, high + 1, MAX_PAGE):
            if low < info.number <= high:
                authors.update(info.who)
                clients.update(info.clients)
        changes = await asyncio.to_thread(content.diff, before.state, after.state)
        by_client = await asyncio.to_thread(content.inserted_by_client, before.state,
                                            after.state) if a < b else {}
        inserted: dict[str, dict[str, list[str]]] = {}
        for client, runs in by_client.items():
            label = clients.get(client)
            if label is None:
                continue
            for root, texts in runs.items():
                inserted.setdefault(label, {}).setdefault(root, []).extend(texts)
        return {"from": a, "to": b, "authors": sorted(authors), "insertedBy": inserted,
                **changes}

    async def restore_version(self, document_id: str, number: int,
                              who: str = "server") -> VersionInfo:
        """Make the document equal to version ``number`` as a forward change that every
        client receives, stored before this returns, and record the result as a ``restore``
        version. The document as it was is recorded first (an automatic version): restoring
        version ``restore.number - 1`` undoes the restore. Raises :class:`HistoryError`
        (404) for an unknown version or a deleted document."""
        store = self._history_store()
        version = await self.get_version(document_id, number)
        rooms = self._server.rooms
        await self._server.writer.flush()
        async with rooms.hold(document_id) as room:
            # What the restore replaces becomes a version first, so that restoring the
            # version before the restore's undoes it. Always: edits accepted by another
            # instance may not be committed yet, so "nothing changed since the last version"
            # cannot be told from the store.
            before = await store.add_version(document_id, room.encode_state(), "auto",
                                             f"before restore of version {number}", who=[who],
                                             clients=self._clients.pop(document_id, None))
            if before is not None:
                self._created(before)
            update = content.restore_update(version.state, room.encode_state())
            room.apply_update(update, Origin("server", label=who))
            state = room.encode_state()
        await self._server.writer.flush()
        info = await store.add_version(document_id, state, "restore",
                                       f"restore of version {number}", who=[who],
                                       clients=self._clients.pop(document_id, None))
        assert info is not None
        self._dirty.pop(document_id, None)
        self._created(info)
        return info
