"""Who may connect, and what they may do with which document.

``Authenticator.authenticate(request) -> Principal`` runs once per connection, after the
upgrade; it raises :class:`~captify_ws.errors.Reject` to refuse (close 4401 by default).
``Authorizer.authorize(principal, document_id, request) -> Access`` runs when a connection
opens a document; it answers ``"write"`` or ``"read"``, or raises ``Reject(4403, …)``.

Built in (``--auth``):

* ``none`` — everyone is anonymous. The default on a loopback bind only; ``serve`` warns.
* ``session-proxy`` — forwards the upgrade's ``Cookie`` and ``Authorization`` headers to the
  product's own session endpoint (NextAuth's ``/api/auth/session``, a Django or FastAPI view);
  a 200 answer with a user id at ``auth_user_path`` authenticates. Answers are cached for
  ``auth_cache_s`` seconds per cookie.
* ``jwt`` — a token signed with HS256/RS256/ES256 (PyJWT), from the ``Authorization`` header,
  ``?token=``, a cookie, or the ``Sec-WebSocket-Protocol`` header; ``exp``, ``nbf``, ``aud``
  and ``iss`` are checked; ``sub`` is the user id.
* ``module:attribute`` — your own ``async def authenticate(request) -> Principal`` (or a dict
  of claims with ``"sub"``, or a user id string).

Authorizers (``--authorizer``): ``allow`` (every authenticated user may write everything),
``jwt-claims`` (the token's ``docs`` claim: ``{"pattern": "write"|"read"}`` or a list of
patterns, shell-style wildcards), ``access-proxy`` (asks ``CAPTIFY_WS_AUTH_ACCESS_URL``), or
``module:attribute``; they live in ``authorizers.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import httpx
import jwt

from captify_ws.config import Settings
from captify_ws.connection import UpgradeRequest
from captify_ws.errors import CloseCode, ConfigError, Reject
from captify_ws.imports import import_attribute

logger = logging.getLogger("captify_ws.auth")

Access = Literal["read", "write"]


@dataclass(frozen=True)
class Principal:
    """An authenticated (or anonymous) user."""

    user_id: str | None
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def anonymous(self) -> bool:
        return self.user_id is None


ANONYMOUS = Principal(None)


@runtime_checkable
class Authenticator(Protocol):
    """Decides who a connection is. Raise ``Reject(4401, reason)`` to refuse."""

    async def authenticate(self, request: UpgradeRequest) -> Principal: ...


@runtime_checkable
class Authorizer(Protocol):
    """Decides what a principal may do with a document. Raise ``Reject(4403, reason)``."""

    async def authorize(self, principal: Principal, document_id: str,
                        request: UpgradeRequest) -> Access: ...


def unauthorized(reason: str = "Unauthorized") -> Reject:
    return Reject(CloseCode.UNAUTHORIZED, reason)


def access_denied(reason: str = "Access denied") -> Reject:
    return Reject(CloseCode.FORBIDDEN, reason)


class _TTLCache:
    """A small LRU with expiry, for answers of remote endpoints."""

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self._ttl = ttl
        self._size = size
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: Any, value: Any) -> None:
        if self._ttl <= 0:
            return
        self._items[key] = (time.monotonic() + self._ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def discard_where(self, predicate: Callable[[Any], bool]) -> None:
        for key in [key for key in self._items if predicate(key)]:
            del self._items[key]


# -- authenticators ----------------------------------------------------------------------------


class NoAuth:
    """Everyone is anonymous: development only."""

    async def authenticate(self, request: UpgradeRequest) -> Principal:
        return ANONYMOUS


def _dig(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


class SessionProxyAuthenticator:
    """Asks the product's session endpoint, with the connection's Cookie and Authorization."""

    def __init__(self, url: str, *, user_path: str = "user.id", cache_s: float = 10.0,
                 timeout_s: float = 5.0) -> None:
        self.url = url
        self.user_path = user_path
        self._cache = _TTLCache(cache_s)
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def authenticate(self, request: UpgradeRequest) -> Principal:
        headers = {name: value for name in ("cookie", "authorization")
                   if (value := request.header(name)) is not None}
        if not headers:
            raise unauthorized("Unauthorized: no session cookie or Authorization header")
        key = hashlib.sha256(json.dumps(headers, sort_keys=True).encode()).digest()
        cached = self._cache.get(key)
        if isinstance(cached, Principal):
            return cached
        if isinstance(cached, Reject):
            raise cached
        try:
            response = await self._client.get(self.url, headers={**headers,
                                                                  "accept": "application/json"})
        except httpx.HTTPError as exc:
            logger.warning("session endpoint %s failed: %s", self.url, exc)
            raise Reject(CloseCode.OVERLOADED, "session service unavailable") from None
        principal = None
        if response.status_code == 200:
            try:
                body = response.json()
            except ValueError:
                body = None
            user_id = _dig(body, self.user_path)
            if isinstance(user_id, (str, int)) and str(user_id):
                principal = Principal(str(user_id), body if isinstance(body, dict) else {})
        if principal is None:
            refusal = unauthorized()
            self._cache.put(key, refusal)
            raise refusal
        self._cache.put(key, principal)
        return principal

    async def close(self) -> None:
        await self._client.aclose()


def _looks_like_jwt(value: str) -> bool:
    parts = value.split(".")
    return len(parts) == 3 and all(parts[:2])


def offered_subprotocols(request: UpgradeRequest) -> list[str]:
    header = request.header("sec-websocket-protocol") or ""
    return [part.strip() for part in header.split(",") if part.strip()]


def choose_subprotocol(request: UpgradeRequest) -> str | None:
    """The subprotocol to accept: the first offered one that is not a token.

    Browsers cannot set headers on a WebSocket, so a token may travel as a subprotocol:
    ``new WebSocket(url, ["captify", token])``; the server must then accept one of the offered
    values, and never the token itself.
    """
    for value in offered_subprotocols(request):
        if not _looks_like_jwt(value):
            return value
    return None


class JwtAuthenticator:
    """Validates a JWT (HS256 with a secret; RS256/ES256 with a public key)."""

    def __init__(self, *, key: str, algorithms: list[str], audience: str | None,
                 issuer: str | None, cookie: str, leeway_s: float) -> None:
        self._key = key
        self._algorithms = algorithms
        self._audience = audience
        self._issuer = issuer
        self._cookie = cookie
        self._leeway = leeway_s

    def token_from(self, request: UpgradeRequest) -> str | None:
        authorization = request.header("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        if request.query.get("token"):
            return request.query["token"]
        for part in (request.header("cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self._cookie and value:
                return value
        for value in offered_subprotocols(request):
            if _looks_like_jwt(value):
                return value
        return None

    async def authenticate(self, request: UpgradeRequest) -> Principal:
        token = self.token_from(request)
        if token is None:
            raise unauthorized("Unauthorized: no token")
        try:
            claims = jwt.decode(token, self._key, algorithms=self._algorithms,
                                audience=self._audience, issuer=self._issuer,
                                leeway=self._leeway,
                                options={"require": ["sub", "exp"],
                                         "verify_aud": self._audience is not None})
        except jwt.ExpiredSignatureError:
            raise unauthorized("Unauthorized: token expired") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("Unauthorized: token not valid yet") from None
        except jwt.InvalidAudienceError:
            raise unauthorized("Unauthorized: wrong audience") from None
        except jwt.InvalidIssuerError:
            raise unauthorized("Unauthorized: wrong issuer") from None
        except jwt.PyJWTError as exc:
            # InvalidTokenError, and InvalidKeyError: e.g. an HS256 token when the key is an RSA
            # public key (PyJWT refuses to use it as an HMAC secret).
            raise unauthorized(f"Unauthorized: invalid token ({type(exc).__name__})") from None
        return Principal(str(claims["sub"]), claims)


class CallableAuthenticator:
    """Wraps the user's ``async def authenticate(request)``."""

    def __init__(self, function: Callable[[UpgradeRequest], Any]) -> None:
        self._function = function

    async def authenticate(self, request: UpgradeRequest) -> Principal:
        result = self._function(request)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, Principal):
            return result
        if isinstance(result, str) and result:
            return Principal(result)
        if isinstance(result, Mapping) and result.get("sub") is not None:
            return Principal(str(result["sub"]), dict(result))
        raise unauthorized()


