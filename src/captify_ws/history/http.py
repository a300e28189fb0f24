"""The HTTP API of document history (bearer ``CAPTIFY_WS_API_KEY``).

=================================================  ============================================
``GET /api/v1/changes?since=&limit=``              ``{changes: [entry…], next}``: every change
                                                   committed after cursor ``since`` (0: from
                                                   the start), in commit order, at most
                                                   ``limit`` (1-1000, default 100); ask again
                                                   with ``since=next``; 400 for a cursor past
                                                   the feed's last (another deployment's, or
                                                   a memory store's before a restart);
                                                   410 ``{code: "too_old", oldest}`` for a
                                                   cursor below ``oldest``, the feed's first
                                                   after entries pruned by retention
                                                   (``history_log_keep_s``): never a page
                                                   that silently skips some
``GET /api/v1/documents/{id}/versions``            ``?before=&limit=`` → ``{versions: [info…],
                                                   next}`` newest first; ``next``: the
                                                   ``before`` of the next page, or null
``POST /api/v1/documents/{id}/versions``           ``{name?, who?}`` → 201 the new version's
                                                   info
``GET /api/v1/documents/{id}/versions/{n}``        the info, ``update`` (the document at that
                                                   version, one Yjs update, base64), ``text``
                                                   ``{root: str}`` and ``prosemirror``
                                                   ``{root: JSON}``
``POST /api/v1/documents/{id}/versions/{n}/restore``  ``{who?}`` → 201 the ``restore`` version
``GET /api/v1/documents/{id}/diff?from=&to=``      ``{from, to, authors, text: {root: [op…]},
                                                   prosemirror: {root: [op…]}}``

``GET /api/v1/webhooks``                           ``{endpoints, events, counts: {pending,
                                                   delivered, failed}}``
``GET /api/v1/webhooks/deliveries``                ``?status=&before=&limit=`` → the delivery
                                                   log, newest first: ``{deliveries, next}``
``POST /api/v1/webhooks/deliveries/{id}/redeliver``  pending again, due now, attempts reset
=================================================  ============================================

A version's info: ``{documentId, version, kind, name, at, who, cursor, size}``; ``who`` in a
request body labels the change (default ``api``).

A feed entry: ``{cursor, documentId, kind, at, updates, who, version}`` (``store/history.py``).
Errors answer ``{"error": …, "code": …}``: 400 bad input, 404 no such document or version,
410 a feed cursor older than the entries kept, 501 a store that keeps no history, 503 the
store is unreachable.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from captify_ws.errors import BadRequest, HistoryError, ProtocolError, StoreError, log_with_id
from captify_ws.http_common import CheckKey, Endpoint, guard, int_param, optional_int
from captify_ws.protocol import envelope
from captify_ws.store.history import MAX_ID, MAX_PAGE, MAX_VERSION, HistoryStore

if TYPE_CHECKING:
    from captify_ws.server import Server

logger = logging.getLogger("captify_ws.history")

#: the document name of an ``/api/v1/documents/<name><suffix>`` request (``app.py``)
DocumentName = Callable[[Request, str], str]
#: the longest version name or ``who`` label a request may give
MAX_LABEL = 200


def _bad_query(message: str) -> HistoryError:
    return HistoryError(400, message)


def history_store(server: Server) -> HistoryStore:
    """The server's store as a history store; raises ``HistoryError`` (501) if it is not."""
    store = server.store
    if not isinstance(store, HistoryStore):
        raise HistoryError(501, f"the store {store.url} keeps no history")
    return store


def _answer(exc: Exception) -> Response:
    """The answer to a ``HistoryError``, or 503 to a ``StoreError`` (logged with an id)."""
    if isinstance(exc, HistoryError):
        return JSONResponse({"error": exc.message, "code": exc.code, **exc.extra},
                            status_code=exc.status)
    error_id = log_with_id(logger, "history request failed", exc, level=logging.WARNING,
                           traceback=False)
    return JSONResponse({"error": "store unavailable, try again", "code": 503,
                         "errorId": error_id}, status_code=503)


