"""The ASGI application: captify-ws routes, and the product's own app for everything else.

``create_app(settings, http_app=None)`` returns a plain ASGI app that any ASGI server can run or a
FastAPI/Starlette app can mount. It serves:

* WebSockets on the registered handler paths (``/ws/fabric`` …); other ``/ws/…`` paths are
  refused with HTTP 404 before any upgrade;
* ``GET /healthz``, and the HTTP API under ``/api/v1`` (bearer ``CAPTIFY_WS_API_KEY``);
* everything else goes to ``http_app`` (the seed's "Next.js app on the same port"), or 404.

The server starts on the ASGI lifespan event, or on the first request when the app is mounted
somewhere that does not forward lifespan events (Starlette's ``Mount``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.routing import Route, Router

from captify_ws.admin import AdminPages
from captify_ws.config import Settings
from captify_ws.demo import DemoPages
from captify_ws.errors import (
    BadRequest,
    InvalidMessage,
    ProtocolError,
    QuotaExceeded,
    StaleVersion,
    StoreError,
    log_with_id,
)
from captify_ws.history.http import HistoryRoutes
from captify_ws.http_agent_sessions import AgentSessionRoutes
from captify_ws.http_agents import AgentRoutes
from captify_ws.http_channels import ChannelRoutes
from captify_ws.http_stateless import stateless_routes
from captify_ws.protocol import envelope, names
from captify_ws.server import Server
from captify_ws.server_metrics import build_registry
from captify_ws.transport.asgi import deny, raw_path, serve_websocket
from captify_ws.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("captify_ws.app")

#: Paths captify-ws answers itself; everything else goes to the user's http_app.
OWN_PREFIXES: Final = ("/healthz", "/readyz", "/metrics", "/admin", "/api/v1/", "/client/")
#: HTTP status of refused steps, by the refusal's code (else 400)
_STEPS_STATUS: Final = {"schema_mismatch": 422, "quota_exceeded": 413}
_DOCUMENTS: Final = "/api/v1/documents/"


class _BodyTooLarge(Exception):
    """A request body past ``max_message_size`` (answered 413)."""


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def _document_name(request: Request, suffix: str = "") -> str:
    """The document name of an ``/api/v1/documents/<name>…`` request, percent-decoded exactly
    once from the raw path, like WebSocket paths (``protocol/names.py``); raises
    :class:`~captify_ws.errors.BadRequest` for a name that cannot be one."""
    scope = request.scope
    raw = raw_path({**scope, "path": _route_path(scope)})
    if raw.startswith(_DOCUMENTS) and raw.endswith(suffix) and \
            len(raw) >= len(_DOCUMENTS) + len(suffix):
        return names.name_from_path(raw[len(_DOCUMENTS):len(raw) - len(suffix)])
    return names.check_name(request.path_params["document_id"])


def _bad_name(exc: BadRequest) -> Response:
    return JSONResponse({"error": exc.message, "code": "bad_document_name"}, status_code=400)


class CaptifyApp:
    """The ASGI callable returned by :func:`create_app`."""

    def __init__(self, server: Server, http_app: ASGIApp | None = None) -> None:
        self.server = server
        self.http_app = http_app
        self._registry: CollectorRegistry | None = None
        self._router = Router(routes=[
            Route("/healthz", self._healthz, methods=["GET", "HEAD"]),
            Route("/readyz", self._readyz, methods=["GET", "HEAD"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            *AdminPages(server).routes(),
            *HistoryRoutes(server, self._check_api_key, _document_name).routes(),
            Route("/api/v1/documents/{document_id:path}/steps", self._post_steps,
                  methods=["POST"]),
            Route("/api/v1/documents/{document_id:path}/updates", self._post_update,
                  methods=["POST"]),
            Route("/api/v1/documents/{document_id:path}/revoke", self._post_revoke,
                  methods=["POST"]),
            *stateless_routes(self),
            Route("/api/v1/documents", self._list_documents, methods=["GET"]),
            Route("/api/v1/documents/{document_id:path}", self._get_document,
                  methods=["GET"]),
            Route("/api/v1/documents/{document_id:path}", self._delete_document,
                  methods=["DELETE"]),
            Route("/api/v1/connections", self._get_connections, methods=["GET"]),
            *ChannelRoutes(server, self._check_api_key).routes(),
            *AgentRoutes(server, self._check_api_key).routes(),
            *AgentSessionRoutes(server, self._check_api_key).routes(),
            *(DemoPages().routes() if server.settings.demo_enabled else ()),
        ])
        demo = server.settings.demo_enabled
        self._own_prefixes = OWN_PREFIXES + (("/demo/",) if demo else ())
        self._own_paths = frozenset(("/demo",) if demo else ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if not self.server.started:
            await self.server.start()
        path = _route_path(scope)
        if kind == "websocket":
            if path.startswith("/ws/") or self.server.route(path) is not None:
                await serve_websocket(self.server, {**scope, "path": path}, receive, send)
            elif self.http_app is not None:
                await self.http_app(scope, receive, send)
            else:
                await receive()
                await deny(scope, send, 404, f"no WebSocket handler for {path}")
        elif kind == "http":
            if path.startswith(self._own_prefixes) or path in self._own_paths:
                await self._own_http(scope, receive, send)
            elif self.http_app is not None:
                await self.http_app(scope, receive, send)
            else:
                await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)

    async def _own_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Our own routes: a body larger than ``max_message_size`` is refused (413), and an
        error nobody expected answers 500 with an error id, its detail only in the log."""
        limit = self.server.settings.max_message_size
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            length = int(dict(scope.get("headers", ())).get(b"content-length", b"0"))
        except ValueError:
            length = 0
        try:
            if length > limit:
                raise _BodyTooLarge
            await self._router(scope, bounded_receive, tracking_send)
        except ClientDisconnect:
            return  # the client went away, or its body timed out (answered 408 already)
        except _BodyTooLarge:
            if not started:
                await JSONResponse({"error": f"body larger than {limit} bytes"},
                                   status_code=413)(scope, receive, send)
        except Exception as exc:
            error_id = log_with_id(logger, f"{scope.get('method')} {scope['path']} failed", exc)
            if not started:
                await JSONResponse({"error": "internal error", "errorId": error_id},
                                   status_code=500)(scope, receive, send)

    def _json_body(self, body: bytes) -> Any:
        """A request body as JSON within the parse limits; raises ``ProtocolError``."""
        return envelope.parse_json(body, max_values=self.server.settings.max_json_values)

    # -- lifespan --------------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start and stop the server, and pass the events on to ``http_app`` if it has any."""
        inner = AppLifespan(self.http_app, scope) if self.http_app is not None else None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.server.start()
                    if inner is not None:
                        await inner.startup()
                except Exception as exc:
                    logger.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if inner is not None:
                    await inner.shutdown()
                await self.server.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP API --------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"},
                            headers={"X-Captify-Instance": self.server.instance_id})

    async def _readyz(self, request: Request) -> Response:
        reasons = await self.server.readiness()
        if reasons:
            return JSONResponse({"status": "unavailable", "reasons": reasons}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def _metrics(self, request: Request) -> Response:
        """Prometheus exposition; with ``metrics_token`` only for ``Authorization: Bearer
        <token>`` (else 401), compared in constant time."""
        token = self.server.settings.metrics_token
        if token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                      token.encode()):
                return JSONResponse({"error": "send 'Authorization: Bearer "
                                     "<CAPTIFY_WS_METRICS_TOKEN>'"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        if self._registry is None:
            self._registry = build_registry(self.server)
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    def _check_api_key(self, request: Request) -> Response | None:
        key = self.server.settings.api_key
        if not key:
            return JSONResponse({"error": "the HTTP API is off; set CAPTIFY_WS_API_KEY (or "
                                 "`captify-ws serve --api-key KEY`) to turn it on"},
                                status_code=404)
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                  key.encode()):
            return JSONResponse({"error": "missing or wrong API key: send "
                                 "'Authorization: Bearer <CAPTIFY_WS_API_KEY>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    async def _post_steps(self, request: Request) -> Response:
        refused = self._check_api_key(request)
        if refused is not None:
            return refused
        try:
            document_id = _document_name(request, "/steps")
        except BadRequest as exc:
            return _bad_name(exc)
        try:
            body: Any = self._json_body(await request.body())
        except ProtocolError as exc:
            return JSONResponse({"error": f"body must be JSON: {exc.message}"}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("steps"), list):
            return JSONResponse({"error": "body must be an object with a 'steps' list"},
                                status_code=400)
        if "changeId" not in body:
            return JSONResponse({"error": "missing 'changeId'"}, status_code=400)
        client_id = body.get("clientID")
        if client_id is not None and not isinstance(client_id, str):
            return JSONResponse({"error": "'clientID' must be a string"}, status_code=400)
        version = body.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            return JSONResponse({"error": "'version' must be an integer"}, status_code=400)
        if client_id is not None:
            delivered = await self.server.broadcast_steps_to_client(
                document_id, client_id, body["steps"], body["changeId"])
            return JSONResponse({"documentId": document_id, "delivered": delivered})
        try:
            result = await self.server.broadcast_steps(document_id, body["steps"],
                                                       body["changeId"], version)
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
        refused = self._check_api_key(request)
        if refused is not None:
            return refused
        try:
            document_id = _document_name(request, "/updates")
        except BadRequest as exc:
            return _bad_name(exc)
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
        refused = self._check_api_key(request)
        if refused is not None:
            return refused
        try:
            body: Any = self._json_body(await request.body())
        except ProtocolError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("userId"), str) or \
                body.get("to", "none") not in ("none", "read"):
            return JSONResponse({"error": 'body must be {"userId": "...", '
                                 '"to": "none" | "read"}'}, status_code=400)
        try:
            document_id = _document_name(request, "/revoke")
        except BadRequest as exc:
            return _bad_name(exc)
        changed = await self.server.revoke(document_id, body["userId"], body.get("to", "none"))
        return JSONResponse({"documentId": document_id, "userId": body["userId"],
                             "to": body.get("to", "none"), "connections": changed})

    async def _list_documents(self, request: Request) -> Response:
        refused = self._check_api_key(request)
        if refused is not None:
            return refused
        return JSONResponse({"documents": await self.server.list_documents()})

    async def _get_document(self, request: Request) -> Response:
        refused = self._check_api_key(request)
        if refused is not None:
            return refused
        try:
            document_id = _document_name(request)
        except BadRequest as exc:
            return _bad_name(exc)
        state = await self.server.get_document(document_id)
        if state is None:
            return JSONResponse({"error": f"no document {document_id!r}"}, status_code=404)
        if "application/octet-stream" in request.headers.get("accept", ""):
            return Response(state, media_type="application/octet-stream")
        return JSONResponse({"documentId": document_id, "update": envelope.b64(state)})

    async def _delete_document(self, request: Request) -> Response:
        refused = self._check_api_key(request)
        if refused is not None:
            return refused
        try:
            document_id = _document_name(request)
        except BadRequest as exc:
            return _bad_name(exc)
        deleted = await self.server.delete_document(document_id)
        return JSONResponse({"deleted": deleted}, status_code=200 if deleted else 404)

    async def _get_connections(self, request: Request) -> Response:
        refused = self._check_api_key(request)
        if refused is not None:
            return refused
        document_id = request.query_params.get("documentId")
        handler = request.query_params.get("handler")
        if (document_id is None) == (handler is None):
            return JSONResponse({"error": "pass exactly one of ?documentId= or ?handler="},
                                status_code=400)
        if handler is not None and handler not in self.server.connections:
            return JSONResponse({"error": f"no handler named {handler!r}"}, status_code=404)
        count = self.server.get_connection_count(document_id=document_id, handler=handler)
        return JSONResponse({"count": count})


class AppLifespan:
    """Runs a wrapped app's lifespan protocol; apps without one are tolerated."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self._app = app
        self._scope = {**scope}
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._supported = True

    async def _run(self) -> None:
        try:
            await self._app(self._scope, self._to_app.get, self._from_app.put)
        except Exception:  # an app without lifespan support raises; that is allowed
            self._supported = False
            await self._from_app.put({"type": "unsupported"})
            return
        # An app may also ignore the lifespan scope and return (the smallest ASGI apps do):
        # whoever still waits for an answer must not wait forever.
        self._supported = False
        await self._from_app.put({"type": "unsupported"})

    async def startup(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await self._from_app.get()
        if reply["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"http_app startup failed: {reply.get('message', '')}")

    async def shutdown(self) -> None:
        if not self._supported or self._task is None:
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        await self._from_app.get()
        await self._task


def create_app(settings: Settings | None = None, http_app: ASGIApp | None = None, *,
               server: Server | None = None) -> CaptifyApp:
    """The captify-ws ASGI app. ``http_app`` receives every request that is not ours."""
    if server is None:
        server = Server(settings or Settings())
    return CaptifyApp(server, http_app)
