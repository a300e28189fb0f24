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
from captify_ws.errors import BodyTooLarge, log_with_id
from captify_ws.history.http import HistoryRoutes
from captify_ws.http_agent_sessions import AgentSessionRoutes
from captify_ws.http_agents import AgentRoutes
from captify_ws.http_channels import ChannelRoutes
from captify_ws.http_documents import DocumentRoutes, document_name, route_path
from captify_ws.http_stateless import stateless_routes
from captify_ws.protocol import envelope
from captify_ws.server import Server
from captify_ws.server_metrics import build_registry
from captify_ws.transport.asgi import deny, serve_websocket
from captify_ws.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("captify_ws.app")

#: Paths captify-ws answers itself; everything else goes to the user's http_app.
OWN_PREFIXES: Final = ("/healthz", "/readyz", "/metrics", "/admin", "/api/v1/", "/client/")
#: HTTP status of refused steps, by the refusal's code (else 400)
class CaptifyApp:
    """The ASGI callable returned by :func:`create_app`."""

    def __init__(self, server: Server, http_app: ASGIApp | None = None) -> None:
        self.server = server
        self.http_app = http_app
        self._registry: CollectorRegistry | None = None
        documents = DocumentRoutes(server, self._check_api_key, self._json_body)
        self._router = Router(routes=[
            Route("/healthz", self._healthz, methods=["GET", "HEAD"]),
            Route("/readyz", self._readyz, methods=["GET", "HEAD"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            *AdminPages(server).routes(),
            *HistoryRoutes(server, self._check_api_key, document_name).routes(),
            *documents.routes()[:3],
            *stateless_routes(self),
            *documents.routes()[3:],
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
        path = route_path(scope)
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
                raise BodyTooLarge(f"body larger than {limit} bytes")
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
                raise BodyTooLarge(f"body larger than {limit} bytes")
            await self._router(scope, bounded_receive, tracking_send)
        except ClientDisconnect:
            return  # the client went away, or its body timed out (answered 408 already)
        except BodyTooLarge:
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
        <token>`` (else 401), compared in constant time. ``X-Captify-Instance`` names the
        process that answered (one of ``--workers``)."""
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
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST,
                        headers={"X-Captify-Instance": self.server.instance_id})

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
        started = False

        async def send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "lifespan.startup.complete"
            await self._from_app.put(message)

        try:
            await self._app(self._scope, self._to_app.get, send)
        except Exception as exc:
            # An app without lifespan support raises on the scope (allowed, as uvicorn's
            # lifespan "auto" allows it); the error is logged all the same, for the app whose
            # startup really crashed, and as an error when it had started.
            log_with_id(logger, "http_app crashed in its lifespan" if started else
                        "http_app lifespan raised; served without lifespan events", exc,
                        level=logging.ERROR if started else logging.WARNING)
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
