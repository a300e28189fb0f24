"""Document history for code running in the server's process (``from captify_ws import …``)::

    from captify_ws import create_version, diff, get_version, list_versions, restore_version

    info = await create_version("doc-123", name="before the big edit")   # VersionInfo
    versions = await list_versions("doc-123")                           # newest first
    version = await get_version("doc-123", info.number)                 # .state: a Yjs update
    changes = await diff("doc-123", 1, info.number)                     # text and ProseMirror
    await restore_version("doc-123", 1)           # a forward change every client receives

Each delegates to the running server's :class:`~captify_ws.history.versions.DocumentHistory`
and raises :class:`~captify_ws.errors.HistoryError` (``status`` 404 for an unknown document or
version, 501 for a store without history).
"""

from __future__ import annotations

from typing import Any

from captify_ws.api import current_server
from captify_ws.store.history import Version, VersionInfo


async def create_version(document_id: str, name: str | None = None,
                         who: str = "server") -> VersionInfo:
    """Record the document as it is now as a version named ``name`` (may be ``None``)."""
    return await current_server().history.create_version(document_id, name, who)


async def list_versions(document_id: str, before: int | None = None,
                        limit: int = 50) -> list[VersionInfo]:
    """Versions newest first, numbered below ``before``; at most ``limit`` (≤ 1000)."""
    return await current_server().history.list_versions(document_id, before, limit)


async def get_version(document_id: str, number: int) -> Version:
    """A version: ``.info`` and ``.state``, the document at that version as one Yjs update."""
    return await current_server().history.get_version(document_id, number)


async def version_content(document_id: str, number: int) -> dict[str, Any]:
    """A version's ``{"text": {root: str}, "prosemirror": {root: JSON}}``."""
    return await current_server().history.version_content(document_id, number)


async def diff(document_id: str, a: int, b: int) -> dict[str, Any]:
    """What changed from version ``a`` to ``b``: text and ProseMirror operations, authors."""
    return await current_server().history.diff(document_id, a, b)


async def restore_version(document_id: str, number: int, who: str = "server") -> VersionInfo:
    """Make the document equal to version ``number`` as a forward change; returns the
    ``restore`` version (restoring the one before it undoes the restore)."""
    return await current_server().history.restore_version(document_id, number, who)
