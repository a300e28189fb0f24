"""The HTTP API of channels and notifications (bearer ``CAPTIFY_WS_API_KEY``), and the
JavaScript client files served at ``/client/``.

=====================================================  =========================================
``POST /api/v1/publish``                               ``{channel, event, data, state_patch?,
                                                       idempotency_key?, ephemeral?}`` →
                                                       ``{offset, epoch, duplicate, stale,
                                                       sealed}``
``POST /api/v1/publish/batch``                         ``{"publications": [...]}`` (at most
                                                       100) → ``{"results": [... or {error}]}``
``GET /api/v1/channels/{channel}/position``            ``{offset, epoch}``
``GET /api/v1/channels/{channel}/history``             ``?since=&limit=`` → ``{offset, epoch,
                                                       first_offset, publications: [pub…]}``
``POST /api/v1/notifications``                         ``{user_id, kind, payload, dedupe_key?}``
                                                       → the notification
``GET /api/v1/notifications``                          ``?user_id=&before=&limit=`` → a page
``GET /api/v1/users/{user_id}/online``                 ``{online, connections}``
=====================================================  =========================================

Errors answer ``{"error": …, "code": …}`` with 400 (4400), 403 (4403), 413 (1009), 429 (4429),
and 503 when Redis or the store is unreachable (nothing was published).
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from captify_ws.api import mailbox
from captify_ws.errors import (
    BodyTooLarge,
    BrokerError,
    ChannelError,
    CloseCode,
    StoreError,
    log_with_id,
)
from captify_ws.http_common import CheckKey, Endpoint, guard, int_param, optional_int

if TYPE_CHECKING:
    from captify_ws.server import Server

logger = logging.getLogger("captify_ws.channels")

#: Publications in one batch request.
MAX_BATCH = 100
_STATUS = {CloseCode.BAD_REQUEST: 400, CloseCode.FORBIDDEN: 403, CloseCode.NOT_FOUND: 404,
           CloseCode.MESSAGE_TOO_BIG: 413, CloseCode.RATE_LIMITED: 429,
           CloseCode.OVERLOADED: 503}
_CLIENT_FILES = {"channels.js": "text/javascript; charset=utf-8",
                 "channels.d.ts": "text/plain; charset=utf-8"}


def _error(exc: Exception) -> JSONResponse:
    if isinstance(exc, ChannelError):
        return JSONResponse({"error": exc.message, "code": exc.code},
                            status_code=_STATUS.get(exc.code, 400))
    if isinstance(exc, BodyTooLarge):  # a chunked body grew past the limit while read
        return JSONResponse({"error": str(exc), "code": CloseCode.MESSAGE_TOO_BIG},
                            status_code=413)
    error_id = log_with_id(logger, "channel request failed", exc, level=logging.WARNING,
                           traceback=False)
    return JSONResponse({"error": "temporarily unavailable, try again", "code": 1013,
                         "errorId": error_id}, status_code=503)


def _bad_query(message: str) -> ChannelError:
    return ChannelError(CloseCode.BAD_REQUEST, message)


class ChannelRoutes:
    """The routes above, for one server; ``check_key`` answers a refusal or ``None``."""

    def __init__(self, server: Server, check_key: CheckKey) -> None:
        self.server = server
        self._check_key = check_key

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/publish", self._guard(self._publish), methods=["POST"]),
            Route("/api/v1/publish/batch", self._guard(self._publish_batch), methods=["POST"]),
            Route("/api/v1/channels/{channel:path}/position", self._guard(self._position),
                  methods=["GET"]),
            Route("/api/v1/channels/{channel:path}/history", self._guard(self._history),
                  methods=["GET"]),
            Route("/api/v1/notifications", self._guard(self._notify), methods=["POST"]),
            Route("/api/v1/notifications", self._guard(self._notifications), methods=["GET"]),
            Route("/api/v1/users/{user_id:path}/online", self._guard(self._online),
                  methods=["GET"]),
            Route("/client/{name}", self._client_file, methods=["GET", "HEAD"]),
        ]

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        return guard(self._check_key, endpoint, _error, (ChannelError, BrokerError, StoreError))

    @staticmethod
    async def _body(request: Request) -> Any:
        try:
            return await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ChannelError(CloseCode.BAD_REQUEST, "body must be JSON") from None

    async def _publish_one(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ChannelError(CloseCode.BAD_REQUEST, "a publication must be a JSON object")
        unknown = set(body) - {"channel", "event", "data", "state_patch", "idempotency_key",
                               "ephemeral"}
        if unknown:
            raise ChannelError(CloseCode.BAD_REQUEST, f"unknown fields: {sorted(unknown)}")
        ephemeral = body.get("ephemeral", False)
        if not isinstance(ephemeral, bool):
            raise ChannelError(CloseCode.BAD_REQUEST, "'ephemeral' must be true or false")
        result = await self.server.channel_services.hub.publish(
            body.get("channel"), body.get("event"), body.get("data"),  # type: ignore[arg-type]
            state_patch=body.get("state_patch"), idempotency_key=body.get("idempotency_key"),
            ephemeral=ephemeral)
        if ephemeral:
            return {"offset": None, "epoch": None, "ephemeral": True}
        return {"offset": result.offset, "epoch": result.epoch,
                "duplicate": result.duplicate, "stale": result.stale, "sealed": result.sealed}

    async def _publish(self, request: Request) -> Response:
        return JSONResponse(await self._publish_one(await self._body(request)))

    async def _publish_batch(self, request: Request) -> Response:
        body = await self._body(request)
        items = body.get("publications") if isinstance(body, dict) else None
        if not isinstance(items, list) or not 0 < len(items) <= MAX_BATCH:
            raise ChannelError(CloseCode.BAD_REQUEST, f"body must be {{\"publications\": "
                               f"[…]}} with 1 to {MAX_BATCH} publications")
        results: list[dict[str, Any]] = []
        for item in items:  # in order: publications to one channel keep their order
            try:
                results.append(await self._publish_one(item))
            except ChannelError as exc:
                results.append({"error": exc.message, "code": exc.code})
        return JSONResponse({"results": results})

    async def _position(self, request: Request) -> Response:
        read = await self.server.channel_services.hub.read(request.path_params["channel"], 0, 0)
        return JSONResponse({"offset": read.position.offset, "epoch": read.position.epoch})

    async def _history(self, request: Request) -> Response:
        hub = self.server.channel_services.hub
        cap = hub.limits.recovery_max_publications
        since = int_param(request, "since", 0, 0, (1 << 53) - 1, _bad_query)
        limit = int_param(request, "limit", min(100, cap), 1, max(1, cap), _bad_query)
        read = await hub.read(request.path_params["channel"], since, limit, partial=True)
        body = ('{"offset":' + str(read.position.offset) + ',"epoch":'
                + json.dumps(read.position.epoch) + ',"first_offset":' + str(read.first_offset)
                + ',"publications":[' + ",".join(frame for _, frame in read.publications)
                + "]}")
        return Response(body, media_type="application/json")

    async def _notify(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict) or "user_id" not in body or "kind" not in body:
            raise ChannelError(CloseCode.BAD_REQUEST, 'body must be {"user_id", "kind", '
                               '"payload", "dedupe_key"?}')
        item = await mailbox(self.server).notify_user(
            body["user_id"], body["kind"], body.get("payload"),
            dedupe_key=body.get("dedupe_key"))
        return JSONResponse({"user_id": item.user_id, **item.to_json()})

    async def _notifications(self, request: Request) -> Response:
        user_id = request.query_params.get("user_id")
        if not user_id:
            raise ChannelError(CloseCode.BAD_REQUEST, "'user_id' is required")
        before = optional_int(request, "before", 1, 1 << 62, _bad_query)
        limit = int_param(request, "limit", 20, 1, 500, _bad_query)
        return JSONResponse(await mailbox(self.server).page(user_id, before, limit))

    async def _online(self, request: Request) -> Response:
        count = await self.server.channel_services.online.count(request.path_params["user_id"])
        return JSONResponse({"online": count > 0, "connections": count})

    async def _client_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        media_type = _CLIENT_FILES.get(name)
        if media_type is None:
            return JSONResponse({"error": f"no client file {name!r}"}, status_code=404)
        text = (resources.files("captify_ws") / "static" / name).read_text()
        return Response(text, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=300",
                                 "Access-Control-Allow-Origin": "*"})