class HistoryRoutes:
    """The routes above, for one server; ``check_key`` answers a refusal or ``None``."""

    def __init__(self, server: Server, check_key: CheckKey, document_name: DocumentName) -> None:
        self.server = server
        self._check_key = check_key
        self._document_name = document_name

    def routes(self) -> list[Route]:
        """The routes; put them before the generic ``/api/v1/documents/{id}`` ones."""
        versions = "/api/v1/documents/{document_id:path}/versions"
        return [
            Route("/api/v1/changes", self._guard(self._changes), methods=["GET"]),
            Route(versions, self._guard(self._list), methods=["GET"]),
            Route(versions, self._guard(self._create), methods=["POST"]),
            Route(versions + "/{number:int}", self._guard(self._get), methods=["GET"]),
            Route(versions + "/{number:int}/restore", self._guard(self._restore),
                  methods=["POST"]),
            Route("/api/v1/documents/{document_id:path}/diff", self._guard(self._diff),
                  methods=["GET"]),
            Route("/api/v1/webhooks", self._guard(self._webhooks), methods=["GET"]),
            Route("/api/v1/webhooks/deliveries", self._guard(self._deliveries),
                  methods=["GET"]),
            Route("/api/v1/webhooks/deliveries/{delivery_id:int}/redeliver",
                  self._guard(self._redeliver), methods=["POST"]),
        ]

    def _name(self, request: Request, marker: str) -> str:
        """The document name, given the last path segment that follows it."""
        path = request.url.path
        try:
            return self._document_name(request, path[path.rindex(marker):])
        except BadRequest as exc:
            raise HistoryError(400, exc.message) from None

    async def _labels(self, request: Request) -> dict[str, str | None]:
        """``name`` and ``who`` of a request body (both optional)."""
        raw = await request.body()
        if not raw.strip():
            return {"name": None, "who": "api"}
        try:
            body = envelope.parse_json(raw, max_values=self.server.settings.max_json_values)
        except ProtocolError as exc:
            raise HistoryError(400, f"body must be JSON: {exc.message}") from None
        if not isinstance(body, dict):
            raise HistoryError(400, "body must be an object")
        out: dict[str, str | None] = {"name": None, "who": "api"}
        for key in ("name", "who"):
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL:
                raise HistoryError(400, f"'{key}' must be a string of 1 to {MAX_LABEL} "
                                   "characters")
            out[key] = value
        return out

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        return guard(self._check_key, endpoint, _answer, (HistoryError, StoreError))

    async def _changes(self, request: Request) -> Response:
        since = int_param(request, "since", 0, 0, MAX_ID, _bad_query)
        limit = int_param(request, "limit", 100, 1, MAX_PAGE, _bad_query)
        store = history_store(self.server)
        entries = await store.read_feed(since, limit)
        first = await store.first_cursor()  # read after: entries pruned meanwhile count
        if since < first:
            raise HistoryError(410, f"'since' {since} is older than the feed keeps (entries "
                               f"up to {first} were pruned by history_log_keep_s): the "
                               f"oldest cursor available is {first}", "too_old",
                               {"oldest": first})
        if not entries and since > 0:
            last = await store.last_cursor()  # read after: a cursor past it was never given
            if since > last:
                raise HistoryError(400, f"'since' {since} is past the end of the feed (its "
                                   f"last cursor is {last}): ask again with since={last}")
        return JSONResponse({"changes": [entry.as_json() for entry in entries],
                             "next": entries[-1].cursor if entries else since})

    async def _list(self, request: Request) -> Response:
        document_id = self._name(request, "/versions")
        before = optional_int(request, "before", 1, MAX_VERSION, _bad_query)
        limit = int_param(request, "limit", 50, 1, MAX_PAGE, _bad_query)
        infos = await self.server.history.list_versions(document_id, before, limit)
        more = len(infos) == limit and infos[-1].number > 1
        return JSONResponse({"versions": [info.as_json() for info in infos],
                             "next": infos[-1].number if more else None})

    async def _create(self, request: Request) -> Response:
        document_id = self._name(request, "/versions")
        labels = await self._labels(request)
        info = await self.server.history.create_version(document_id, labels["name"],
                                                        labels["who"] or "api")
        return JSONResponse(info.as_json(), status_code=201)

    async def _get(self, request: Request) -> Response:
        document_id = self._name(request, "/versions")
        history = self.server.history
        number: int = request.path_params["number"]
        version = await history.get_version(document_id, number)
        readable = await history.version_content(document_id, number)
        return JSONResponse({**version.info.as_json(),
                             "update": base64.b64encode(version.state).decode(), **readable})

    async def _restore(self, request: Request) -> Response:
        document_id = self._name(request, "/versions")
        labels = await self._labels(request)
        info = await self.server.history.restore_version(
            document_id, request.path_params["number"], labels["who"] or "api")
        return JSONResponse(info.as_json(), status_code=201)

    async def _diff(self, request: Request) -> Response:
        document_id = self._name(request, "/diff")
        a = optional_int(request, "from", 1, MAX_VERSION, _bad_query)
        b = optional_int(request, "to", 1, MAX_VERSION, _bad_query)
        if a is None or b is None:
            raise HistoryError(400, "give the versions to compare: ?from=<n>&to=<n>")
        return JSONResponse(await self.server.history.diff(document_id, a, b))

    async def _webhooks(self, request: Request) -> Response:
        webhooks = self.server.webhooks
        if not webhooks.enabled:
            raise HistoryError(404, "no webhooks: set webhook_urls (and a store with history)")
        return JSONResponse({"endpoints": list(webhooks.urls),
                             "events": sorted(webhooks.events),
                             "counts": await webhooks.store.delivery_counts()})

    async def _deliveries(self, request: Request) -> Response:
        webhooks = self.server.webhooks
        if not webhooks.enabled:
            raise HistoryError(404, "no webhooks: set webhook_urls (and a store with history)")
        status = request.query_params.get("status") or None
        if status not in (None, "pending", "delivered", "failed"):
            raise HistoryError(400, "'status' must be pending, delivered or failed")
        before = optional_int(request, "before", 1, MAX_ID, _bad_query)
        limit = int_param(request, "limit", 50, 1, MAX_PAGE, _bad_query)
        found = await webhooks.store.list_deliveries(status, before,  # type: ignore[arg-type]
                                                     limit)
        return JSONResponse({"deliveries": [d.as_json() for d in found],
                             "next": found[-1].id if len(found) == limit else None})

    async def _redeliver(self, request: Request) -> Response:
        webhooks = self.server.webhooks
        if not webhooks.enabled:
            raise HistoryError(404, "no webhooks: set webhook_urls (and a store with history)")
        delivery_id: int = request.path_params["delivery_id"]
        if delivery_id > MAX_ID or not await webhooks.store.redeliver(delivery_id, time.time()):
            raise HistoryError(404, f"no delivery {delivery_id}")
        webhooks.wake()
        return JSONResponse({"id": delivery_id, "status": "pending"})