# -- construction from settings ----------------------------------------------------------------


def _key_material(settings: Settings) -> str:
    if settings.jwt_public_key:
        value = settings.jwt_public_key
        if value.startswith("@"):
            try:
                return Path(value[1:]).read_text()
            except OSError as exc:
                raise ConfigError(f"jwt_public_key {value!r}: {exc}") from None
        return value
    if settings.jwt_secret:
        return settings.jwt_secret
    raise ConfigError("--auth jwt needs CAPTIFY_WS_JWT_SECRET (HS256) or "
                      "CAPTIFY_WS_JWT_PUBLIC_KEY (RS256/ES256)")


def build_authenticator(settings: Settings) -> Authenticator:
    kind = settings.effective_auth
    if kind == "none":
        return NoAuth()
    if kind == "session-proxy":
        if not settings.auth_session_url:
            raise ConfigError("--auth session-proxy needs CAPTIFY_WS_AUTH_SESSION_URL")
        return SessionProxyAuthenticator(settings.auth_session_url,
                                         user_path=settings.auth_user_path,
                                         cache_s=settings.auth_cache_s,
                                         timeout_s=settings.auth_timeout_s)
    if kind == "jwt":
        return JwtAuthenticator(key=_key_material(settings),
                                algorithms=list(settings.jwt_algorithms),
                                audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                                cookie=settings.jwt_cookie, leeway_s=settings.jwt_leeway_s)
    target = import_attribute(kind, "authenticator")
    if isinstance(target, Authenticator):
        return target
    if callable(target):
        return CallableAuthenticator(target)
    raise ConfigError(f"authenticator {kind!r} is neither an Authenticator nor a function")


async def with_timeout(awaitable: Awaitable[Principal], timeout: float) -> Principal:
    """An authenticator that does not answer in time refuses with 4408."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise Reject(CloseCode.AUTH_TIMEOUT, "authentication timed out") from None
