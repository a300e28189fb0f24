"""captify-ws beside or inside a product's app: --http-app, and a FastAPI mount."""

from __future__ import annotations

import asyncio

import httpx
import uvicorn
from websockets.asyncio.client import connect

from captify_ws.cli import _QuietUvicorn
from tests.helpers import ROOT, ServerProcess, uvicorn_started


def test_http_app_flag_serves_the_product_on_the_same_port() -> None:
    """--http-app module:app gets every non-captify request; WebSockets still work."""
    proc = ServerProcess(["--port", "0", "--store", "memory", "--http-app",
                          "tests.outside.product_app:app"], env={"PYTHONPATH": str(ROOT)})
    proc.start()
    try:
        assert httpx.get(f"{proc.http}/api/hello", timeout=5).json() == {
            "hello": "from the product"}
        assert httpx.get(f"{proc.http}/healthz", timeout=5).json() == {"status": "ok"}

        async def talk() -> str:
            async with connect(f"{proc.ws}/ws/fabric?documentId=x") as ws:
                return str(await ws.recv())
        assert '"connected"' in asyncio.run(talk())
    finally:
        assert proc.stop() == 0


async def test_mounted_in_fastapi() -> None:
    """app.mount("/", create_app()) under uvicorn: the server starts lazily and serves."""
    from tests.outside.product_app import mounted

    config = uvicorn.Config(mounted, host="127.0.0.1", port=0, lifespan="on",
                            log_config=None, ws="websockets-sansio")
    sock = config.bind_socket()
    server = _QuietUvicorn(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    port = sock.getsockname()[1]
    try:
        await uvicorn_started(server, task)
        async with httpx.AsyncClient() as http:
            hello = await http.get(f"http://127.0.0.1:{port}/api/hello")
            assert hello.json() == {"hello": "from the mounting app"}
            health = await http.get(f"http://127.0.0.1:{port}/healthz")
            assert health.json() == {"status": "ok"}
        async with connect(f"ws://127.0.0.1:{port}/ws/fabric?documentId=m&clientID=c") as ws:
            assert '"connected"' in str(await ws.recv())
    finally:
        server.should_exit = True
        await task
        from tests.outside.product_app import captify
        await captify.server.stop()
