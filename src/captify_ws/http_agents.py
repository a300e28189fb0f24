"""The HTTP API of agent runs (bearer ``CAPTIFY_WS_API_KEY``), for producers in any language.

=====================================================  =========================================
``POST /api/v1/agent/runs/{run_id}/events``            a body of NDJSON lines ``{"event": …,
                                                       "data": {…}}`` (``application/x-ndjson``),
                                                       read and published as they arrive →
                                                       ``{status, accepted, errors: [...],
                                                       offset, epoch}``
``POST /api/v1/agent/runs/{run_id}/cancel``            ``{"by"?}`` → ``{status}``; 404 for a
                                                       run never started (or expired)
``GET /api/v1/agent/runs/{run_id}``                    the compacted run (the snapshot a late
                                                       subscriber gets) with ``offset, epoch``
``GET /api/v1/agent/sessions?document_id=``           ``{agents: [{session_id, document_id,
                                                       client_id, name, color, owner, run_id,
                                                       instance, started_at, ended_at,
                                                       reverted, before_version}]}``: who
                                                       edited, by Yjs client id (stored: every
                                                       instance, after restarts)
=====================================================  =========================================

A producer pipes its model's output as NDJSON (``run.started`` first, a terminal event last);
each line is published as soon as it is read, so subscribers see tokens while the request is
still being sent. A malformed line is reported in ``errors`` (``{line, code, error}``) and the
lines after it go on. When the run ends meanwhile (a client's ``cancel``), reading stops and
the answer is ``409 {"status": "cancelled", …}`` at once: that is how the producer learns of
it, or by polling ``GET``. While the body is open and idle the server publishes
``run.heartbeat`` for the producer; when the body ends without a terminal event, the run stays
``running`` (another POST may continue it) until ``agent_producer_ttl_s`` passes without an
event, then it is ``run.failed {"error":"producer_lost"}``. One body must arrive within
``http_body_timeout_s``; longer runs continue with another POST.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from captify_ws.agents.events import channel_of
from captify_ws.api import agent_runs, agent_sessions
from captify_ws.errors import ChannelError, CloseCode, RunEnded
from captify_ws.http_channels import _error
from captify_ws.http_common import CheckKey, Endpoint, guard

if TYPE_CHECKING:
    from captify_ws.agents.runs import AgentRuns
    from captify_ws.server import Server

#: Line errors listed in one answer (the count goes on).
MAX_LISTED_ERRORS = 20

logger = logging.getLogger("captify_ws.agents")


def _answer(exc: Exception) -> Response:
    """409 for a run that ended meanwhile; the channel answers otherwise (``ChannelError``,
    ``BrokerError``, ``StoreError``: ``http_channels``)."""
    if isinstance(exc, RunEnded):
        return JSONResponse({"error": exc.message, "status": exc.status}, status_code=409)
    return _error(exc)


class AgentRoutes:
    """The routes above, for one server; ``check_key`` answers a refusal or ``None``."""

    def __init__(self, server: Server, check_key: CheckKey) -> None:
        self.server = server
        self._check_key = check_key

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/agent/runs/{run_id}/events", self._guard(self._events),
                  methods=["POST"]),
            Route("/api/v1/agent/runs/{run_id}/cancel", self._guard(self._cancel),
                  methods=["POST"]),
            Route("/api/v1/agent/runs/{run_id}", self._guard(self._run), methods=["GET"]),
            Route("/api/v1/agent/sessions", self._guard(self._agents), methods=["GET"]),
        ]

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        return guard(self._check_key, endpoint, _answer)

    @property
    def runs(self) -> AgentRuns:
        return agent_runs(self.server)

    async def _run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        channel = channel_of(run_id)
        runs = self.runs
        if await runs.status(run_id) == "running":
            await runs.check_producer(channel)
        snap = await runs.hub.snapshot(channel)
        body = ('{"offset":' + str(snap.position.offset) + ',"epoch":'
                + json.dumps(snap.position.epoch) + ',"run":' + snap.state_json + "}")
        return Response(body, media_type="application/json")

    async def _agents(self, request: Request) -> Response:
        sessions = agent_sessions(self.server)
        document_id = request.query_params.get("document_id")
        if not document_id:
            raise ChannelError(CloseCode.BAD_REQUEST, "'document_id' is required")
        listed = await sessions.list(document_id)
        return JSONResponse({"agents": listed})

    async def _cancel(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        channel_of(run_id)
        by: Any = None
        raw = await request.body()
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                raise ChannelError(CloseCode.BAD_REQUEST, "body must be JSON") from None
            by = body.get("by") if isinstance(body, dict) else None
            if by is not None and not isinstance(by, str):
                raise ChannelError(CloseCode.BAD_REQUEST, "'by' must be a string")
        return JSONResponse({"status": await self.runs.cancel(run_id, by)})

    async def _events(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        channel_of(run_id)
        runs = self.runs
        max_line = self.server.settings.channel_publication_max_bytes + 1024
        accepted = 0
        errors: list[dict[str, Any]] = []
        error_count = 0
        last = time.monotonic()
        position: tuple[int, str] = (0, "")

        async def heartbeat() -> None:
            period = runs.settings.agent_producer_ttl_s / 3
            while True:
                await asyncio.sleep(max(0.0, last + period - time.monotonic()))
                if time.monotonic() - last >= period and accepted:
                    try:
                        await runs.publish(run_id, "run.heartbeat", {})
                    except Exception as exc:  # the next line or heartbeat tries again
                        logger.warning("agent run %s: heartbeat failed: %s", run_id, exc)

        async def publish_line(number: int, line: bytes) -> None:
            nonlocal accepted, error_count, last, position
            if not line.strip():
                return
            try:
                try:
                    item = json.loads(line)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    raise ChannelError(CloseCode.BAD_REQUEST, "not a JSON line") from None
                if not isinstance(item, dict) or not isinstance(item.get("event"), str):
                    raise ChannelError(CloseCode.BAD_REQUEST,
                                       'a line is {"event": "…", "data": {…}}')
                result = await runs.publish(run_id, item["event"], item.get("data"))
                accepted += 1
                last = time.monotonic()
                position = (result.offset, result.epoch)
            except RunEnded:
                raise
            except ChannelError as exc:
                error_count += 1
                if len(errors) < MAX_LISTED_ERRORS:
                    errors.append({"line": number, "code": exc.code, "error": exc.message})

        beating = asyncio.get_running_loop().create_task(heartbeat())
        status = 200
        try:
            buffer = b""
            number = 0
            async for chunk in request.stream():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    number += 1
                    await publish_line(number, line)
                    await asyncio.sleep(0)  # a 64 KiB chunk is ~700 lines: others run between
                if len(buffer) > max_line:
                    raise ChannelError(CloseCode.MESSAGE_TOO_BIG,
                                       f"line {number + 1} longer than {max_line} bytes")
            if buffer.strip():
                await publish_line(number + 1, buffer)
        except RunEnded:
            status = 409
        except ClientDisconnect:  # the producer went away: the TTL decides
            return Response(status_code=499)
        finally:
            beating.cancel()
        run_status = await runs.status(run_id)
        return JSONResponse({"status": run_status, "accepted": accepted,
                             "errors": errors, "error_count": error_count,
                             "offset": position[0], "epoch": position[1]},
                            status_code=status)
