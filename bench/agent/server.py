"""The server of the agent benchmark: captify-ws (memory store, native transport) with an
in-process producer started over HTTP, so that agent_run()'s coalescing is what is measured.

    python bench/agent/server.py PORT COALESCE_TOKENS COALESCE_MS

``POST /bench/run {"run_id", "tokens", "rate"}`` starts ``agent_run(run_id)`` producing
``tokens`` tokens at ``rate`` per second (each token is ``"<i>:<unix ms> "``, the time it was
made), then ``run.completed {"tokens", "publications"}``. Not part of captify-ws.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import captify_ws
import captify_ws.agents.producer
from captify_ws.app import create_app
from captify_ws.config import Settings
from captify_ws.server import Server
from captify_ws.transport.native import NativeServer

TASKS: set[asyncio.Task[None]] = set()
#: run id → the producer (its tokens and publications so far)
RUNS: dict[str, captify_ws.agents.producer.AgentRun] = {}


async def produce(run_id: str, tokens: int, rate: float) -> None:
    async with captify_ws.agent_run(run_id) as run:
        RUNS[run_id] = run
        await run.message_started("m1")
        start = time.monotonic()
        for i in range(tokens):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await run.token("m1", f"{i}:{time.time() * 1000:.3f} ")
        await run.flush()
        await run.complete({"tokens": run.tokens, "publications": run.publications + 1})


async def start_run(request: Request) -> JSONResponse:
    body = await request.json()
    task = asyncio.get_running_loop().create_task(
        produce(body["run_id"], int(body["tokens"]), float(body["rate"])))
    TASKS.add(task)
    task.add_done_callback(TASKS.discard)
    return JSONResponse({"started": body["run_id"]})


async def stats(request: Request) -> JSONResponse:
    run = RUNS.get(request.path_params["run_id"])
    if run is None:
        return JSONResponse({"error": "unknown run"}, status_code=404)
    return JSONResponse({"tokens": run.tokens, "publications": run.publications,
                         "status": run.status})


async def main() -> None:
    port, tokens, ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    settings = Settings(port=port, store="memory", api_key="bench", log_level="warning",
                        agent_coalesce_tokens=tokens, agent_coalesce_ms=ms,
                        channel_subscribe_rate_per_s=1000.0)
    server = Server(settings)
    app = create_app(http_app=Starlette(routes=[
        Route("/bench/run", start_run, methods=["POST"]),
        Route("/bench/stats/{run_id}", stats, methods=["GET"])]), server=server)
    await server.start()
    native = NativeServer(server, app)
    await native.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await native.stop()
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
