"""The documents HTTP API (``/api/v1/documents…``, ``/api/v1/connections``): steps, Yjs
updates, revocation, list, read, delete, counts. Every route needs the API key. Document names
come percent-decoded exactly once from the raw path, as on WebSocket paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    Response,
)
from starlette.routing import Route

from captify_ws.errors import (
    BadRequest,
    InvalidMessage,
    ProtocolError,
    QuotaExceeded,
    StaleVersion,
    StoreError,
    log_with_id,
)
from captify_ws.http_common import CheckKey, Endpoint, guard
from captify_ws.protocol import envelope, names
from captify_ws.protocol.cluster import decode_steps_publication
from captify_ws.server import Server
from captify_ws.transport.asgi import raw_path
from captify_ws.types import Scope

logger = logging.getLogger("captify_ws.app")

_STEPS_STATUS: Final = {"schema_mismatch": 422, "quota_exceeded": 413}

_DOCUMENTS: Final = "/api/v1/documents/"



def route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def document_name(request: Request, suffix: str = "") -> str:
    """The document name of an ``/api/v1/documents/<name>…`` request, percent-decoded exactly
    once from the raw path, like WebSocket paths (``protocol/names.py``); raises
    :class:`~captify_ws.errors.BadRequest` for a name that cannot be one."""
    scope = request.scope
    raw = raw_path({**scope, "path": route_path(scope)})
    if raw.startswith(_DOCUMENTS) and raw.endswith(suffix) and \
            len(raw) >= len(_DOCUMENTS) + len(suffix):
        return names.name_from_path(raw[len(_DOCUMENTS):len(raw) - len(suffix)])
    return names.check_name(request.path_params["document_id"])


def bad_name(exc: BadRequest) -> Response:
    return JSONResponse({"error": exc.message, "code": "bad_document_name"}, status_code=400)


class DocumentRoutes:
    """The routes of the documents API, for :class:`~captify_ws.app.CaptifyApp`."""

    def __init__(self, server: Server, check_api_key: CheckKey,
                 json_body: Callable[[bytes], Any]) -> None:
        self.server = server
        self._check_api_key = check_api_key
        self._json_body = json_body

    def _gated(self, endpoint: Endpoint) -> Endpoint:
        return guard(self._check_api_key, endpoint)

    def routes(self) -> list[Route]:
        """The documents API, in the order the app mounts it (the first three before the
        stateless routes of the same prefix)."""
        return [
            Route("/api/v1/documents/{document_id:path}/steps", self._gated(self._post_steps),
                  methods=["POST"]),
            Route("/api/v1/documents/{document_id:path}/updates", self._gated(self._post_update),
                  methods=["POST"]),
            Route("/api/v1/documents/{document_id:path}/revoke", self._gated(self._post_revoke),
                  methods=["POST"]),
            Route("/api/v1/documents", self._gated(self._list_documents), methods=["GET"]),
            Route("/api/v1/documents/{document_id:path}", self._gated(self._get_document),
                  methods=["GET"]),
            Route("/api/v1/documents/{document_id:path}", self._gated(self._delete_document),
                  methods=["DELETE"]),
            Route("/api/v1/connections", self._gated(self._get_connections), methods=["GET"]),
        ]

    async def _post_steps(self, request: Request) -> Response:
        try:
            document_id = document_name(request, "/steps")
        except BadRequest as exc:
            return bad_name(exc)
        try:
            body: Any = self._json_body(await request.body())
        except ProtocolError as exc:
            return JSONResponse({"error": f"body must be JSON: {exc.message}"}, status_code=400)
        try:
            steps = decode_steps_publication(document_id, body)
        except InvalidMessage as exc:
            return JSONResponse({"error": exc.message}, status_code=400)
        if steps.client_id is not None:
            delivered = await self.server.broadcast_steps_to_client(
                document_id, steps.client_id, steps.steps, steps.change_id)
            return JSONResponse({"documentId": document_id, "delivered": delivered})
        try:
            result = await self.server.broadcast_steps(document_id, steps.steps,
                                                       steps.change_id, steps.version)
        except StaleVersion as exc:
            return JSONResponse({"error": str(exc), "code": "version_behind",
                                 "documentId": document_id, "version": exc.current,
                                 "applied": False, "duplicate": False}, status_code=409)
        except ProtocolError as exc:
            data = getattr(exc, "data", None) or {}
            return JSONResponse({"error": exc.message, **data},
                                status_code=_STEPS_STATUS.get(str(data.get("code")), 400))
        return JSONResponse({"documentId": document_id, "version": result.version,
                             "applied": result.applied, "duplicate": result.duplicate,
                             "yjs": result.yjs})

    async def _post_update(self, request: Request) -> Response:
        try:
            document_id = document_name(request, "/updates")
        except BadRequest as exc:
            return bad_name(exc)
        body = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                update = envelope.decode_bytes_field(self._json_body(body).get("update"),
                                                     "update")
            except (AttributeError, ProtocolError) as exc:
                return JSONResponse({"error": f"body must be {{\"update\": base64}}: {exc}"},
                                    status_code=400)
        else:
            update = body
        try:
            await self.server.apply_update(document_id, update)
        except QuotaExceeded as exc:
            return JSONResponse({"error": exc.message, **exc.data}, status_code=413)
        except InvalidMessage as exc:
            return JSONResponse({"error": exc.message}, status_code=400)
        except StoreError as exc:
            error_id = log_with_id(logger, f"update for {document_id!r} not stored", exc,
                                   level=logging.WARNING, traceback=False)
            return JSONResponse({"error": "not stored: the store is unavailable, try again",
                                 "errorId": error_id}, status_code=503)
        return JSONResponse({"documentId": document_id, "stored": True})

    async def _post_revoke(self, request: Request) -> Response:
        try:
            body: Any = self._json_body(await request.body())
        except ProtocolError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("userId"), str) or \
                body.get("to", "none") not in ("none", "read"):
            return JSONResponse({"error": 'body must be {"userId": "...", '
                                 '"to": "none" | "read"}'}, status_code=400)
        try:
            document_id = document_name(request, "/revoke")
        except BadRequest as exc:
            return bad_name(exc)
        changed = await self.server.revoke(document_id, body["userId"], body.get("to", "none"))
        return JSONResponse({"documentId": document_id, "userId": body["userId"],
                             "to": body.get("to", "none"), "connections": changed})

    async def _list_documents(self, request: Request) -> Response:
        return JSONResponse({"documents": await self.server.list_documents()})

    async def _get_document(self, request: Request) -> Response:
        try:
            document_id = document_name(request)
        except BadRequest as exc:
            return bad_name(exc)
        state = await self.server.get_document(document_id)
        if state is None:
            return JSONResponse({"error": f"no document {document_id!r}"}, status_code=404)
        if "application/octet-stream" in request.headers.get("accept", ""):
            return Response(state, media_type="application/octet-stream")
        return JSONResponse({"documentId": document_id, "update": envelope.b64(state)})

    async def _delete_document(self, request: Request) -> Response:
        try:
            document_id = document_name(request)
        except BadRequest as exc:
            return bad_name(exc)
        deleted = await self.server.delete_document(document_id)
        return JSONResponse({"deleted": deleted}, status_code=200 if deleted else 404)

    async def _get_connections(self, request: Request) -> Response:
        document_id = request.query_params.get("documentId")
        handler = request.query_params.get("handler")
        if (document_id is None) == (handler is None):
            return JSONResponse({"error": "pass exactly one of ?documentId= or ?handler="},
                                status_code=400)
        if handler is not None and handler not in self.server.connections:
            return JSONResponse({"error": f"no handler named {handler!r}"}, status_code=404)
        count = self.server.get_connection_count(document_id=document_id, handler=handler)
        return JSONResponse({"count": count})
