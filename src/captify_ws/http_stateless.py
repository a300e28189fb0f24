"""The HTTP API for Hocuspocus providers: stateless messages and token requests.

``POST /api/v1/documents/{id}/stateless`` with ``{"payload": "…"}`` (a string; add ``"userId"``
or ``"connectionId"`` to reach one user's or one connection's providers) sends a stateless
message on every instance and answers ``{"documentId", "delivered"}`` (providers reached on this
instance). ``POST /api/v1/documents/{id}/token-request`` with ``{}`` or ``{"userId": "…"}`` asks
the providers for a fresh token. Both need the API key, like the rest of ``/api/v1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from captify_ws.errors import BadRequest, InvalidMessage
from captify_ws.http_common import guard
from captify_ws.protocol.cluster import decode_stateless

if TYPE_CHECKING:
    from captify_ws.app import CaptifyApp


def stateless_routes(app: CaptifyApp) -> list[Route]:
    """The routes, bound to ``app`` (its server and API key)."""

    async def body_and_name(request: Request, suffix: str) -> tuple[dict[str, Any], str] | \
            Response:
        from captify_ws.http_documents import bad_name, document_name

        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        try:
            return body, document_name(request, suffix)
        except BadRequest as exc:
            return bad_name(exc)

    async def post_stateless(request: Request) -> Response:
        parsed = await body_and_name(request, "/stateless")
        if isinstance(parsed, Response):
            return parsed
        body, document_id = parsed
        try:
            message = decode_stateless(document_id, body)
        except InvalidMessage as exc:
            return JSONResponse({"error": exc.message}, status_code=400)
        stateless = app.server.stateless
        if message.user_id is None and message.connection_id is None:
            delivered = stateless.broadcast(document_id, message.payload)
        else:
            delivered = stateless.send(document_id, message.payload, user_id=message.user_id,
                                       connection_id=message.connection_id)
        return JSONResponse({"documentId": document_id, "delivered": delivered})

    async def post_token_request(request: Request) -> Response:
        parsed = await body_and_name(request, "/token-request")
        if isinstance(parsed, Response):
            return parsed
        body, document_id = parsed
        user_id = body.get("userId")
        if user_id is not None and not isinstance(user_id, str):
            return JSONResponse({"error": "'userId' must be a string"}, status_code=400)
        asked = app.server.request_token(document_id, user_id)
        return JSONResponse({"documentId": document_id, "asked": asked})

    return [
        Route("/api/v1/documents/{document_id:path}/stateless",
              guard(app._check_api_key, post_stateless), methods=["POST"]),
        Route("/api/v1/documents/{document_id:path}/token-request",
              guard(app._check_api_key, post_token_request), methods=["POST"]),
    ]
