"""The HTTP API of agents co-editing documents (bearer ``CAPTIFY_WS_API_KEY``): what
``agent_session()`` does, for producers in any language.

=====================================================  =========================================
``POST /api/v1/agent/sessions``                        ``{document_id, name?, color?, field?,
                                                       owner?, run_id?}`` → ``{session_id,
                                                       client_id, ttl_s, instance}``
``POST /api/v1/agent/sessions/{id}/insert``            ``{anchor, text}``, or NDJSON: a first
                                                       line ``{"anchor": n}``, then ``{"text":
                                                       …}`` lines inserted as they arrive →
                                                       ``{inserted, length}``
``POST /api/v1/agent/sessions/{id}/replace``           ``{start, end, expect, content}`` →
                                                       ``{length}``; 409 when the text between
                                                       start and end is no longer ``expect``
``POST /api/v1/agent/sessions/{id}/revert``            → ``{length}``
``GET /api/v1/agent/sessions/{id}/text``               ``{text}`` (and keeps the session alive)
``DELETE /api/v1/agent/sessions/{id}``                 end: the presence disappears
``GET /api/v1/agent/sessions?document_id=``            the attribution list
=====================================================  =========================================

Positions are characters (code points). A session idle for ``agent_producer_ttl_s`` (no
request in flight) is ended by the server: a dead producer leaves no ghost; calls naming an
unknown, ended or expired session answer 404. A session lives on
the instance that started it: another instance sharing the store answers its calls ``421
{error, session_id, instance, instance_alive}`` (session affinity; README). Bodies are bounded:
a JSON body by :data:`MAX_JSON_BODY`, an NDJSON stream by ``max_document_size``, the text by
the document's quota (413, the text before it stays); an owner
has at most :data:`MAX_OPEN_PER_OWNER` sessions open on an instance (429).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from captify_ws.agents.registry import SessionElsewhere
from captify_ws.agents.session import AgentSession, StaleContext
from captify_ws.api import agent_sessions
from captify_ws.errors import ChannelError, CloseCode, QuotaExceeded
from captify_ws.http_channels import _error
from captify_ws.http_common import CheckKey, Endpoint, guard

if TYPE_CHECKING:
    from captify_ws.agents.registry import AgentSessions
    from captify_ws.server import Server

NAME_MAX_CHARS = 100
#: Bytes of a JSON request body (a 1 Mi-character text, escaped).
MAX_JSON_BODY = 8 << 20


def _int(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ChannelError(CloseCode.BAD_REQUEST, f"'{key}' must be a character position")
    return value


def _str(body: dict[str, Any], key: str, default: str | None = None,
         max_chars: int = 1 << 20) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or len(value) > max_chars:
        raise ChannelError(CloseCode.BAD_REQUEST, f"'{key}' must be a string of at most "
                           f"{max_chars} characters")
    return value


async def _read(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; ``ChannelError(1009)`` (413) past ``limit`` bytes."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ChannelError(CloseCode.MESSAGE_TOO_BIG, f"a body longer than {limit} bytes")
        yield chunk


async def _json_lines(request: Request, max_line: int, limit: int
                      ) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an NDJSON body of at most ``limit`` bytes, as they arrive."""
    buffer = b""
    async for chunk in _read(request, limit):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > max_line:
            raise ChannelError(CloseCode.MESSAGE_TOO_BIG, f"a line longer than {max_line} bytes")
        for line in lines:
            if line.strip():
                yield _line(line)
    if buffer.strip():
        yield _line(buffer)


def _line(line: bytes) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ChannelError(CloseCode.BAD_REQUEST, "not a JSON line") from None
    if not isinstance(item, dict):
        raise ChannelError(CloseCode.BAD_REQUEST, "each line is a JSON object")
    return item


def _answer(exc: Exception) -> Response:
    """409 stale context, 413 quota, 421 a session on another instance, 499 the client gone;
    the channel answers otherwise (``ChannelError``, ``BrokerError``, ``StoreError``)."""
    if isinstance(exc, StaleContext):
        return JSONResponse({"error": str(exc)}, status_code=409)
    if isinstance(exc, QuotaExceeded):
        return JSONResponse({"error": str(exc), **exc.data}, status_code=413)
    if isinstance(exc, SessionElsewhere):
        return JSONResponse({"error": str(exc), "session_id": exc.record.session_id,
                             "instance": exc.record.instance,
                             "instance_alive": exc.alive}, status_code=421)
    if isinstance(exc, ClientDisconnect):
        return Response(status_code=499)
    return _error(exc)


