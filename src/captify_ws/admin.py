"""The admin dashboard at ``/admin``, and who may see it.

The API key never travels in a URL (it would end up in browser history, proxy logs and
``Referer`` headers). Three ways in, checked in this order:

* ``--admin-auth module:function`` — the product's own check: called with the request, raises
  :class:`~captify_ws.Reject` to refuse (a 403 with its reason);
* a login form at ``/admin/`` that takes the API key once, by POST, and answers with an
  HttpOnly, SameSite=Strict cookie holding a **signed, expiring session**
  (:class:`AdminSessions`; ``CAPTIFY_WS_ADMIN_SESSION_S``, 8 hours by default);
* ``Authorization: Bearer <API key>`` for scripts (``/admin/api/stats``).

Without an API key and without a hook the dashboard is off (404 saying how to turn it on).
Failed logins are limited per instance (``MAX_FAILED_LOGINS`` a minute, then 429) so the form
cannot be used to guess the key quickly.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import secrets
import time
from importlib import resources
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import BaseRoute, Route

from captify_ws.errors import Reject
from captify_ws.imports import import_attribute
from captify_ws.server_metrics import snapshot

if TYPE_CHECKING:
    from captify_ws.server import Server

ADMIN_COOKIE: Final = "captify_admin"
MAX_LOGIN_BODY: Final = 4096
MAX_FAILED_LOGINS: Final = 10  # per instance, per minute


class AdminSessions:
    """Signed, expiring admin sessions: ``<expires>.<nonce>.<signature>``.

    ``expires`` is a Unix time in whole seconds; the signature is HMAC-SHA256 over
    ``expires.nonce`` under a key derived from the API key, so every instance sharing the key
    accepts the session, a restart keeps it, and changing the key ends every session.
    """

    def __init__(self, api_key: str, lifetime_s: float) -> None:
        self._key = hashlib.sha256(b"captify-ws admin session\0" + api_key.encode()).digest()
        self.lifetime_s = lifetime_s

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> str:
        """A new session token, valid for ``lifetime_s`` from ``now``."""
        expires = int((time.time() if now is None else now) + self.lifetime_s)
        payload = f"{expires}.{secrets.token_hex(8)}"
        return f"{payload}.{self._sign(payload)}"

    def valid(self, token: str, now: float | None = None) -> bool:
        """Whether ``token`` was issued with this key and has not expired."""
        expires, _, rest = token.partition(".")
        nonce, _, signature = rest.partition(".")
        if not (expires.isdigit() and nonce and signature):
            return False
        if not hmac.compare_digest(signature, self._sign(f"{expires}.{nonce}")):
            return False
        return int(expires) > (time.time() if now is None else now)


class AdminPages:
    """The routes under ``/admin``: the dashboard, its numbers, login and logout."""

    def __init__(self, server: Server) -> None:
        self.server = server
        settings = server.settings
        self.sessions = AdminSessions(settings.api_key, settings.admin_session_s) \
            if settings.api_key else None
        self._failures: list[float] = []

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/admin", self._redirect, methods=["GET"]),
            Route("/admin/", self._page, methods=["GET"]),
            Route("/admin/login", self._login, methods=["POST"]),
            Route("/admin/logout", self._logout, methods=["POST"]),
            Route("/admin/api/stats", self._stats, methods=["GET"]),
            Route("/admin/api/webhooks", self._webhooks, methods=["GET"]),
        ]

    async def _allowed(self, request: Request) -> Response | None:
        """None when the request may see the dashboard, else the answer to give."""
        hook = self.server.settings.admin_auth
        if hook:
            try:
                result = import_attribute(hook, "admin_auth")(request)
                if inspect.isawaitable(result):
                    await result
            except Reject as exc:
                return PlainTextResponse(exc.reason, status_code=403)
            return None
        if self.sessions is None:
            return PlainTextResponse("The admin dashboard is off: set CAPTIFY_WS_API_KEY (or "
                                     "--admin-auth module:function).", status_code=404)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._is_key(given.strip()):
            return None
        if self.sessions.valid(request.cookies.get(ADMIN_COOKIE, "")):
            return None
        return JSONResponse({"error": "log in at /admin/ (or send 'Authorization: Bearer "
                             "<CAPTIFY_WS_API_KEY>')"}, status_code=401)

    def _is_key(self, given: str) -> bool:
        key = self.server.settings.api_key or ""
        return bool(given) and hmac.compare_digest(given.encode(), key.encode())

    async def _redirect(self, request: Request) -> Response:
        return RedirectResponse("admin/", status_code=307)

    async def _page(self, request: Request) -> Response:
        refused = await self._allowed(request)
        if refused is None:
            return HTMLResponse(_static("admin.html"), headers={"Cache-Control": "no-store"})
        if refused.status_code == 401:
            return _login_page("", 401)
        return refused

    async def _login(self, request: Request) -> Response:
        if self.sessions is None or self.server.settings.admin_auth:
            return PlainTextResponse("Logging in with the API key is off here.", 404)
        now = time.monotonic()
        self._failures = [at for at in self._failures if now - at < 60]
        if len(self._failures) >= MAX_FAILED_LOGINS:
            return _login_page("Too many failed attempts: wait a minute.", 429)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return PlainTextResponse("Request too large.", 413)
        given = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0]
        if not self._is_key(given.strip()):
            self._failures.append(now)
            return _login_page("That is not this server's API key.", 401)
        response = RedirectResponse("./", status_code=303)
        response.set_cookie(ADMIN_COOKIE, self.sessions.issue(),
                            max_age=int(self.sessions.lifetime_s), httponly=True,
                            samesite="strict", path="/admin", secure=_https(request))
        return response

    async def _logout(self, request: Request) -> Response:
        response = RedirectResponse("./", status_code=303)
        response.delete_cookie(ADMIN_COOKIE, path="/admin", httponly=True, samesite="strict")
        return response

    async def _stats(self, request: Request) -> Response:
        refused = await self._allowed(request)
        if refused is not None:
            return refused
        return JSONResponse(snapshot(self.server), headers={"Cache-Control": "no-store"})


    async def _webhooks(self, request: Request) -> Response:
        """The webhooks panel: counts, and the latest failed and retrying deliveries."""
        refused = await self._allowed(request)
        if refused is not None:
            return refused
        webhooks = self.server.webhooks
        if not webhooks.enabled:
            return JSONResponse({"enabled": False}, headers={"Cache-Control": "no-store"})
        store = webhooks.store
        failed = await store.list_deliveries("failed", None, 20)
        pending = [d for d in await store.list_deliveries("pending", None, 200) if d.attempts]
        return JSONResponse({"enabled": True, "endpoints": list(webhooks.urls),
                             "counts": await store.delivery_counts(),
                             "failed": [d.as_json() for d in failed],
                             "retrying": [d.as_json() for d in pending[:20]]},
                            headers={"Cache-Control": "no-store"})


def _https(request: Request) -> bool:
    # Behind a TLS proxy the request arrives as http; nginx says so in X-Forwarded-Proto. A
    # forged header only makes the browser keep the cookie off plain http.
    return request.url.scheme == "https" or \
        request.headers.get("x-forwarded-proto", "").lower() == "https"


def _static(name: str) -> str:
    return (resources.files("captify_ws") / "static" / name).read_text()


def _login_page(message: str, status: int) -> HTMLResponse:
    page = _static("admin-login.html").replace(
        "<!--message-->", f'<p class="error" role="alert">{message}</p>' if message else "")
    return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})
