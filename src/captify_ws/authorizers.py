"""The built-in authorizers (``--authorizer``): what an authenticated principal may do with a
document — ``allow`` (everything), ``jwt-claims`` (the token's ``docs`` claim), ``access-proxy``
(the product's own endpoint, cached), or ``module:attribute`` (an ``Authorizer`` or a function).
The protocol and the principal are in ``auth.py``.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from captify_ws.auth import Access, Authorizer, Principal, _TTLCache, access_denied
from captify_ws.config import Settings
from captify_ws.connection import UpgradeRequest
from captify_ws.errors import CloseCode, ConfigError, Reject
from captify_ws.imports import import_attribute

logger = logging.getLogger("captify_ws.auth")


class AllowAll:
    """Every authenticated principal may read and write every document."""

    async def authorize(self, principal: Principal, document_id: str,
                        request: UpgradeRequest) -> Access:
        return "write"


class JwtClaimsAuthorizer:
    """The token names its documents: ``"docs": {"team-1/*": "write", "public-*": "read"}``
    or ``"docs": ["team-1/*"]`` (write). The most generous matching pattern wins."""

    def __init__(self, claim: str = "docs") -> None:
        self.claim = claim

    async def authorize(self, principal: Principal, document_id: str,
                        request: UpgradeRequest) -> Access:
        granted = self._claims(principal)
        access: Access | None = None
        for pattern, level in granted.items():
            if fnmatch.fnmatchcase(document_id, pattern):
                if level == "write":
                    return "write"
                if level == "read":
                    access = "read"
        if access is None:
            raise access_denied()
        return access

    def _claims(self, principal: Principal) -> dict[str, str]:
        value = principal.claims.get(self.claim)
        if isinstance(value, list):
            return {str(pattern): "write" for pattern in value}
        if isinstance(value, Mapping):
            return {str(pattern): str(level) for pattern, level in value.items()}
        return {}


class AccessProxyAuthorizer:
    """Asks the product: ``POST url`` with ``{"documentId","userId","claims"}`` and the
    connection's Cookie/Authorization; expects ``{"access":"write"|"read"|"none"}``."""

    def __init__(self, url: str, *, cache_s: float = 10.0, timeout_s: float = 5.0) -> None:
        self.url = url
        self._cache = _TTLCache(cache_s)
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def authorize(self, principal: Principal, document_id: str,
                        request: UpgradeRequest) -> Access:
        key = (principal.user_id, document_id)
        cached = self._cache.get(key)
        if cached is not None:
            if cached == "none":
                raise access_denied()
            return cached  # type: ignore[no-any-return]
        headers = {name: value for name in ("cookie", "authorization")
                   if (value := request.header(name)) is not None}
        try:
            response = await self._client.post(self.url, headers=headers, json={
                "documentId": document_id, "userId": principal.user_id,
                "claims": dict(principal.claims)})
        except httpx.HTTPError as exc:
            logger.warning("access endpoint %s failed: %s", self.url, exc)
            raise Reject(CloseCode.OVERLOADED, "access service unavailable") from None
        access = "none"
        if response.status_code == 200:
            try:
                value = response.json().get("access")
            except (ValueError, AttributeError):
                value = None
            if value in ("read", "write"):
                access = value
        self._cache.put(key, access)
        if access == "none":
            raise access_denied()
        return access  # type: ignore[return-value]

    def forget(self, document_id: str, user_id: str) -> None:
        self._cache.discard_where(lambda key: key == (user_id, document_id))

    async def close(self) -> None:
        await self._client.aclose()


class CallableAuthorizer:
    """Wraps the user's ``async def authorize(principal, document_id, request)``."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function

    async def authorize(self, principal: Principal, document_id: str,
                        request: UpgradeRequest) -> Access:
        result = self._function(principal, document_id, request)
        if inspect.isawaitable(result):
            result = await result
        if result in ("read", "write"):
            return result  # type: ignore[no-any-return]
        if result is True:
            return "write"
        raise access_denied()


def build_authorizer(settings: Settings) -> Authorizer:
    kind = settings.authorizer
    if kind == "allow":
        return AllowAll()
    if kind == "jwt-claims":
        return JwtClaimsAuthorizer(settings.jwt_docs_claim)
    if kind == "access-proxy":
        if not settings.auth_access_url:
            raise ConfigError("--authorizer access-proxy needs CAPTIFY_WS_AUTH_ACCESS_URL")
        return AccessProxyAuthorizer(settings.auth_access_url, cache_s=settings.auth_cache_s,
                                     timeout_s=settings.auth_timeout_s)
    target = import_attribute(kind, "authorizer")
    if isinstance(target, Authorizer):
        return target
    if callable(target):
        return CallableAuthorizer(target)
    raise ConfigError(f"authorizer {kind!r} is neither an Authorizer nor a function")
