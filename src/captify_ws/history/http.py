"""The HTTP API of document history (bearer ``CAPTIFY_WS_API_KEY``).

=================================================  ============================================
``GET /api/v1/changes?since=&limit=``              ``{changes: [entry…], next}``: every change
                                                   committed after cursor ``since`` (0: from
                                                   the start), in commit order, at most
                                                   ``limit`` (1-1000, default 100); ask again
                                                   with ``since=next``
=================================================  ============================================

A feed entry: ``{cursor, documentId, kind, at, updates, who, version}`` (``store/history.py``).
Errors answer ``{"error": …, "code": …}``: 400 bad input, 404 no such document or version,
501 a store that keeps no history, 503 the store is unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from captify_ws.errors import HistoryError, StoreError, log_with_id
from captify_ws.store.history import MAX_PAGE, HistoryStore

if TYPE_CHECKING:
    from captify_ws.server import Server

logger = logging.getLogger("captify_ws.history")

CheckKey = Callable[[Request], "Response | None"]
Endpoint = Callable[[Request], Awaitable[Response]]


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """A query parameter as an integer from ``low`` to ``high``; raises ``HistoryError``."""
    value = optional_int(request, name, low, high)
    return default if value is None else value


def optional_int(request: Request, name: str, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise HistoryError(400, f"'{name}' must be an integer") from None
    if not low <= value <= high:
        raise HistoryError(400, f"'{name}' must be from {low} to {high}")
    return value


def history_store(server: Server) -> HistoryStore:
    """The server's store as a history store; raises ``HistoryError`` (501) if it is not."""
    store = server.store
    if not isinstance(store, HistoryStore):
        raise HistoryError(501, f"the store {store.url} keeps no history")
    return store


class HistoryRoutes:
    """The routes above, for one server; ``check_key`` answers a refusal or ``None``."""

    def __init__(self, server: Server, check_key: CheckKey) -> None:
        self.server = server
        self._check_key = check_key

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/changes", self._guard(self._changes), methods=["GET"]),
        ]

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            refused = self._check_key(request)
            if refused is not None:
                return refused
            try:
                return await endpoint(request)
            except HistoryError as exc:
                return JSONResponse({"error": exc.message, "code": exc.status},
                                    status_code=exc.status)
            except StoreError as exc:
                error_id = log_with_id(logger, "history request failed", exc,
                                       level=logging.WARNING, traceback=False)
                return JSONResponse({"error": "store unavailable, try again", "code": 503,
                                     "errorId": error_id}, status_code=503)
        return guarded

    async def _changes(self, request: Request) -> Response:
        since = int_param(request, "since", 0, 0, 2**62)
        limit = int_param(request, "limit", 100, 1, MAX_PAGE)
        entries = await history_store(self.server).read_feed(since, limit)
        return JSONResponse({"changes": [entry.as_json() for entry in entries],
                             "next": entries[-1].cursor if entries else since})