class AgentSessionRoutes:
    """The routes above, for one server; ``check_key`` answers a refusal or ``None``."""

    def __init__(self, server: Server, check_key: CheckKey) -> None:
        self.server = server
        self._check_key = check_key

    @property
    def sessions(self) -> AgentSessions:
        return agent_sessions(self.server)

    def routes(self) -> list[Route]:
        base = "/api/v1/agent/sessions"
        return [
            Route(base, self._guard(self._start), methods=["POST"]),
            Route(base + "/{sid}/insert", self._guard(self._insert), methods=["POST"]),
            Route(base + "/{sid}/replace", self._guard(self._replace), methods=["POST"]),
            Route(base + "/{sid}/revert", self._guard(self._revert), methods=["POST"]),
            Route(base + "/{sid}/text", self._guard(self._text), methods=["GET"]),
            Route(base + "/{sid}", self._guard(self._end), methods=["DELETE"]),
        ]

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        return guard(self._check_key, endpoint, _answer)

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        raw = b"".join([chunk async for chunk in _read(request, MAX_JSON_BODY)])
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ChannelError(CloseCode.BAD_REQUEST, "body must be a JSON object") from None
        if not isinstance(body, dict):
            raise ChannelError(CloseCode.BAD_REQUEST, "body must be a JSON object")
        return body

    async def _start(self, request: Request) -> Response:
        body = await self._json(request)
        document_id = _str(body, "document_id", max_chars=1000)
        if not document_id:
            raise ChannelError(CloseCode.BAD_REQUEST, "'document_id' is required")
        owner, run_id = body.get("owner"), body.get("run_id")
        session = await self.sessions.start_session(
            document_id, name=_str(body, "name", "Assistant", NAME_MAX_CHARS),
            color=_str(body, "color", "#7c3aed", 32), field=_str(body, "field", "text", 100),
            owner=None if owner is None else _str(body, "owner", max_chars=1000),
            run_id=None if run_id is None else _str(body, "run_id", max_chars=1000))
        return JSONResponse({"session_id": session.info.session_id,
                             "client_id": session.client_id, "ttl_s": self.sessions.ttl_s,
                             "instance": self.server.instance_id})

    async def _insert(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        ndjson = "ndjson" in request.headers.get("content-type", "")
        async with self.sessions.use(sid) as session:
            if not ndjson:
                body = await self._json(request)
                text = _str(body, "text")
                await session.insert_text(_int(body, "anchor"), text)
                return JSONResponse({"inserted": len(text), "length": len(session.read())})
            inserted = await self._stream_insert(request, session, sid)
            return JSONResponse({"inserted": inserted, "length": len(session.read())})

    async def _stream_insert(self, request: Request, session: AgentSession, sid: str) -> int:
        settings = self.server.settings
        lines = _json_lines(request, settings.channel_publication_max_bytes,
                            settings.max_document_size)
        try:
            first = await lines.__anext__()
        except StopAsyncIteration:
            raise ChannelError(CloseCode.BAD_REQUEST, 'the first line is {"anchor": n}') \
                from None
        anchor = _int(first, "anchor")
        inserted = 0

        async def pieces() -> AsyncIterator[str]:
            nonlocal inserted
            async for item in lines:
                text = _str(item, "text")
                inserted += len(text)
                self.sessions.touch(sid)
                yield text

        await session.insert_text(anchor, pieces())
        return inserted

    async def _replace(self, request: Request) -> Response:
        body = await self._json(request)
        start, end = _int(body, "start"), _int(body, "end")
        expect, content = _str(body, "expect"), _str(body, "content")
        async with self.sessions.use(request.path_params["sid"]) as session:
            target = session.range(start, end)
            if target.text != expect:
                raise StaleContext(f"the range holds {target.text!r}, not {expect!r}")
            await session.replace(target, content)
            return JSONResponse({"length": len(session.read())})

    async def _revert(self, request: Request) -> Response:
        async with self.sessions.use(request.path_params["sid"]) as session:
            await session.revert()
            return JSONResponse({"length": len(session.read())})

    async def _text(self, request: Request) -> Response:
        async with self.sessions.use(request.path_params["sid"]) as session:
            return JSONResponse({"text": session.read()})

    async def _end(self, request: Request) -> Response:
        ended = await self.sessions.end(request.path_params["sid"])
        return JSONResponse({"ended": ended}, status_code=200 if ended else 404)
