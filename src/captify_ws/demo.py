"""The demo page: a collaborative rich-text editor served by captify-ws itself at ``/demo``.

``/demo`` redirects to ``/demo/welcome``; ``/demo/<document>`` is a Tiptap 3 editor on the Yjs
document ``<document>``, synced over this server's y-websocket endpoint
(``/ws/fabric/<document>``), showing the names and carets of everyone else present, the
connection state, and a link to invite a second tab. The page and its bundle ship inside the
package (``static/demo/``; built from ``demo/`` by ``make demo``), so it works without internet.

On by default only when the server is bound to loopback (``Settings.demo_enabled``); the page
itself is static and reaches documents only through the WebSocket, whose authentication and
authorization apply as for any client.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

#: The files under ``/demo/assets/``, with their media types.
ASSETS: Final = {"demo.js": "text/javascript; charset=utf-8",
                 "demo.css": "text/css; charset=utf-8"}
DEFAULT_DOCUMENT: Final = "welcome"
_DOCUMENT_NAME: Final = re.compile(r"[^/]{1,200}")


class DemoPages:
    """The routes of ``/demo``; files are read from the package once, on first request."""

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/demo", self._redirect_to_default, methods=["GET", "HEAD"]),
            Route("/demo/", self._redirect_to_default, methods=["GET", "HEAD"]),
            Route("/demo/assets/{name}", self._asset, methods=["GET", "HEAD"]),
            Route("/demo/{document}", self._page, methods=["GET", "HEAD"]),
            Route("/demo/{document}/", self._strip_slash, methods=["GET", "HEAD"]),
        ]

    def _read(self, name: str) -> bytes:
        if name not in self._files:
            self._files[name] = (resources.files("captify_ws") / "static" / "demo" /
                                 name).read_bytes()
        return self._files[name]

    async def _redirect_to_default(self, request: Request) -> Response:
        # Relative, so that it also works where captify-ws is mounted under a prefix.
        target = DEFAULT_DOCUMENT if request.url.path.endswith("/") else \
            f"demo/{DEFAULT_DOCUMENT}"
        return RedirectResponse(target, status_code=307)

    async def _strip_slash(self, request: Request) -> Response:
        return RedirectResponse(f"../{request.path_params['document']}", status_code=307)

    async def _page(self, request: Request) -> Response:
        if not _DOCUMENT_NAME.fullmatch(request.path_params["document"]):
            return PlainTextResponse("document names are 1 to 200 characters", status_code=404)
        return Response(self._read("index.html"), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    async def _asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return PlainTextResponse("Not Found", status_code=404)
        return Response(self._read(name), media_type=ASSETS[name],
                        headers={"Cache-Control": "no-cache"})
